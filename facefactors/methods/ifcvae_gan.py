"""IFcVAE-GAN: adversarial information factorisation in a conditional VAE-GAN (Creswell et al.).

One encoder with a shared conv trunk gives z (mean and log-variance, reparameterised) and y-hat,
a classifier head for each modelled attribute (sigmoid for binary, softmax for categorical).
The decoder maps (y, z) to an image. Parts: one per modelled attribute (the y values: (B, 1)
probabilities for a binary attribute, (B, K) class probabilities for a categorical one) and
``rest`` (z; ``encode`` returns the mean). Editing is a switch: encode, set y, decode
(``switch_code``; ``eval/switch_edits.py``).

Losses (paper Eq. 3-6, Algorithm 1), every weight switchable (0 turns a term off):

- ``rec``: reconstruction, binary cross-entropy of pixels in [0, 1] (``rec_loss: bce``, the paper;
  from the decoder's pre-tanh output, numerically safe), or per-pixel MSE / L1 in [-1, 1];
- ``kl`` (alpha): KL(q(z|x) || N(0, I)) averaged over the z dimensions (the official code divides
  the summed KL by nz), batch mean;
- ``cls`` (rho): y-hat against the labels (BCE / CE), on real images;
- ``aux``: the auxiliary network A predicts y from z and is trained to minimise its loss on the
  detached z (group ``aux``); the encoder gets ``-aux * L_aux`` through a frozen copy of A
  (``aux_mode: max``, Eq. 6), or the cross-entropy to the uniform posterior
  (``aux_mode: confuse``, a bounded alternative). ``aux: 0`` is the naive cVAE-GAN (Table 1
  row 2); A still trains, so its loss keeps measuring how much y is left in z;
- ``gan`` (delta): a DCGAN discriminator C on real images, reconstructions and decoded prior
  samples (z ~ N(0, I), y = the batch labels) minimises the three-term L_gan (group
  ``discriminator``, on detached images); the encoder and decoder get ``delta`` times the
  non-saturating generator loss on reconstructions and samples through a frozen C
  (``gan_loss: minimax``: ``-delta * L_gan`` as written in Eq. 3-4);
- ``cls_rec``: the classification loss on reconstructions, y-hat(x_rec) against y (Table 1
  row 3; off by default).
- ``cls_edit`` (not in the paper; off by default): the first ``edit_images`` images are decoded
  with every attribute switched (binary: 1 - y; categorical: another class at random), and the
  encoder's classifier, frozen, must read the switched values. It trains the decoder to take the
  attributes from y even where z still holds them, the property an edit needs, instead of
  emptying z of them, which costs reconstruction. At weight 1 it collapses training: the
  decoder learns patterns the frozen classifier reads, not faces (BENCHMARKS.md).

Weights: the paper's Table 1 uses rho = 0.1, delta = 0.1, alpha = 0.2; sharp reconstructions use
alpha = delta = 0.005 (the residual model, Table 3). Official: 64 px, nz = 100, RMSprop 2e-4,
batch 64 (momentum 0.5 in the discriminator of the residual model: ``dis_momentum``).
Additions, off by default: ``warmup``/``ramp`` delay and ramp the aux and GAN terms of the
encoder and decoder; ``aux_steps`` updates of A per step; ``aux_moments`` weighs an adversary-free
penalty on how much y explains each dim of z's means within the batch (between-class variance
share and class variance mismatch, ``nn.losses.label_dependence``): equal class-conditional
means leave a fresh linear probe nothing to read, where fooling the current A need not.
``aux_whiten`` measures it on the means whitened by running statistics
(``nn.whitening.RunningWhitening``, buffers ``aux_white``), so y kept in directions of small
variance counts as much as y kept in large ones. ``aux_spread`` weighs the class variance
mismatch within that term (1: as above; 0: the class means only, which a linear probe reads);
``aux_spread_by`` sets it per attribute.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from facefactors.data.specs import AttributeSpec, Batch
from facefactors.errors import FacefactorsError
from facefactors.latent import Latent
from facefactors.methods.base import Method, MethodParams, ModelSetup, OptimizerSpec
from facefactors.methods.d2ae import frozen_forward
from facefactors.methods.registry import register
from facefactors.nn.classifiers import MLPHead
from facefactors.nn.decoders import VectorDecoder
from facefactors.nn.encoders import ConvTrunk, VectorEncoder
from facefactors.nn.losses import label_dependence
from facefactors.nn.whitening import RunningWhitening

DEFAULT_Z_DIM = 100
LOGVAR_RANGE = (-12.0, 6.0)


@dataclass
class IFcVAEGANParams(MethodParams):
    lr: float = 2e-4                  # encoder + decoder (official: RMSprop 2e-4)
    optimizer: str = "rmsprop"        # rmsprop | adam (``betas``)
    betas: tuple[float, float] = (0.5, 0.999)
    momentum: float = 0.0             # RMSprop momentum of the encoder and decoder
    dis_lr: float = 2e-4
    dis_momentum: float = 0.0         # the residual model of the paper: 0.5
    aux_lr: float = 2e-4
    rec: float = 1.0
    rec_loss: str = "bce"             # bce (the paper) | mse | l1
    kl: float = 0.2                   # alpha (Table 1); 0.005 for sharp reconstructions
    cls: float = 0.1                  # rho
    gan: float = 0.1                  # delta (Table 1); 0.005 for sharp reconstructions
    aux: float = 1.0                  # weight of -L_aux in the encoder loss (0: the naive cVAE-GAN)
    aux_mode: str = "max"             # max: -L_aux (the paper) | confuse: CE to the uniform posterior
    cls_rec: float = 0.0              # classification loss on reconstructions (Table 1 row 3)
    cls_edit: float = 0.0             # not in the paper: classification loss on edits (flipped y), frozen y-hat
    edit_images: int = 16             # cls_edit: the first n images of each batch are edited (0: all)
    gan_loss: str = "nonsaturating"   # nonsaturating | minimax (-delta * L_gan)
    aux_hidden: int = 256             # A: hidden units (0: linear)
    aux_layers: int = 2
    aux_steps: int = 1                # updates of A per step
    aux_moments: float = 0.0          # not in the paper: label dependence of z's means (nn.losses.label_dependence)
    aux_whiten: bool = False          # not in the paper: aux_moments on whitened means (nn.whitening)
    aux_spread: float = 1.0           # weight of the class variance mismatch within aux_moments (0: class means only)
    aux_spread_by: dict[str, float] = field(default_factory=dict)  # per-attribute aux_spread ({smile: 1.0})
    dis_width: int = 0                # discriminator conv width (0: model width)
    dis_norm: str = "batch"
    warmup: float = 0.0               # fraction of training before the aux and GAN terms reach E and D
    ramp: float = 0.0                 # fraction over which they ramp to full weight


class ConvDiscriminator(nn.Module):
    """DCGAN discriminator: stride-2 conv stages to a small map, then one logit per image.

    Sizes that are not powers of two (28 px) halve with 4x4 stride-2 convs until the map is at
    most 4 px, then average-pool."""

    def __init__(self, image_size: int, in_channels: int, width: int = 32, norm: str = "batch"):
        super().__init__()
        if image_size & (image_size - 1) == 0 and image_size >= 4:
            self.trunk = ConvTrunk(image_size, in_channels, width, 4, norm)
            out = self.trunk.out_channels
        else:
            from facefactors.nn.blocks import down_block

            layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            size, c = image_size // 2, width
            while size > 4:
                layers.append(down_block(c, min(2 * c, 8 * width), norm))
                c, size = min(2 * c, 8 * width), size // 2
            self.trunk = nn.Sequential(*layers)
            out = c
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)).squeeze(1)


class RMSpropSpec(OptimizerSpec):
    """OptimizerSpec whose RMSprop keeps its momentum (the base class drops it)."""

    def build(self) -> torch.optim.Optimizer:
        if self.kind == "rmsprop":
            return torch.optim.RMSprop(self.params, lr=self.lr, momentum=self.momentum,
                                       weight_decay=self.weight_decay)
        return super().build()


def ramp_schedule(step: int, total_steps: int, warmup: float, ramp: float) -> float:
    """0 before ``warmup`` (fraction of training), then a linear ramp to 1 over ``ramp``."""
    t = step / max(total_steps, 1)
    if t < warmup:
        return 0.0
    return 1.0 if ramp <= 0 else min(1.0, (t - warmup) / ramp)


def attribute_loss(logits: torch.Tensor, target: torch.Tensor, spec: AttributeSpec) -> torch.Tensor:
    """BCE-with-logits for a binary attribute ((B, 1) logits), cross-entropy for a categorical one."""
    if spec.kind == "binary":
        return F.binary_cross_entropy_with_logits(logits.float().reshape(-1), target.float().reshape(-1))
    return F.cross_entropy(logits.float(), target.long())


def uniform_loss(logits: torch.Tensor, spec: AttributeSpec) -> torch.Tensor:
    """Cross-entropy between the uniform distribution and the posterior (binary: target 1/2)."""
    if spec.kind == "binary":
        return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits.float(), 0.5))
    return -F.log_softmax(logits.float(), dim=1).mean(dim=1).mean()


def rec_loss_from_preact(kind: str, pre: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reconstruction loss from the decoder's pre-tanh output ``pre`` (image = tanh(pre)).

    ``bce``: binary cross-entropy of pixels in [0, 1]; (tanh(a) + 1) / 2 = sigmoid(2a), so the
    logits are 2a. ``mse`` / ``l1``: per-pixel mean in [-1, 1]."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(2.0 * pre.float(), (x.float() + 1.0) * 0.5)
    if kind == "mse":
        return F.mse_loss(torch.tanh(pre.float()), x.float())
    if kind == "l1":
        return F.l1_loss(torch.tanh(pre.float()), x.float())
    raise ValueError(f"unknown reconstruction loss {kind!r}; use bce, mse or l1")


@register
class IFcVAEGAN(Method):
    name = "ifcvae_gan"
    summary = ("Creswell et al.: conditional VAE-GAN whose encoder also classifies y; an auxiliary network "
               "on z is fooled by the encoder (information factorisation); edits flip y.")
    Params = IFcVAEGANParams

    def __init__(self, setup: ModelSetup, params: IFcVAEGANParams):
        super().__init__(setup, params)
        p = params
        if not setup.attributes:
            raise ValueError("ifcvae_gan needs at least one binary or categorical attribute (model.attributes)")
        for a in setup.attributes:
            if not a.discrete:
                raise ValueError(f"attribute {a.name!r} is {a.kind}; ifcvae_gan models binary or categorical ones")
        for key, allowed in (("optimizer", ("rmsprop", "adam")), ("rec_loss", ("bce", "mse", "l1")),
                             ("aux_mode", ("max", "confuse")), ("gan_loss", ("nonsaturating", "minimax"))):
            if getattr(p, key) not in allowed:
                raise ValueError(f"method.{key}={getattr(p, key)!r}: use {' or '.join(allowed)}")
        unknown_spread = sorted(set(p.aux_spread_by) - {a.name for a in setup.attributes})
        if unknown_spread:
            raise ValueError(f"method.aux_spread_by names {unknown_spread}, not among model.attributes "
                             f"{[a.name for a in setup.attributes]}")
        if p.aux_steps < 1:
            raise ValueError(f"method.aux_steps={p.aux_steps} must be at least 1")
        if p.edit_images < 0:
            raise ValueError(f"method.edit_images={p.edit_images} must be >= 0 (0: the whole batch)")
        self.specs = {a.name: a for a in setup.attributes}
        self.y_dims = {a.name: (1 if a.kind == "binary" else a.num_classes) for a in setup.attributes}
        names = list(self.specs) + ["rest"]
        unknown = set(setup.part_dims) - set(names)
        if unknown:
            raise ValueError(f"part_dims names unknown parts {sorted(unknown)}; parts are {names}")
        for a, d in self.y_dims.items():
            if a in setup.part_dims and int(setup.part_dims[a]) != d:
                raise ValueError(f"part {a!r} holds the attribute's value ({d} dims), part_dims says "
                                 f"{setup.part_dims[a]}")
        self.z_dim = int(setup.part_dims.get("rest", DEFAULT_Z_DIM))
        n_y = sum(self.y_dims.values())
        self.encoder = VectorEncoder(setup.image_size, setup.channels, 2 * self.z_dim + n_y, setup.width, setup.norm)
        self.decoder = VectorDecoder(setup.image_size, setup.channels, n_y + self.z_dim, setup.width, setup.norm)
        if not isinstance(self.decoder.up.net[-1], nn.Tanh):
            raise RuntimeError("VectorDecoder no longer ends in tanh; ifcvae_gan needs its pre-activation")
        self.decoder.up.net[-1] = nn.Identity()      # decode applies tanh; training uses the pre-activation
        self.aux_net = MLPHead(self.z_dim, n_y, p.aux_hidden, p.aux_layers)
        self.aux_white = RunningWhitening(self.z_dim) if p.aux_whiten and p.aux_moments > 0 else None
        self.discriminator = (ConvDiscriminator(setup.image_size, setup.channels, p.dis_width or setup.width,
                                                p.dis_norm) if p.gan > 0 else None)

    # ------------------------------------------------------------------ the model
    @property
    def part_names(self) -> list[str]:
        return list(self.specs) + ["rest"]

    @property
    def switch_parts(self) -> dict[str, AttributeSpec]:
        """Parts that hold an attribute's value: an edit sets them (``switch_code``) and decodes."""
        return dict(self.specs)

    def _split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Encoder output -> (mu, logvar, logits per attribute)."""
        mu, logvar, rest = torch.split(h, [self.z_dim, self.z_dim, h.shape[1] - 2 * self.z_dim], dim=1)
        logits = dict(zip(self.specs, torch.split(rest, list(self.y_dims.values()), dim=1)))
        return mu, logvar.clamp(*LOGVAR_RANGE), logits

    def _probs(self, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {a: (torch.sigmoid(v) if self.specs[a].kind == "binary" else torch.softmax(v.float(), 1).to(v.dtype))
                for a, v in logits.items()}

    def encode(self, x: torch.Tensor) -> Latent:
        mu, _, logits = self._split(self.encoder(x))
        return Latent({**self._probs(logits), "rest": mu})

    def _decode_pre(self, y: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([y[a].to(z.dtype) for a in self.specs] + [z], dim=1))

    def decode(self, z: Latent) -> torch.Tensor:
        return torch.tanh(self._decode_pre({a: z[a] for a in self.specs}, z["rest"]))

    def sample(self, part: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if part != "rest":
            raise NotImplementedError(f"part {part!r} holds an attribute value; set it with switch_code")
        dev = next(self.parameters()).device
        return torch.randn(n, self.z_dim, generator=generator).to(dev)

    def switch_code(self, part: str, value: float | int, n: int = 1) -> torch.Tensor:
        """The y code for ``part`` = ``value``, ``n`` rows: a binary attribute takes any value in
        [0, 1] (graded edits), a categorical one a class index (one-hot)."""
        if part not in self.specs:
            raise FacefactorsError(f"part {part!r} holds no attribute value; switchable parts: "
                                   f"{', '.join(self.specs)}")
        spec = self.specs[part]
        dev = next(self.parameters()).device
        if spec.kind == "binary":
            v = float(value)
            if not 0.0 <= v <= 1.0:
                raise FacefactorsError(f"{part!r} is binary: a value in [0, 1] is needed, got {value!r}")
            return torch.full((n, 1), v, device=dev)
        if isinstance(value, float) and not value.is_integer():
            raise FacefactorsError(f"{part!r} is categorical: a class index is needed, got {value!r}")
        k = int(value)
        if not 0 <= k < spec.num_classes:
            raise FacefactorsError(f"{part!r} class {k} out of range 0..{spec.num_classes - 1} "
                                   f"({', '.join(spec.classes)})")
        return F.one_hot(torch.full((n,), k, device=dev, dtype=torch.long), spec.num_classes).float()

    def label_codes(self, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """y codes of true labels (0/1 column or one-hot), for decoding prior samples."""
        out = {}
        for a, spec in self.specs.items():
            t = labels[a]
            out[a] = (t.float().reshape(-1, 1) if spec.kind == "binary"
                      else F.one_hot(t.long(), spec.num_classes).float())
        return out

    # ------------------------------------------------------------------ training
    def optimizers(self) -> dict[str, OptimizerSpec]:
        p = self.params
        groups: dict[str, OptimizerSpec] = {}
        if self.discriminator is not None:
            groups["discriminator"] = RMSpropSpec(list(self.discriminator.parameters()), p.dis_lr, kind=p.optimizer,
                                                  betas=p.betas, momentum=p.dis_momentum)
        groups["aux"] = RMSpropSpec(list(self.aux_net.parameters()), p.aux_lr, kind=p.optimizer, betas=p.betas)
        groups["autoencoder"] = RMSpropSpec(list(self.encoder.parameters()) + list(self.decoder.parameters()),
                                            p.lr, kind=p.optimizer, betas=p.betas, momentum=p.momentum)
        return groups

    def _aux_losses(self, logits: torch.Tensor, labels: dict[str, torch.Tensor], confuse: bool) -> torch.Tensor:
        parts = dict(zip(self.specs, torch.split(logits, list(self.y_dims.values()), dim=1)))
        terms = [uniform_loss(parts[a], s) if confuse else attribute_loss(parts[a], labels[a], s)
                 for a, s in self.specs.items()]
        return sum(terms) / len(terms)

    def switched_labels(self, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every attribute switched: binary 1 - y, categorical a uniformly drawn other class."""
        out = {}
        for a, spec in self.specs.items():
            t = labels[a].long()
            if spec.kind == "binary":
                out[a] = 1 - t
            else:
                shift = torch.randint(1, spec.num_classes, t.shape).to(t.device)
                out[a] = (t + shift) % spec.num_classes
        return out

    def _edit_loss(self, z: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        """The frozen classifier's loss on decodings of z with every attribute switched."""
        n = self.params.edit_images or z.shape[0]
        target = self.switched_labels({a: labels[a][:n] for a in self.specs})
        x_edit = torch.tanh(self._decode_pre(self.label_codes(target), z[:n]))
        _, _, logits = self._split(frozen_forward(self.encoder, x_edit))
        return sum(attribute_loss(logits[a], target[a], sp) for a, sp in self.specs.items()) / len(self.specs)

    def train_step(self, batch: Batch, step: int, total_steps: int) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        p = self.params
        x, labels = batch.image, batch.labels
        s = ramp_schedule(step, total_steps, p.warmup, p.ramp)
        mu, logvar, logits = self._split(self.encoder(x))
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        pre_rec = self._decode_pre(self._probs(logits), z)
        x_rec = torch.tanh(pre_rec)

        # 1. the discriminator on real images, reconstructions and prior samples (all detached)
        if self.discriminator is not None:
            z_p = torch.randn_like(mu)
            x_p = torch.tanh(self._decode_pre(self.label_codes(labels), z_p))
            d = self.discriminator
            l_gan = (F.softplus(-d(x)).mean() + F.softplus(d(x_rec.detach())).mean()
                     + F.softplus(d(x_p.detach())).mean()) / 3.0
            yield "discriminator", {"gan": l_gan}

        # 2. the auxiliary network A on the detached z (means): minimises L_aux
        z_det = mu.detach()
        for _ in range(p.aux_steps):  # logged aux_ce is the sum over these updates
            yield "aux", {"aux_ce": self._aux_losses(self.aux_net(z_det), labels, confuse=False)}

        # 3. encoder and decoder
        out: dict[str, torch.Tensor] = {}
        if p.rec > 0:
            out["rec"] = p.rec * rec_loss_from_preact(p.rec_loss, pre_rec, x)
        if p.kl > 0:
            lv = logvar.float()
            out["kl"] = p.kl * (0.5 * (mu.float().pow(2) + lv.exp() - 1.0 - lv)).mean(1).mean()
        if p.cls > 0:
            out["cls"] = p.cls * sum(attribute_loss(logits[a], labels[a], sp)
                                     for a, sp in self.specs.items()) / len(self.specs)
        if p.aux > 0 and s > 0:
            a_logits = frozen_forward(self.aux_net, mu)
            if p.aux_mode == "max":
                out["aux"] = -s * p.aux * self._aux_losses(a_logits, labels, confuse=False)
            else:
                out["aux"] = s * p.aux * self._aux_losses(a_logits, labels, confuse=True)
        if p.aux_moments > 0 and s > 0:
            seen = mu
            if self.aux_white is not None:
                if self.training:
                    self.aux_white.update(mu)
                seen = self.aux_white(mu)
            out["aux_mom"] = s * p.aux_moments * sum(
                label_dependence(seen, labels[a], sp.num_classes if sp.discrete else 0,
                                 spread=p.aux_spread_by.get(a, p.aux_spread))
                for a, sp in self.specs.items()) / len(self.specs)
        if self.discriminator is not None and s > 0:
            f_rec, f_p = frozen_forward(self.discriminator, x_rec), frozen_forward(self.discriminator, x_p)
            if p.gan_loss == "nonsaturating":
                g = (F.softplus(-f_rec).mean() + F.softplus(-f_p).mean()) / 2.0
            else:
                g = -(F.softplus(f_rec).mean() + F.softplus(f_p).mean()) / 3.0
            out["gan"] = s * p.gan * g
        if p.cls_rec > 0:
            _, _, rec_logits = self._split(self.encoder(x_rec))
            out["cls_rec"] = p.cls_rec * sum(attribute_loss(rec_logits[a], labels[a], sp)
                                             for a, sp in self.specs.items()) / len(self.specs)
        if p.cls_edit > 0:
            out["cls_edit"] = p.cls_edit * self._edit_loss(z, labels)
        if not out:
            raise FacefactorsError("ifcvae_gan: every encoder/decoder loss weight is 0; nothing to train")
        yield "autoencoder", out
