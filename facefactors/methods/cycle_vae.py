"""Cycle-consistent VAE (Jha et al., ECCV 2018) with the variants of Talwar's report.

The encoder (a shared trunk, three heads) gives s, the specified code of one labelled attribute
(a plain vector, part named after the attribute), and z, the unspecified code (a VAE: mean and
log-variance; part ``rest``, ``encode`` returns the mean). The decoder maps (z, s) to an image.

- Forward cycle (group ``autoencoder``: encoder + decoder): pairs of images of the same class;
  decode z_1 with s_2 and z_2 with s_1, reconstruction (``rec``) against x_1 and x_2, plus the KL
  of q(z|x) to N(0, I) (``kl``).
- Reverse cycle (group ``reverse``: the encoder only): z ~ N(0, I) decoded with the s of two
  images of different classes, both decodes re-encoded; the distance between the two re-encoded
  z (``reverse``: mean L1 between the means, as the official code, or with
  ``reverse_distance: wasserstein`` the squared 2-Wasserstein distance between the two diagonal
  Gaussian posteriors, averaged over dims). The decoder runs with frozen weights here: gradients
  reach the encoder through the re-encoding and through s, never the decoder's weights.

Variants (report Sec. 4.0.3.2), all off by default:

- ``reverse_rec`` (Fig. 4.2): the z of the real images are decoded with the s re-encoded from the
  reverse-cycle images, and must reconstruct the real images; this term also trains the decoder
  (so the ``reverse`` group then holds the decoder too, whose weights the L1 path still never
  reaches);
- ``adv`` (Fig. 4.4): a pair discriminator judges (x_1, x_2) same-class real pairs against
  (x_1, Dec(z ~ N(0, I), s_1)) (group ``discriminator``); the generator term reaches the decoder
  only (``adv_target: decoder``, s detached) or the encoder too (``adv_target: both``).

Not in the paper or the report, off by default: ``moments`` weighs the label dependence of the
forward cycle's z means (``nn.losses.label_dependence``: each dim's between-class variance share
plus the mismatch of the class variances), so that z's class-conditional means and spreads agree;
``kernel`` weighs their Gaussian-kernel alignment with the labels
(``nn.losses.label_kernel_dependence``), which also sees dependence a nonlinear probe would read;
``kernel_unbiased`` charges its unbiased estimate above 0 instead (the plug-in estimate is biased
upwards by an amount that depends on the codes' own structure, so its gradient moves them where
the labels do not explain them; the recorded runs with ``kernel`` used the plug-in one).
Nothing in the cycles forbids z to hold the class (both images of a forward pair share it), and
the reverse cycle only sees decoder outputs; these terms look at real images' codes directly.
``dependence_input`` picks what those two terms measure: ``mean`` (z's means, what the probes
read), ``sample`` (the reparameterised z the decoder gets, so class signal buried in the
posterior noise is not charged), or ``scaled`` (the means, with the terms weighted by the spread
of the means over the batch relative to the posterior standard deviation: both measures are blind
to the codes' scale, so on a nearly unused z their gradients grow as 1/scale and outweigh
reconstruction; the weight keeps the pull bounded).

``latent_cycle`` and ``latent_cycle_s`` (group ``autoencoder``) decode each image's z mean with
the s of an image of another class from the batch and encode the result again: z must come back
as z_i (``latent_cycle``) and s as s_j (``latent_cycle_s``; each the squared error over the
target's batch variance, ``nn.losses.code_cycle_error``). The s half asks the decoder to draw the
class s asks for, the z half keeps z in use (a z the decoder ignores cannot be read back) and,
if the decoder obeys s, forbids z to hold the class. On digits at 0.01 each, transfers kept their
source's style for the first time, but z held more of the digit; at 0.05 and above the networks
collude (the decoder draws z's class and s gives up the class; BENCHMARKS.md).

``active_units`` > 0 (not in the paper or the report): ``encode`` returns z's inactive units at
the prior mean 0 (``nn.active_units``: a unit is inactive when the variance of its mean over the
training images, tracked during training, is below this; Burda et al. 2016 use 0.01). With the
official KL most of z's units are near collapse. On SynthFaces the identity a probe reads in z
sits in units whose means vary by less than half their posterior noise, from which the decoder
draws almost nothing; Burda's 0.01 keeps many of them (BENCHMARKS.md, "where z keeps identity").

``split_encoder`` (not in the paper or the report): s and z come from two encoders of the same
architecture with no shared weights, so z's units cannot inherit the class features a shared trunk
learns for s. On digits it took some of the digit out of z for a linear probe (0.47 against 0.59 in
4-minute trials) but not for an MLP (0.68), and units the decoder ignores still held the digit:
the z network's own style features differ by class. On SynthFaces (30 minutes) z held more identity
than with the shared trunk, 0.39 / 0.42 against 0.31 / 0.35, at fewer steps (BENCHMARKS.md).

``prune`` > 0 (not in the paper or the report) takes the same mask into training, with the unit's
signal-to-noise ratio as the criterion (``ActiveUnits(relative=True)``: the variance of its mean
over the data over its mean posterior variance). After the first ``prune_start`` of training,
units under ``prune`` are set to the prior mean 0 wherever z enters the decoder (both cycles,
``decode``, samples) and in ``encode``. A pruned unit then gets no gradient but the KL's, which
pulls it to the prior, so it stays pruned; the decoder learns to do without it. ``active_units``
only hides units from ``encode``, and Burda's threshold on the raw variance keeps the units whose
means vary by 0.1-0.5 of their noise: those hold the identity a probe reads in z and give the
decoder 0.14 dB (BENCHMARKS.md, "where z keeps identity"). Once pruning has started, ``moments``
and ``kernel`` measure the unpruned units only: scale-blind measures on near-collapsed units are
what made their gradients outweigh reconstruction.

Pairs: with the dataset bound (``bind_dataset``, which the trainer calls before training) partners
come from the train split through ``PairSampler``, seeded by (seed, step); otherwise from within
the batch (``in_batch_partners``; an image without a same-class partner is paired with itself).

Weights. Official: Adam 1e-4, batch 64, rec x2, KL x3, reverse cycle x10, z = s = 16 on MNIST.
The official reconstruction is the per-pixel MSE of pixels in [0, 1]; ``rec`` here weighs the
per-pixel MSE in [-1, 1], four times larger, so ``rec: 0.5`` is the official weight. The official
KL is summed over z and divided by batch x pixels (C x H x W); ``kl`` here is the same quantity.

Architectures (``arch``): ``official`` (the official 28 px MNIST networks: three 5x5 stride-2
convs with widths w, 2w, 4w (w = ``model.width``; the official 16) and linear heads; the decoder
embeds z and s separately (linear + LeakyReLU), reshapes to 2x2 and upsamples with three
transposed convs; ``model.norm`` replaces the official's instance norm with running statistics);
``dcgan`` (the shared conv encoder/decoder of ``nn/``, powers of two from 16 px); ``auto``:
official at 28 px, dcgan otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facefactors.data.pairs_sampler import PairSampler, fetch_like, in_batch_partners
from facefactors.data.specs import Batch, ImageDataset
from facefactors.latent import Latent
from facefactors.methods.autoencoder import reconstruction_loss
from facefactors.methods.base import Method, MethodParams, ModelSetup, OptimizerSpec
from facefactors.methods.d2ae import frozen_forward
from facefactors.methods.ifcvae_gan import LOGVAR_RANGE, ConvDiscriminator
from facefactors.methods.registry import register
from facefactors.nn.active_units import ActiveUnits
from facefactors.nn.blocks import norm_layer
from facefactors.nn.decoders import VectorDecoder
from facefactors.nn.encoders import VectorEncoder
from facefactors.nn.losses import code_cycle_error, label_dependence, label_kernel_dependence

DEFAULT_DIM = 16


@dataclass
class CycleVAEParams(MethodParams):
    lr: float = 1e-4                    # official: Adam 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    arch: str = "auto"                  # auto | official (28 px) | dcgan
    rec: float = 0.5                    # official 2 x MSE of [0, 1] pixels (see module doc)
    rec_loss: str = "mse"               # mse | l1
    kl: float = 3.0                     # official: 3 x KL / (C H W)
    reverse: float = 10.0               # official: 10 x L1 between the re-encoded z
    reverse_distance: str = "l1"        # l1 | wasserstein
    reverse_rec: float = 0.0            # report Fig. 4.2
    adv: float = 0.0                    # report Fig. 4.4
    adv_target: str = "decoder"         # decoder | both
    dis_lr: float = 1e-4
    dis_width: int = 0                  # 0: model width
    pairing: str = "auto"               # auto (dataset when bound, else batch) | dataset | batch
    moments: float = 0.0                # not in the paper: label dependence of z's means (label_dependence)
    kernel: float = 0.0                 # not in the paper: kernel alignment of z's means with the label
    kernel_unbiased: bool = False       # the kernel term's unbiased estimate, charged above 0
    dependence_input: str = "mean"      # mean | sample | scaled (see module doc)
    active_units: float = 0.0           # >0: encode returns z's inactive units (variance of means below it) at 0
    latent_cycle: float = 0.0           # not in the paper: Dec(z_i, s_j), j of another class, re-encoded gives z_i back
    latent_cycle_s: float = 0.0         # ... and gives s_j back
    split_encoder: bool = False         # not in the paper: s and z from separate networks, no shared trunk
    prune: float = 0.0                  # >0: z's units under this signal-to-noise ratio are pruned in training (not in the paper)
    prune_start: float = 0.25           # fraction of training before pruning starts


class OfficialEncoder(nn.Module):
    """The official 28 px encoder: 5x5 stride-2 convs (w, 2w, 4w) to 2x2, linear heads mu, logvar, s."""

    def __init__(self, image_size: int, channels: int, z_dim: int, s_dim: int, width: int = 16,
                 norm: str = "instance"):
        super().__init__()
        if image_size != 28:
            raise ValueError(f"the official cycle_vae networks are for 28 px images, got {image_size} px; "
                             "use method.arch=dcgan")
        w = width
        layers: list[nn.Module] = []
        for cin, cout in ((channels, w), (w, 2 * w), (2 * w, 4 * w)):
            layers += [nn.Conv2d(cin, cout, 5, 2, 1), norm_layer(norm, cout), nn.ReLU(inplace=True)]
        self.conv = nn.Sequential(*layers)
        flat = 4 * w * 2 * 2
        self.head = nn.Linear(flat, 2 * z_dim + s_dim)   # mu, logvar and s heads side by side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).flatten(1))


class SplitEncoder(nn.Module):
    """Two encoders of one architecture side by side: one gives z's mean and log-variance, the
    other s. Its output is laid out as the shared-trunk encoder's (mu, logvar, s)."""

    def __init__(self, z_net: nn.Module, s_net: nn.Module):
        super().__init__()
        self.z_net, self.s_net = z_net, s_net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.z_net(x), self.s_net(x)], dim=1)


