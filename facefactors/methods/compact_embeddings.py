"""Compact, disentangled embeddings (Browatzki & Wallraven): adversarial autoencoder + factor network.

Stage 1, the autoencoder. An encoder E maps an image to z (``z_dim``, the paper's 3 + 3 x 32),
a decoder G maps z back. Losses (weights; 0 switches a term off and its network is not built):

- ``rec`` (L_rec): image reconstruction G(E(x)) ~ x (per-pixel mean ``rec_loss``);
- ``enc`` (L_enc): adversarial autoencoder: a latent discriminator tells E(x) from N(0, I)
  draws (group ``latent_dis``) and the encoder is trained to fool it, so the aggregate
  posterior matches the prior and random faces can be sampled;
- ``adv`` (L_adv): an image GAN on reconstructions (group ``image_dis``: a PatchGAN on real
  images against G(E(x))); the autoencoder is trained to fool it;
- ``gen`` (L_gen): the same discriminator on faces decoded from prior draws G(z), z ~ N(0, I).
  Non-saturating logistic GAN losses throughout.

Stage 2, the factor network. Phi maps z to named parts f = [f_a for each modelled attribute,
then ``rest``] and Phi^-1 maps the parts back to z. ``encode`` is Phi(E(x)) and ``decode`` is
G(Phi^-1(f)). Losses:

- ``f`` (L_f): each attribute part's own loss: triplet loss with margin ``triplet_margin`` on
  the L2-normalised part for identity-like parts (``triplet_parts``), regression of the first
  dimensions of the part onto standardised continuous labels for the parts in ``regress``
  (pose -> yaw, roll on SynthFaces; running mean/std buffers), cross-entropy through a linear
  head otherwise (logged per part as ``f_<part>``);
- ``zrec`` (L_rec of Phi): Phi^-1(Phi(z)) ~ z (the paper's W_zrec = 4);
- ``cyc`` (L_cyc): every part is shuffled independently across the batch, decoded, re-encoded;
  the re-encoded parts must equal the shuffled ones;
- ``aug`` (L_aug): L_f on those re-encoded (cycled) parts against the shuffled labels.
- ``complement_adv`` (not in the paper; 0 by default): per modelled attribute a an adversary
  (``complement_adv_hidden``; 0 = linear) learns a from the *detached* complement f_not_a in its
  own group (``complement_adv``, ``complement_adv_steps`` updates per step); the factor network
  (and in J the encoder) is trained through the frozen adversary to make its posterior uniform
  (discrete a) or its prediction the mean (continuous a: regression of the standardised labels
  towards 0). Nothing in the paper's losses takes an attribute *out* of the other parts, so
  without it f_not_p keeps nearly all of p (BENCHMARKS.md); this is the missing force.
- ``complement_moments`` (not in the paper; 0 by default): a closed-form, adversary-free push in
  the same direction: within each batch, the share of every dim of f_not_a that a's labels
  explain (``label_dependence``: between-class variance share and per-class variance mismatch for
  discrete a, squared correlation for continuous a), driven to 0. Equal class-conditional means
  leave no first-moment signal for a linear probe; the variances take away some of the rest.
- ``complement_kernel`` (not in the paper; 0 by default): the same push with a Gaussian-kernel
  alignment of f_not_a with a's labels (``label_kernel_dependence``), which a nonlinear probe
  cannot get around by reading something other than the class means and spreads.
- ``complement_per_part`` (off by default): both dependence terms are taken on each part q of
  f_not_a on its own (mean over the (a, q) pairs) instead of on the concatenation. A Gaussian
  kernel on ~80 concatenated dims hardly moves when a 32-d identity part carries illumination; on
  the part alone it does, and a part free of a is what a's complement needs.
- ``part_compactness`` (not in the paper; 0 by default): for each discrete attribute part (on
  the L2-normalised embedding for triplet parts), the within-class share of its variance in the
  batch (``within_class_share``), logged as ``compact``. A part that varies within its class
  holds something besides its label (illumination in f_id, identity in f_e); fresh probes read
  those from the complements of the other attributes. Driving the share down makes each part a
  code of its own label, so that other attributes must live in ``rest`` only.
- ``carry`` (not in the paper; empty by default): for a cross-entropy or triplet part, continuous
  labels that its first dims also regress (standardised, added to the part's L_f), such as
  illumination -> light_strength. The within-class variation of an attribute then has a home in
  its own part; without one, z reconstruction puts it into ``rest`` or the other parts, where it
  reveals the class (BENCHMARKS.md).
- ``complement_whiten`` (not in the paper; off by default): the complement adversaries, the
  confusion and both dependence terms see each f_not_a (per part q with ``complement_per_part``)
  whitened by running statistics (``nn.whitening.RunningWhitening``, buffers ``comp_white`` /
  ``part_white``). Raw, these terms are ruled by the high-variance directions, so the factor
  network hides a in directions of small variance (illumination within an identity in f_id),
  where a fresh probe that standardises its input still reads it; whitened, every direction
  counts the same and shrinking one does not hide it (BENCHMARKS.md).

Phi and Phi^-1 are linear maps plus residual MLPs whose last layer starts at zero; the linear
maps start orthogonal and transposed, so Phi^-1(Phi(z)) = z exactly before stage 2 and
``decode(encode(x))`` is the stage-1 reconstruction from the first step (the parts must hold at
least ``z_dim`` numbers).

Training modes (``mode``), within one run of the shared trainer:

- ``S``: stage 1 for the first ``stage1_fraction`` of the steps (groups ``latent_dis``,
  ``image_dis``, ``autoencoder`` = E and G); then stage 2 alone (group ``factor`` = Phi, Phi^-1,
  heads) on the frozen stage 1: E and G are in eval mode (batch-norm statistics fixed), their
  parameters need no gradients and no stage-1 optimiser steps, so they do not change;
- ``J``: the same stage 1 first, then joint training: the ``autoencoder`` group holds E, G and
  the factor network, and the stage-2 losses reach the encoder and decoder (through L_f on
  Phi(E(x)) and through the decode / re-encode cycle). With ``joint_stage1`` the stage-1
  losses continue alongside. ``stage1_fraction: 0`` trains everything jointly from the start.

``latent_cycle`` (not in the paper) is L_cyc in code space (``latent_cycle_loss``): shuffled
parts through Phi^-1 must come back from Phi, and the codes Phi^-1 gives them must have the
moments of the encoder's codes. Without it or L_cyc, nothing constrains Phi^-1 on mixed parts;
with the whitened complement terms, which do not see the parts' scale, the parts grew to ten
times the codes' scale and swaps decoded to noise (BENCHMARKS.md).

``stage1_batch`` (not in the paper) lets the stages differ in batch size within one trainer
batch: stage 1 uses the first n images of each batch, stage 2 all of them. The complement terms
are estimated within a batch and want more images than the GAN of stage 1 trains well on.

Complements. The complement f_not_p of a part p is the concatenation of every other part
(``complement_parts(p)``, ``complement(z, p)``), not an extra Latent part: the parts already
partition the representation, so ``decode`` takes exactly what ``encode`` gives, and
"all but p" is interpolated or swapped by moving those parts together
(``interpolate(a, b, model.complement_parts(p), alphas)``).

Sampling. ``sample(part, n)`` draws z ~ N(0, I) and returns Phi(z)[part] (each call a fresh
draw); ``sample_latent(n)`` returns all parts of the same draws.

``model.part_dims`` and ``regress`` entries naming dataset attributes that are not modelled are
ignored (so the identity-only and expression-only variants extend the full config); defaults: a
regressed part has one dim per target, other attribute parts 32, ``rest`` fills up to ``z_dim``
(at least 8).

Official settings: Adam 2e-5 with beta1 0, W_zrec 4, triplet margin 0.2 (the defaults here);
the SynthFaces configs use faster CPU settings and say so.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from facefactors.data.specs import Batch
from facefactors.errors import FacefactorsError
from facefactors.latent import Latent
from facefactors.methods.adversarial_attributes import shuffle_parts, uniform_cross_entropy
from facefactors.methods.autoencoder import reconstruction_loss
from facefactors.methods.base import Method, MethodParams, ModelSetup, OptimizerSpec
from facefactors.methods.registry import register
from facefactors.nn.classifiers import MLPHead
from facefactors.nn.losses import code_cycle_error, label_dependence, label_kernel_dependence, within_class_share
from facefactors.nn.critics import PatchCritic
from facefactors.nn.decoders import VectorDecoder
from facefactors.nn.encoders import VectorEncoder
from facefactors.nn.whitening import RunningWhitening

DEFAULT_PART_DIM = 32
MIN_REST_DIM = 8
MODES = ("S", "J")
MINING = ("all", "hard")


@dataclass
class CompactEmbeddingsParams(MethodParams):
    lr: float = 2e-5                      # autoencoder and factor network (official: Adam 2e-5, beta1 0)
    betas: tuple[float, float] = (0.0, 0.999)
    dis_lr: float = 2e-5                  # latent and image discriminators
    mode: str = "S"                       # S: stages separately; J: stage 1, then jointly
    stage1_fraction: float = 0.5          # fraction of the steps that train stage 1 alone
    stage1_batch: int = 0                 # not in the paper: stage 1 uses the first n images of each batch (0: all)
    joint_stage1: bool = True             # J: keep the stage-1 losses during joint training
    z_dim: int = 99                       # the paper: 3 + 3 x 32
    # stage 1 (weights; 0 switches a term off)
    rec: float = 1.0                      # L_rec: image reconstruction
    rec_loss: str = "mse"                 # mse | l1
    enc: float = 1.0                      # L_enc: encoder against the latent discriminator
    adv: float = 1.0                      # L_adv: image GAN on reconstructions
    gen: float = 1.0                      # L_gen: image GAN on decoded prior samples
    latent_dis_hidden: int = 256
    dis_width: int = 32                   # PatchGAN width
    dis_layers: int = 3                   # PatchGAN stride-2 stages
    # stage 2
    f: float = 1.0                        # L_f: attribute losses on the parts
    zrec: float = 4.0                     # L_rec of the factor network (W_zrec)
    cyc: float = 1.0                      # L_cyc: shuffle, decode, re-encode
    aug: float = 1.0                      # L_aug: L_f on the cycled parts
    factor_hidden: int = 256              # residual MLP width of Phi and Phi^-1
    triplet_parts: tuple[str, ...] = ("identity",)   # identity-like parts: triplet loss
    triplet_margin: float = 0.2
    triplet_mining: str = "all"           # all: mean over active triplets; hard: batch-hard
    regress: dict[str, list[str]] = field(default_factory=dict)  # part -> continuous labels it regresses
    carry: dict[str, list[str]] = field(default_factory=dict)    # not in the paper: class part -> continuous labels its first dims regress too
    stats_momentum: float = 0.01          # running mean/std of the regression targets
    # not in the paper: adversaries on the complements f_not_p (0 switches them off)
    complement_adv: float = 0.0           # weight of the uniform-posterior loss on each f_not_p
    complement_adv_hidden: int = 256      # adversary MLP width (0: linear)
    complement_adv_steps: int = 1         # adversary updates per training step
    complement_moments: float = 0.0       # weight of the label dependence of each f_not_p (label_dependence)
    complement_kernel: float = 0.0        # weight of the kernel alignment of each f_not_p with p's labels
    complement_per_part: bool = False     # measure those two on each part of f_not_p, not on the concatenation
    part_compactness: float = 0.0         # weight of the within-class variance share of each discrete part
    complement_whiten: bool = False       # the complement terms see whitened codes (nn.whitening)
    latent_cycle: float = 0.0             # not in the paper: L_cyc in code space (shuffled parts through Phi^-1, Phi)


# ---------------------------------------------------------------------------- losses

def triplet_loss(emb: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, mining: str = "all",
                 normalize: bool = True) -> torch.Tensor:
    """Triplet loss (FaceNet) on squared Euclidean distances of (L2-normalised) embeddings.

    ``mining="all"``: mean of max(0, d(a, p) - d(a, n) + margin) over the valid triplets whose
    loss is positive (batch-all, Hermans et al.); ``"hard"``: for each anchor with a positive,
    its farthest positive against its nearest negative (batch-hard). A batch without a valid
    triplet gives 0 (still connected to ``emb`` so backward works).
    """
    if mining not in MINING:
        raise ValueError(f"unknown triplet mining {mining!r}; use {' or '.join(MINING)}")
    e = emb.float().flatten(1)
    if normalize:
        e = F.normalize(e, dim=1)
    sq = (e * e).sum(1)
    d = (sq[:, None] + sq[None, :] - 2.0 * e @ e.T).clamp_min(0.0)
    y = labels.reshape(-1)
    same = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
    pos, neg = same & ~eye, ~same
    zero = e.sum() * 0.0
    if mining == "hard":
        has = pos.any(1) & neg.any(1)
        if not bool(has.any()):
            return zero
        hardest_pos = torch.where(pos, d, torch.full_like(d, -1.0)).amax(1)
        hardest_neg = torch.where(neg, d, torch.full_like(d, float("inf"))).amin(1)
        return F.relu(hardest_pos - hardest_neg + margin)[has].mean()
    valid = pos[:, :, None] & neg[:, None, :]
    if not bool(valid.any()):
        return zero
    loss = F.relu(d[:, :, None] - d[:, None, :] + margin)[valid]
    active = loss > 0
    return loss[active].mean() if bool(active.any()) else zero


def gan_d_loss(real: torch.Tensor, fakes: list[torch.Tensor]) -> torch.Tensor:
    """Discriminator loss: softplus(-D(real)) + mean over the fake sources of softplus(D(fake))."""
    fake = sum(F.softplus(f.float()).mean() for f in fakes) / len(fakes)
    return F.softplus(-real.float()).mean() + fake


def gan_g_loss(fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss softplus(-D(fake))."""
    return F.softplus(-fake.float()).mean()


# ---------------------------------------------------------------------------- networks

class FactorMap(nn.Module):
    """Linear map plus a residual MLP whose output layer starts at zero (so it starts linear)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, out_dim))
        nn.init.zeros_(self.linear.bias)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.mlp(x)


class RunningStats(nn.Module):
    """Running mean / std of regression targets (buffers: saved in checkpoints)."""

    def __init__(self, k: int, momentum: float):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(k))
        self.register_buffer("std", torch.ones(k))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, t: torch.Tensor) -> None:
        if t.shape[0] < 2:
            return
        m = 1.0 if int(self.updates) == 0 else self.momentum
        self.mean.lerp_(t.float().mean(0), m)
        self.std.lerp_(t.float().std(0).clamp_min(1e-6), m)
        self.updates += 1

    def standardise(self, t: torch.Tensor) -> torch.Tensor:
        return (t.float() - self.mean) / self.std


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters of ``modules`` need no gradient inside the block (restored after)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# ---------------------------------------------------------------------------- the method

@register
class CompactEmbeddings(Method):
    name = "compact_embeddings"
    summary = ("Browatzki & Wallraven: adversarial autoencoder with image GAN, factor network to "
               "attribute parts and back (L_f, L_rec, L_cyc, L_aug), separate (S) or joint (J) training.")
    Params = CompactEmbeddingsParams

    def __init__(self, setup: ModelSetup, params: CompactEmbeddingsParams):
        super().__init__(setup, params)
        p = params
        self._check_params(p)
        self.attributes = [a.name for a in setup.attributes]
        kinds = {a.name: a for a in setup.attributes}
        known = set(self.attributes) | set(setup.extra_attributes)
        unknown = [k for k in p.regress if k not in known]
        if unknown:
            raise ValueError(f"method.regress names {unknown[0]!r}, which is not an attribute of the dataset; "
                             f"modelled: {', '.join(self.attributes)}")
        # the loss of each attribute part: regression, triplet or cross-entropy
        self.regress = {a: list(p.regress[a]) for a in self.attributes if a in p.regress}
        for a in self.attributes:
            if kinds[a].kind == "continuous" and a not in self.regress:
                self.regress[a] = [a]
        self.triplet = [a for a in self.attributes if a in p.triplet_parts and a not in self.regress]
        for a in self.triplet:
            if not kinds[a].discrete:
                raise ValueError(f"triplet part {a!r} needs a categorical attribute")
        self.ce = {a: kinds[a].num_classes for a in self.attributes if a not in self.regress and a not in self.triplet}
        unknown = [a for a in p.carry if a not in known]   # the carried labels are checked per batch (_target)
        if unknown:
            raise ValueError(f"method.carry names {unknown[0]!r}, which is not an attribute of the dataset; "
                             f"modelled: {', '.join(self.attributes)}")
        self.carry = {a: list(p.carry[a]) for a in self.attributes if a in p.carry and a not in self.regress}
        self.dims = self._part_dims(setup, p)
        total = sum(self.dims.values())
        if total < p.z_dim:
            raise ValueError(f"the parts hold {total} numbers ({self.dims}) but z_dim is {p.z_dim}: the factor "
                             "network could not be invertible; enlarge model.part_dims or lower method.z_dim")
        for a, targets in [*self.regress.items(), *self.carry.items()]:
            if self.dims[a] < len(targets):
                raise ValueError(f"part {a!r} has {self.dims[a]} dims but regresses {len(targets)} labels {targets}")

        size, ch = setup.image_size, setup.channels
        self.encoder = VectorEncoder(size, ch, p.z_dim, setup.width, setup.norm)
        self.decoder = VectorDecoder(size, ch, p.z_dim, setup.width, setup.norm)
        self.latent_dis = MLPHead(p.z_dim, 1, p.latent_dis_hidden, layers=2) if p.enc > 0 else None
        self.image_dis = None
        if p.adv > 0 or p.gen > 0:
            side = size // 2 ** p.dis_layers - 2
            if side < 1:
                raise ValueError(f"an image discriminator with dis_layers={p.dis_layers} is too deep for "
                                 f"{size} px images; lower method.dis_layers")
            self.image_dis = PatchCritic(ch, p.dis_width, p.dis_layers)
        self.factor = FactorMap(p.z_dim, total, p.factor_hidden)
        self.factor_inv = FactorMap(total, p.z_dim, p.factor_hidden)
        with torch.no_grad():  # Phi^-1(Phi(z)) = z at the start: orthogonal W and its transpose
            nn.init.orthogonal_(self.factor.linear.weight)
            self.factor_inv.linear.weight.copy_(self.factor.linear.weight.T)
        self.heads = nn.ModuleDict({a: nn.Linear(self.dims[a], k) for a, k in self.ce.items()})
        self.reg_stats = nn.ModuleDict({a: RunningStats(len(t), p.stats_momentum) for a, t in self.regress.items()})
        self.carry_stats = nn.ModuleDict({a: RunningStats(len(t), p.stats_momentum) for a, t in self.carry.items()})
        # complement adversaries: the attribute's own label where it is discrete (pose is
        # categorical on SynthFaces even though its part regresses yaw and roll), else regression
        self.comp_adv = None
        self.attr_classes = {a: kinds[a].num_classes if kinds[a].discrete else 0 for a in self.attributes}  # 0: continuous
        if p.complement_adv > 0 and self.attributes:
            self.comp_adv = nn.ModuleDict({
                a: MLPHead(total - self.dims[a], k or len(self.regress[a]), p.complement_adv_hidden, layers=2)
                for a, k in self.attr_classes.items()})
        # whitening of what the complement terms see: per attribute its complement, per part for per-part terms
        self.comp_white = self.part_white = None
        if p.complement_whiten and self.attributes:
            self.comp_white = nn.ModuleDict({a: RunningWhitening(total - self.dims[a]) for a in self.attributes})
            if p.complement_per_part:
                self.part_white = nn.ModuleDict({q: RunningWhitening(d) for q, d in self.dims.items()})

    @staticmethod
    def _check_params(p: CompactEmbeddingsParams) -> None:
        if p.mode not in MODES:
            raise ValueError(f"method.mode={p.mode!r}: use S (separate stages) or J (joint)")
        if p.stage1_batch < 0:
            raise ValueError(f"method.stage1_batch={p.stage1_batch!r} must be >= 0 (0: the whole batch)")
        if not 0.0 <= p.stage1_fraction <= 1.0:
            raise ValueError(f"method.stage1_fraction={p.stage1_fraction!r} must be in [0, 1]")
        if p.rec_loss not in ("mse", "l1"):
            raise ValueError(f"method.rec_loss={p.rec_loss!r}: use mse or l1")
        if p.triplet_mining not in MINING:
            raise ValueError(f"method.triplet_mining={p.triplet_mining!r}: use {' or '.join(MINING)}")
        weights = {k: getattr(p, k) for k in ("rec", "enc", "adv", "gen", "f", "zrec", "cyc", "aug", "complement_adv",
                                              "complement_moments", "complement_kernel", "part_compactness")}
        negative = [k for k, v in weights.items() if v < 0]
        if negative:
            raise ValueError(f"method.{negative[0]} is negative; loss weights are >= 0 (0 switches a term off)")
        stage1 = p.rec > 0 or p.enc > 0 or p.adv > 0 or p.gen > 0
        stage2 = p.f > 0 or p.zrec > 0 or p.cyc > 0 or p.aug > 0
        if p.stage1_fraction > 0 and not stage1:
            raise ValueError("every stage-1 weight (rec, enc, adv, gen) is 0 but stage1_fraction > 0")
        if p.stage1_fraction < 1 and not stage2:
            raise ValueError("every stage-2 weight (f, zrec, cyc, aug) is 0 but stage1_fraction < 1")
        if p.z_dim < 1:
            raise ValueError(f"method.z_dim={p.z_dim} must be positive")
        if p.complement_adv_steps < 1 or p.complement_adv_hidden < 0:
            raise ValueError("method.complement_adv_steps must be >= 1 and complement_adv_hidden >= 0")

    def _part_dims(self, setup: ModelSetup, p: CompactEmbeddingsParams) -> dict[str, int]:
        names = self.attributes + ["rest"]
        # entries of dataset attributes that are not modelled are ignored, so a variant modelling
        # fewer attributes (identity only) can extend the full config
        unknown = set(setup.part_dims) - set(names) - set(setup.extra_attributes)
        if unknown:
            raise ValueError(f"part_dims names unknown parts {sorted(unknown)}; parts are {names}")
        dims = {a: int(setup.part_dims.get(a, len(self.regress[a]) if a in self.regress else DEFAULT_PART_DIM))
                for a in self.attributes}
        dims["rest"] = int(setup.part_dims.get("rest", max(p.z_dim - sum(dims.values()), MIN_REST_DIM)))
        bad = [k for k, v in dims.items() if v < 1]
        if bad:
            raise ValueError(f"part {bad[0]!r} has {dims[bad[0]]} dims; every part needs at least 1")
        return dims

    # ------------------------------------------------------------------ the model
    @property
    def part_names(self) -> list[str]:
        return list(self.dims)

    def to_parts(self, f: torch.Tensor) -> Latent:
        return Latent(zip(self.dims, torch.split(f, list(self.dims.values()), dim=1)))

    def phi(self, z: torch.Tensor) -> Latent:
        """Factor network: z -> parts."""
        return self.to_parts(self.factor(z))

    def phi_inv(self, f: Latent) -> torch.Tensor:
        """Inverse factor network: parts -> z."""
        return self.factor_inv(f.flatten(self.part_names))

    def encode(self, x: torch.Tensor) -> Latent:
        return self.phi(self.encoder(x))

    def decode(self, z: Latent) -> torch.Tensor:
        return self.decoder(self.phi_inv(z))

    def complement_parts(self, part: str) -> list[str]:
        """The parts that make up f_not_part: every part but ``part``."""
        if part not in self.dims:
            raise FacefactorsError(f"unknown latent part {part!r}; parts: {', '.join(self.dims)}")
        return [q for q in self.dims if q != part]

    def complement(self, z: Latent, part: str) -> torch.Tensor:
        """f_not_part: the other parts of ``z`` flattened and concatenated, (B, D - d_part)."""
        return z.flatten(self.complement_parts(part))

    def _prior(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        dev = self.factor.linear.weight.device
        return torch.randn(n, self.params.z_dim, generator=generator).to(dev)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Latent:
        """Every part of Phi(z) for ``n`` draws z ~ N(0, I)."""
        return self.phi(self._prior(n, generator))

    def sample(self, part: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if part not in self.dims:
            raise FacefactorsError(f"unknown latent part {part!r}; parts: {', '.join(self.dims)}")
        return self.sample_latent(n, generator)[part]

    # ------------------------------------------------------------------ training
    def stage1_steps(self, total_steps: int) -> int:
        return int(round(self.params.stage1_fraction * total_steps))

    def stage(self, step: int, total_steps: int) -> int:
        """1 while the autoencoder trains alone, then 2 (S: factor network only; J: everything)."""
        return 1 if step < self.stage1_steps(total_steps) else 2

    def _stage1_modules(self) -> list[nn.Module]:
        return [m for m in (self.encoder, self.decoder, self.latent_dis, self.image_dis) if m is not None]

    def _factor_modules(self) -> list[nn.Module]:
        return [self.factor, self.factor_inv, self.heads]

    def optimizers(self) -> dict[str, OptimizerSpec]:
        p = self.params
        groups = {}
        if self.latent_dis is not None:
            groups["latent_dis"] = OptimizerSpec(list(self.latent_dis.parameters()), p.dis_lr, betas=p.betas)
        if self.image_dis is not None:
            groups["image_dis"] = OptimizerSpec(list(self.image_dis.parameters()), p.dis_lr, betas=p.betas)
        ae = list(self.encoder.parameters()) + list(self.decoder.parameters())
        factor = [prm for m in self._factor_modules() for prm in m.parameters()]
        if p.mode == "J":
            groups["autoencoder"] = OptimizerSpec(ae + factor, p.lr, betas=p.betas)
        else:
            groups["autoencoder"] = OptimizerSpec(ae, p.lr, betas=p.betas)
            groups["factor"] = OptimizerSpec(factor, p.lr, betas=p.betas)
        if self.comp_adv is not None:
            groups["complement_adv"] = OptimizerSpec(list(self.comp_adv.parameters()), p.lr, betas=p.betas)
        return groups

    def _target(self, labels: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
        if name not in labels:
            raise FacefactorsError(f"compact_embeddings needs the label {name!r} (method.regress / model.attributes) "
                                   f"but the dataset has only: {', '.join(labels)}")
        return labels[name]

    def _regression_targets(self, labels: Mapping[str, torch.Tensor], part: str, carried: bool = False
                            ) -> torch.Tensor:
        """(B, T) continuous labels the part regresses (``carried``: those it carries beside its class)."""
        names = self.carry[part] if carried else self.regress[part]
        return torch.stack([self._target(labels, t).float() for t in names], dim=1)

    def attribute_losses(self, f: Latent, labels: Mapping[str, torch.Tensor],
                         perms: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """L_f per attribute part (unweighted); with ``perms`` the labels of part q are permuted by perms[q]."""
        p = self.params
        out = {}
        for a in self.attributes:
            idx = perms[a] if perms is not None else None
            if a in self.regress:
                t = self._regression_targets(labels, a)
                t = self.reg_stats[a].standardise(t if idx is None else t[idx])
                out[a] = F.mse_loss(f[a][:, :t.shape[1]].float(), t)
                continue
            y = self._target(labels, a)
            y = y if idx is None else y[idx]
            if a in self.triplet:
                out[a] = triplet_loss(f[a], y, p.triplet_margin, p.triplet_mining)
            else:
                out[a] = F.cross_entropy(self.heads[a](f[a]).float(), y)
            if a in self.carry:
                t = self._regression_targets(labels, a, carried=True)
                t = self.carry_stats[a].standardise(t if idx is None else t[idx])
                out[a] = out[a] + F.mse_loss(f[a][:, :t.shape[1]].float(), t)
        return out

    def _complement_target(self, labels: Mapping[str, torch.Tensor], a: str) -> torch.Tensor:
        if self.attr_classes[a]:
            return self._target(labels, a)
        return self.reg_stats[a].standardise(self._regression_targets(labels, a))

    def _complement_seen(self, f: Latent, a: str) -> torch.Tensor:
        """f_not_a as the complement terms see it: whitened with ``complement_whiten``."""
        c = self.complement(f, a)
        return self.comp_white[a](c) if self.comp_white is not None else c

    def _part_seen(self, f: Latent, q: str) -> torch.Tensor:
        """Part q as the per-part complement terms see it: whitened with ``complement_whiten``."""
        x = f[q].flatten(1)
        return self.part_white[q](x) if self.part_white is not None else x

    def _update_whitening(self, f: Latent) -> None:
        if not self.training:
            return
        for a, w in (self.comp_white or {}).items():
            w.update(self.complement(f, a))
        for q, w in (self.part_white or {}).items():
            w.update(f[q])

    def complement_adversary_loss(self, f: Latent, labels: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The adversaries' own loss on the (detached) complements: how well f_not_a predicts a."""
        terms = []
        for a, head in self.comp_adv.items():
            out = head(self._complement_seen(f, a).detach()).float()
            t = self._complement_target(labels, a)
            terms.append(F.cross_entropy(out, t) if self.attr_classes[a] else F.mse_loss(out, t))
        return sum(terms) / len(terms)

    def complement_confusion(self, f: Latent) -> torch.Tensor:
        """Uniform posterior (discrete) or the mean prediction (continuous) of every frozen adversary on f_not_a."""
        terms = []
        with frozen(self.comp_adv):
            for a, head in self.comp_adv.items():
                out = head(self._complement_seen(f, a)).float()
                terms.append(uniform_cross_entropy(out) if self.attr_classes[a] else out.pow(2).mean())
        return sum(terms) / len(terms)

    def complement_dependence(self, f: Latent, labels: Mapping[str, torch.Tensor],
                              kernel: bool = False) -> torch.Tensor:
        """Mean over modelled attributes a of ``label_dependence(f_not_a, a)`` (unweighted), or with
        ``kernel`` of ``label_kernel_dependence``, which also sees nonlinear dependence; with
        ``complement_per_part`` the mean over a and over each part q of f_not_a of the measure on f_q."""
        measure = label_kernel_dependence if kernel else label_dependence
        terms = []
        for a in self.attributes:
            target, classes = self._complement_target(labels, a), self.attr_classes[a]
            if self.params.complement_per_part:
                terms += [measure(self._part_seen(f, q), target, classes) for q in self.complement_parts(a)]
            else:
                terms.append(measure(self._complement_seen(f, a), target, classes))
        return sum(terms) / len(terms)

    def part_compactness(self, f: Latent, labels: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean over the discrete attribute parts of the within-class share of their variance
        (triplet parts L2-normalised first, as the triplet loss sees them)."""
        terms = []
        for a in self.attributes:
            if a in self.regress or not self.attr_classes[a]:
                continue
            x = F.normalize(f[a].float(), dim=1) if a in self.triplet else f[a]
            terms.append(within_class_share(x, self._target(labels, a), self.attr_classes[a]))
        return sum(terms) / len(terms) if terms else f[self.part_names[0]].sum() * 0.0

    def latent_cycle_loss(self, z: torch.Tensor, f: Latent) -> torch.Tensor:
        """L_cyc without the decoder: parts shuffled across the batch, mapped to codes by Phi^-1,
        must come back from Phi (each part's error relative to its batch variance), and those
        codes must have the first two moments of the encoder's codes ``z``. Where the decoder and
        encoder invert each other on the encoder's codes, this is what L_cyc asks of the shuffled
        parts, at the cost of two small MLP passes instead of a decode and an encode."""
        f_mix, _ = shuffle_parts(f, self.part_names)
        z_mix = self.phi_inv(f_mix).float()
        back = self.phi(z_mix)
        cycle = code_cycle_error(back, f_mix)
        zd = z.detach().float()
        scale = zd.var(0).mean().clamp_min(1e-6)
        mean_gap = (z_mix.mean(0) - zd.mean(0)).pow(2).mean()
        cov_gap = (torch.cov(z_mix.T) - torch.cov(zd.T)).pow(2).mean() * z.shape[1]
        return cycle + mean_gap / scale + cov_gap / scale ** 2

    def factor_losses(self, z: torch.Tensor, labels: Mapping[str, torch.Tensor],
                      f: Latent | None = None) -> dict[str, torch.Tensor]:
        """The weighted stage-2 losses on codes ``z`` (gradients reach z where it has them);
        ``f`` is Phi(z) when the caller has it already."""
        p = self.params
        f = self.phi(z) if f is None else f
        out: dict[str, torch.Tensor] = {}
        if p.f > 0:
            out.update({f"f_{a}": p.f * v for a, v in self.attribute_losses(f, labels).items()})
        if self.comp_adv is not None:
            out["comp_conf"] = p.complement_adv * self.complement_confusion(f)
        if p.complement_moments > 0 and self.attributes:
            out["comp_mom"] = p.complement_moments * self.complement_dependence(f, labels)
        if p.complement_kernel > 0 and self.attributes:
            out["comp_kernel"] = p.complement_kernel * self.complement_dependence(f, labels, kernel=True)
        if p.part_compactness > 0:
            out["compact"] = p.part_compactness * self.part_compactness(f, labels)
        if p.zrec > 0:
            out["zrec"] = p.zrec * F.mse_loss(self.phi_inv(f).float(), z.detach().float())
        if p.latent_cycle > 0:
            out["latent_cyc"] = p.latent_cycle * self.latent_cycle_loss(z, f)
        if p.cyc > 0 or p.aug > 0:
            f_mix, perms = shuffle_parts(f, self.part_names)
            f_cyc = self.phi(self.encoder(self.decoder(self.phi_inv(f_mix))))
            if p.cyc > 0:
                out["cyc"] = p.cyc * sum(F.mse_loss(f_cyc[q].float(), f_mix[q].detach().float())
                                         for q in self.part_names) / len(self.part_names)
            if p.aug > 0 and self.attributes:
                out["aug"] = p.aug * sum(self.attribute_losses(f_cyc, labels, perms).values())
        return out

    def _update_stats(self, labels: Mapping[str, torch.Tensor]) -> None:
        if self.training:
            for a in self.regress:
                self.reg_stats[a].update(self._regression_targets(labels, a))
            for a in self.carry:
                self.carry_stats[a].update(self._regression_targets(labels, a, carried=True))

    def _set_stage1_training(self, on: bool) -> None:
        if self.training:
            for m in self._stage1_modules():
                m.train(on)

    def train_step(self, batch: Batch, step: int, total_steps: int) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        p = self.params
        x, labels = batch.image, batch.labels
        stage = self.stage(step, total_steps)
        if stage == 1 and 0 < p.stage1_batch < x.shape[0]:
            n = p.stage1_batch
            x, labels = x[:n], {k: v[:n] for k, v in labels.items()}
        if stage == 2 and p.mode == "S":
            # stage 2 on the frozen autoencoder: eval mode, no parameter gradients, no stage-1 steps
            self._set_stage1_training(False)
            with torch.no_grad():
                z = self.encoder(x)
            yield from self.factor_step(z, labels)
            return
        if stage == 2:
            self._update_stats(labels)

        self._set_stage1_training(True)
        z = self.encoder(x)
        use_stage1 = stage == 1 or p.joint_stage1
        out: dict[str, torch.Tensor] = {}
        if use_stage1:
            x_rec = self.decoder(z) if (p.rec > 0 or p.adv > 0) else None
            x_gen = self.decoder(self._prior(x.shape[0], None).to(z.dtype)) if p.gen > 0 else None
            if self.latent_dis is not None:
                prior = self._prior(x.shape[0], None)
                yield "latent_dis", {"latent_dis": gan_d_loss(self.latent_dis(prior), [self.latent_dis(z.detach())])}
            if self.image_dis is not None:
                fakes = [self.image_dis(t.detach()) for t, w in ((x_rec, p.adv), (x_gen, p.gen)) if w > 0]
                yield "image_dis", {"image_dis": gan_d_loss(self.image_dis(x), fakes)}
            if p.rec > 0:
                out["rec"] = p.rec * reconstruction_loss(p.rec_loss, x_rec, x)
            if p.enc > 0:
                out["enc"] = p.enc * gan_g_loss(self.latent_dis(z))
            if p.adv > 0:
                out["adv"] = p.adv * gan_g_loss(self.image_dis(x_rec))
            if p.gen > 0:
                out["gen"] = p.gen * gan_g_loss(self.image_dis(x_gen))
        if stage == 2:
            f = self.phi(z)
            self._update_whitening(f)
            yield from self._train_complement_adversaries(f, labels)
            out.update(self.factor_losses(z, labels, f))
        if out:
            yield "autoencoder", out

    def factor_step(self, z: torch.Tensor, labels: Mapping[str, torch.Tensor]
                    ) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        """One mode-S stage-2 step on codes ``z`` of the frozen encoder: regression statistics,
        complement adversaries, then the ``factor`` group's losses. ``train_step`` runs it on E(x);
        ``benchmarks/complement_trials.py`` runs it on codes encoded once."""
        self._update_stats(labels)
        with frozen(*self._stage1_modules()):
            f = self.phi(z)
            self._update_whitening(f)
            yield from self._train_complement_adversaries(f, labels)
            losses = self.factor_losses(z, labels, f)
            if losses:
                yield "factor", losses

    def _train_complement_adversaries(self, f: Latent, labels: Mapping[str, torch.Tensor]
                                      ) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        if self.comp_adv is None:
            return
        for _ in range(self.params.complement_adv_steps):  # logged comp_adv is the sum over these updates
            yield "complement_adv", {"comp_adv": self.complement_adversary_loss(f, labels)}