class OfficialDecoder(nn.Module):
    """The official 28 px decoder: z and s embedded separately (16w each), 2x2 map of 8w channels,
    transposed convs to 2w, w and the image (tanh)."""

    def __init__(self, image_size: int, channels: int, z_dim: int, s_dim: int, width: int = 16,
                 norm: str = "instance"):
        super().__init__()
        if image_size != 28:
            raise ValueError(f"the official cycle_vae networks are for 28 px images, got {image_size} px")
        w = width
        self.z_dim, self.w = z_dim, w
        self.z_in = nn.Linear(z_dim, 16 * w)
        self.s_in = nn.Linear(s_dim, 16 * w)
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(8 * w, 2 * w, 4, 2, 0), norm_layer(norm, 2 * w), nn.LeakyReLU(0.2, inplace=True),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 0), norm_layer(norm, w), nn.LeakyReLU(0.2, inplace=True),
            nn.ConvTranspose2d(w, channels, 4, 2, 1), nn.Tanh())

    def forward(self, zs: torch.Tensor) -> torch.Tensor:
        z, s = zs[:, :self.z_dim], zs[:, self.z_dim:]
        h = torch.cat([F.leaky_relu(self.z_in(z), 0.2), F.leaky_relu(self.s_in(s), 0.2)], dim=1)
        return self.deconv(h.view(h.shape[0], 8 * self.w, 2, 2))


def gaussian_w2(mu1: torch.Tensor, lv1: torch.Tensor, mu2: torch.Tensor, lv2: torch.Tensor) -> torch.Tensor:
    """Squared 2-Wasserstein distance between diagonal Gaussians, averaged over dims and batch."""
    sd1, sd2 = (0.5 * lv1.float()).exp(), (0.5 * lv2.float()).exp()
    return ((mu1.float() - mu2.float()).pow(2) + (sd1 - sd2).pow(2)).mean()


@register
class CycleVAE(Method):
    name = "cycle_vae"
    summary = ("Jha et al.: VAE with specified s and unspecified z; forward cycle swaps s within same-class "
               "pairs, reverse cycle re-encodes prior z decoded with two s; Talwar's report variants.")
    Params = CycleVAEParams

    def __init__(self, setup: ModelSetup, params: CycleVAEParams):
        super().__init__(setup, params)
        p = params
        if len(setup.attributes) != 1 or not setup.attributes[0].discrete:
            got = [a.name for a in setup.attributes]
            raise ValueError(f"cycle_vae specifies exactly one categorical attribute, got model.attributes={got}")
        for key, allowed in (("arch", ("auto", "official", "dcgan")), ("rec_loss", ("mse", "l1")),
                             ("reverse_distance", ("l1", "wasserstein")), ("adv_target", ("decoder", "both")),
                             ("pairing", ("auto", "dataset", "batch")),
                             ("dependence_input", ("mean", "sample", "scaled"))):
            if getattr(p, key) not in allowed:
                raise ValueError(f"method.{key}={getattr(p, key)!r}: use {' or '.join(allowed)}")
        if not (p.rec > 0 or p.kl > 0 or p.reverse > 0 or p.latent_cycle > 0
                or p.latent_cycle_s > 0):
            raise ValueError("cycle_vae: rec, kl, reverse and both latent cycles are all 0; nothing to train")
        self.attr = setup.attributes[0].name
        self.num_classes = int(setup.attributes[0].num_classes)
        unknown = set(setup.part_dims) - {self.attr, "rest"}
        if unknown:
            raise ValueError(f"part_dims names unknown parts {sorted(unknown)}; parts are {[self.attr, 'rest']}")
        self.s_dim = int(setup.part_dims.get(self.attr, DEFAULT_DIM))
        self.z_dim = int(setup.part_dims.get("rest", DEFAULT_DIM))
        arch = p.arch if p.arch != "auto" else ("official" if setup.image_size == 28 else "dcgan")
        self.arch = arch
        if arch == "official":
            def make_encoder(z_dim: int, s_dim: int) -> nn.Module:
                return OfficialEncoder(setup.image_size, setup.channels, z_dim, s_dim, setup.width, setup.norm)
            self.decoder = OfficialDecoder(setup.image_size, setup.channels, self.z_dim, self.s_dim, setup.width,
                                           setup.norm)
        else:
            def make_encoder(z_dim: int, s_dim: int) -> nn.Module:
                return VectorEncoder(setup.image_size, setup.channels, 2 * z_dim + s_dim, setup.width, setup.norm)
            self.decoder = VectorDecoder(setup.image_size, setup.channels, self.z_dim + self.s_dim, setup.width,
                                         setup.norm)
        self.encoder = (SplitEncoder(make_encoder(self.z_dim, 0), make_encoder(0, self.s_dim)) if p.split_encoder
                        else make_encoder(self.z_dim, self.s_dim))
        self.discriminator = (ConvDiscriminator(setup.image_size, 2 * setup.channels, p.dis_width or setup.width)
                              if p.adv > 0 else None)
        if p.prune < 0 or not 0.0 <= p.prune_start < 1.0:
            raise ValueError(f"method.prune={p.prune!r} must be >= 0 and method.prune_start={p.prune_start!r} in [0, 1)")
        if p.prune > 0 and p.active_units > 0:
            raise ValueError("method.prune and method.active_units both choose z's units; set one of them")
        self.z_active = (ActiveUnits(self.z_dim, p.prune, relative=True) if p.prune > 0
                         else ActiveUnits(self.z_dim, p.active_units) if p.active_units > 0 else None)
        if p.prune > 0:  # whether the mask is applied yet (a buffer: a resumed run and a loaded model agree)
            self.register_buffer("pruning", torch.zeros((), dtype=torch.bool))
        self._pairs: PairSampler | None = None
        self._images: torch.Tensor | None = None

    # ------------------------------------------------------------------ data
    def bind_dataset(self, ds: ImageDataset, seed: int = 0, split: str = "train") -> None:
        """Draw training partners from ``ds``'s ``split`` (same class for the forward cycle, another
        class for the reverse cycle) instead of from within the batch."""
        self._pairs = PairSampler(ds.labels[self.attr], ds.split(split), seed)
        self._images = ds.images

    # ------------------------------------------------------------------ the model
    @property
    def part_names(self) -> list[str]:
        return [self.attr, "rest"]

    def _split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder output -> (mu, logvar, s)."""
        mu, logvar, s = torch.split(h, [self.z_dim, self.z_dim, self.s_dim], dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE), s

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z's mean and log-variance (every unit, whatever ``active_units`` says), and s."""
        return self._split(self.encoder(x))

    def _masked(self, z: torch.Tensor, decoding: bool) -> torch.Tensor:
        """z with its inactive units at the prior mean 0: in ``encode`` with ``active_units``,
        everywhere (encode and every decode) once ``prune`` has started."""
        if self.z_active is None:
            return z
        apply = bool(self.pruning) if self.params.prune > 0 else not decoding
        return z * self.z_active.mask().to(z.dtype) if apply else z

    def encode(self, x: torch.Tensor) -> Latent:
        mu, _, s = self.posterior(x)
        return Latent({self.attr: s, "rest": self._masked(mu, decoding=False)})

    def _decoder_input(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._masked(z, decoding=True), s], dim=1)

    def decode(self, z: Latent) -> torch.Tensor:
        return self.decoder(self._decoder_input(z["rest"], z[self.attr]))

    def sample(self, part: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if part != "rest":
            raise NotImplementedError(f"part {part!r} (specified) has no prior; take it from an image")
        return torch.randn(n, self.z_dim, generator=generator).to(next(self.parameters()).device)

    # ------------------------------------------------------------------ training
    def optimizers(self) -> dict[str, OptimizerSpec]:
        p = self.params
        enc, dec = list(self.encoder.parameters()), list(self.decoder.parameters())
        groups: dict[str, OptimizerSpec] = {}
        if self.discriminator is not None:
            groups["discriminator"] = OptimizerSpec(list(self.discriminator.parameters()), p.dis_lr, betas=p.betas)
        groups["autoencoder"] = OptimizerSpec(enc + dec, p.lr, betas=p.betas)
        if p.reverse > 0 or p.reverse_rec > 0:
            groups["reverse"] = OptimizerSpec(enc + (dec if p.reverse_rec > 0 else []), p.lr, betas=p.betas)
        return groups

    def _use_dataset(self) -> bool:
        mode = self.params.pairing
        if mode == "dataset" and self._pairs is None:
            raise RuntimeError("cycle_vae: method.pairing=dataset but no dataset is bound (bind_dataset)")
        return self._pairs is not None and mode != "batch"

    def _fetch(self, idx: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return self.augment_images(fetch_like(self._images, idx, like))

    def _kl(self, mu: torch.Tensor, logvar: torch.Tensor, pixels: int) -> torch.Tensor:
        lv = logvar.float()
        return 0.5 * (mu.float().pow(2) + lv.exp() - 1.0 - lv).sum(1).mean() / pixels

    def train_step(self, batch: Batch, step: int, total_steps: int) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        p = self.params
        x1, y = batch.image, batch.labels[self.attr]
        b = x1.shape[0]
        pixels = x1[0].numel()
        from_ds = self._use_dataset()
        anchors = batch.index.cpu().numpy() if from_ds else None

        # ---- forward cycle: same-class pairs, s swapped
        if from_ds:
            same_idx, _ = self._pairs.same(anchors, step)
            x2 = self._fetch(same_idx, x1)
            mu, logvar, s = self._split(self.encoder(torch.cat([x1, x2])))
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            s_swapped = torch.cat([s[b:], s[:b]])
            x_pair = torch.cat([x1, x2])
            x_hat = self.decoder(self._decoder_input(z, s_swapped))
            s1 = s[:b]
        else:
            perm, _ = in_batch_partners(y)
            x2 = x1[perm]
            mu, logvar, s = self._split(self.encoder(x1))
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            x_pair = x1
            x_hat = self.decoder(self._decoder_input(z, s[perm]))
            s1 = s

        if self.z_active is not None:
            self.z_active.update(mu, logvar)
            if p.prune > 0 and not bool(self.pruning) and step >= p.prune_start * total_steps:
                self.pruning.fill_(True)   # from the next decode on; the decodes of this step are made
        out: dict[str, torch.Tensor] = {}
        if p.rec > 0:
            out["rec"] = p.rec * reconstruction_loss(p.rec_loss, x_hat, x_pair)
        if p.kl > 0:
            out["kl"] = p.kl * self._kl(mu, logvar, pixels)
        y_pair = torch.cat([y, y]) if from_ds else y   # forward partners share the class
        dep_in, dep_w = mu, 1.0
        if p.dependence_input == "sample":
            dep_in = z
        elif p.dependence_input == "scaled":
            dep_w = mu.detach().float().std(0).mean() / (0.5 * logvar.detach().float()).exp().mean()
        if p.prune > 0 and bool(self.pruning):  # the units the decoder gets: pruned ones are constant 0
            dep_in = dep_in[:, self.z_active.mask() > 0]
        if p.moments > 0 and dep_in.shape[1]:
            out["moments"] = p.moments * dep_w * label_dependence(dep_in, y_pair, self.num_classes)
        if p.kernel > 0 and dep_in.shape[1]:
            dep = dep_w * label_kernel_dependence(dep_in, y_pair, self.num_classes, unbiased=p.kernel_unbiased)
            out["kernel"] = p.kernel * (dep.clamp_min(0) if p.kernel_unbiased else dep)
        if p.latent_cycle > 0 or p.latent_cycle_s > 0:
            other, _ = in_batch_partners(y, different=True)
            z_i, s_j = mu[:b], s1[other]
            mu_t, _, s_t = self._split(self.encoder(self.decoder(self._decoder_input(z_i, s_j))))
            if p.latent_cycle > 0:
                out["latent_cycle"] = p.latent_cycle * code_cycle_error({"rest": mu_t}, {"rest": z_i})
            if p.latent_cycle_s > 0:
                out["latent_cycle_s"] = p.latent_cycle_s * code_cycle_error({"s": s_t}, {"s": s_j})

        # ---- adversarial variant: same-class real pairs against (x_1, Dec(z ~ prior, s_1))
        if self.discriminator is not None:
            z_prior = torch.randn(b, self.z_dim, device=x1.device, dtype=mu.dtype)
            s_in = s1.detach() if p.adv_target == "decoder" else s1
            fake = self.decoder(self._decoder_input(z_prior, s_in))
            d = self.discriminator
            yield "discriminator", {"dis": (F.softplus(-d(torch.cat([x1, x2], 1))).mean()
                                            + F.softplus(d(torch.cat([x1, fake.detach()], 1))).mean()) / 2.0}
            out["adv"] = p.adv * F.softplus(-frozen_forward(d, torch.cat([x1, fake], 1))).mean()
        if out:
            yield "autoencoder", out

        # ---- reverse cycle: prior z with the s of two images of different classes, re-encoded
        if not (p.reverse > 0 or p.reverse_rec > 0):
            return
        if from_ds:
            diff_idx, _ = self._pairs.different(anchors, step)
            x3 = self._fetch(diff_idx, x1)
            mu_r, _, s_r = self._split(self.encoder(torch.cat([x1, x3])))
            x_real = torch.cat([x1, x3])
        else:
            perm_d, _ = in_batch_partners(y, different=True)
            mu1, _, s1r = self._split(self.encoder(x1))
            mu_r, s_r = torch.cat([mu1, mu1[perm_d]]), torch.cat([s1r, s1r[perm_d]])
            x_real = torch.cat([x1, x1[perm_d]])
        z_i = torch.randn(b, self.z_dim, device=x1.device, dtype=s_r.dtype)
        x_gen = frozen_forward(self.decoder, self._decoder_input(torch.cat([z_i, z_i]), s_r))
        mu_g, lv_g, s_g = self._split(self.encoder(x_gen))
        rev: dict[str, torch.Tensor] = {}
        if p.reverse > 0:
            if p.reverse_distance == "l1":
                rev["reverse"] = p.reverse * F.l1_loss(mu_g[:b].float(), mu_g[b:].float())
            else:
                rev["reverse"] = p.reverse * gaussian_w2(mu_g[:b], lv_g[:b], mu_g[b:], lv_g[b:])
        if p.reverse_rec > 0:
            x_back = self.decoder(self._decoder_input(mu_r, s_g))
            rev["reverse_rec"] = p.reverse_rec * reconstruction_loss(p.rec_loss, x_back, x_real)
        yield "reverse", rev
