"""Adversarial multi-attribute disentanglement (Oldfield, Panagakis, Nicolaou).

M + 1 encoders (one per modelled attribute, plus ``rest``) give spatial codes; the
decoder depth-concatenates them. Per attribute a classifier C_m is trained on real
images only. Losses on the encoders and decoder (paper Eq. 2-9):

- ``rec``: L1 reconstruction (x10 in the official code);
- ``cls``: each code classified as its own attribute through C_m's last layer (Eq. 3);
- ``dis``: every other attribute's posterior from that code driven to uniform, and the
  ``rest`` code's posterior for all attributes (Eq. 4);
- ``hybrid``: codes shuffled per attribute across the batch and decoded; the hybrids must
  be classified by C_m as the labels they should carry (Eq. 5-6);
- ``adv``: a WGAN-GP PatchGAN critic judges the hybrids (Eq. 9, gradient penalty ``gp``).

Every term has a weight; 0 switches it off (and its network is not built), so the
paper's ablations are configs. Additions, all off by default (so the defaults are the paper):

- ``adversary_hidden`` > 0: MLP adversaries trained on detached codes; the encoders are
  also pushed to uniform posteriors against them (a fixed linear classifier head is a weak
  adversary: an encoder satisfies it by moving orthogonal to its weights). ``adversary`` weighs
  the mean over the pairs; with the memory and ``adversary_given`` the adversaries read the leaks
  better than a fresh probe does; for ``rest`` the weight, not their strength, was the limit (at
  4-8 its leaks fell to 0.08-0.20 MLP, for 0.3-0.4 dB), while the identity part's lighting barely
  moved (0.49 to 0.42; BENCHMARKS.md);
- ``confuse_extra``: labelled attributes that are not modelled (background, pose, glasses)
  whose MLP adversaries confuse the attribute parts too, so those nuisances go to ``rest``;
  ``confuse_linked``: identity-linked attributes (skin tone, hair colour) that every part but
  ``identity`` must not carry, ``rest`` included: an illumination part that reads brightness as
  skin tone leaks identity, and with 100 identities a batch of 32 has too few same-identity pairs
  for the terms on identity itself to see it;
- ``kl`` > 0: a variational bottleneck: each encoder gives a mean and a log-variance, the
  decoder sees a sample during training and KL(q || N(0, I)) (nats, summed over the code)
  is charged. Information kept in two parts is paid for twice, so redundancy, the source of
  leakage, is squeezed out; ``encode`` returns the mean. ``kl_parts`` gives named parts their own
  weight (unnamed parts keep ``kl``); a lighter one on the identity part or on ``rest`` alone did
  not raise PSNR in 30-minute runs, a lighter one on expression and illumination did (+0.26 dB)
  but took in ``rest``'s glasses and pose, and a heavier one on identity and ``rest`` moved
  ``rest``'s content into the cheaper parts rather than removing it (BENCHMARKS.md);
- ``warmup``/``ramp`` delay and ramp in the confusion, hybrid and critic terms;
- ``adversary_steps`` updates of the adversaries per step (they must keep up with the
  encoders to be a real constraint) at their own ``adversary_lr``;
- ``critic_every`` updates the critic (and applies its term) every k steps; ``attr_width``
  sets a slimmer conv width for the attribute encoders than for ``rest`` (``part_widths`` sets
  named parts' widths in its place); ``hybrid_batch``
  decodes (and classifies and criticises) only the first n hybrids of the shuffled batch; all
  three buy speed;
- ``moments`` and ``kernel`` > 0: adversary-free dependence terms on the same (part, attribute)
  pairs the MLP adversaries see: the between-class share and per-class variance mismatch of
  the part's dims (``nn.losses.label_dependence``) and the part's Gaussian-kernel alignment with
  the labels (``label_kernel_dependence``, which also sees what a nonlinear probe reads; its
  unbiased estimate, since with 100 identities in a batch of 32 the plug-in one reads 0.84 for
  codes independent of the labels, and its gradient then follows the codes' own structure). With
  ``whiten`` they see each part whitened by running statistics (``nn.whitening``, buffers
  ``part_white``), so information kept in a direction of small variance is not hidden from them.
  A closed-form measure cannot fall behind the encoders the way a trained adversary does.
  ``memory`` > 0 keeps that many past codes and labels (detached; buffers, so resume is exact)
  and measures on them together with the batch: with 100 identities a batch of 32 rarely holds
  two faces of one identity. In a 30-minute run it did not lower leakage (BENCHMARKS.md).
  ``adversary_memory`` > 0 keeps such a ring for the MLP adversaries: each update fits the batch
  together with the last n codes, so the adversaries judge from more codes than a batch holds, as
  the fresh probes after training do (``nn.memory.CodeRing``);
- ``latent_cycle`` > 0: each hybrid is encoded again and every part must come back as the code it
  was decoded from (squared error over the code's variance; ``nn.losses.code_cycle_error``). The critic only
  asks hybrids to look real and C_m only reads their labels; this asks the decoder to render all of
  each part in them, so a transfer keeps as much of the donor's part as a reconstruction does;
- ``identity_pairs`` > 0: with the dataset bound (the trainer binds it), the first n images get a
  partner of the same identity from the train split (``data.pairs_sampler``, a pure function of
  the step, so resume stays exact). The partners are encoded (not decoded), and the dependence
  terms measure on batch and partners: a batch of 32 from 100 identities otherwise holds almost
  no two faces of one identity, so no term sees what the other parts keep of it.
  ``identity_compact`` charges the share of the identity part's variance that lies within
  identities (``nn.losses.within_class_share``; 0: the part is a function of identity), which
  also takes out what a probe reads only within an identity (its lighting, say); at weights 30
  and 100 it did, but identity detail left the part with it (BENCHMARKS.md).
  ``pair_swap`` > 0 decodes each of those images with its partner's identity part in place of its
  own and charges the reconstruction loss against the image itself (weight as ``rec``). Two faces
  of one identity share every identity factor, so this swap has a known answer on any dataset with
  identity labels: it is the only term that trains the decoder on mixed codes against pixels
  (the hybrids are judged by classifiers and a critic only), and an identity part that carries
  its own image's lighting or pose puts the partner's into the swap and pays for it.
- ``adversary_given``: each MLP adversary also sees the one-hot labels of what its part may
  carry (an attribute part: its attribute; ``rest``: the ``confuse_extra`` nuisances), so it
  reads what the part keeps of another attribute *within* a class. A fresh probe fit on
  thousands of codes learns the class centres and reads the lighting in what varies around them
  (the identity part's leak lies in its within-identity residual; BENCHMARKS.md); an adversary
  fit on a thousand codes sees about ten per identity and cannot. Given the label, a class centre
  is one learned vector. For an attribute independent of the given labels, what the part keeps
  of it is at most what it keeps given them, so confusing the conditional adversary bounds the
  unconditional leak.
- ``carry`` (attribute -> continuous labels, e.g. expression -> expression_intensity): C_m also
  regresses those labels (standardised by the bound train split; rows where the dataset declares
  the factor hidden, such as a neutral face's intensity, are skipped). Its regression outputs are
  trained on real images, read from the part's code with the class (``cls``), and demanded of the
  hybrids (the donor's value) and of the reconstructions, each weighted by ``carry_weight``. The
  class labels alone ask a transfer for the donor's expression, not for how strongly it shows,
  and L1 reconstruction blurs a subtle mouth into its class mean (BENCHMARKS.md).
- ``kernel_within`` > 0: the ``kernel`` measure on each attribute part's *within-class residual*:
  the part minus the running mean code of its own class (buffers ``centre_<part>``, updated at
  ``within_momentum``), standardised per dim, together with the last ``within_memory`` residuals.
  Its dependence on each label the part must not carry is charged. On the whole part the kernel
  sees the class structure (94% of the identity part's variance) and reads the lighting kept
  around the class centres as nothing (about 0.001); on the residual it reads about 0.02,
  clearly above its null from a few hundred codes. In a 30-minute run the encoder satisfied the
  term but a fresh MLP probe read the lighting as before (BENCHMARKS.md).
- ``flip_invariant``: parts encoded as the mean of their encoder over the image and its left-right
  mirror (one pass over both), so a part is the same for a face and its mirror by construction. For
  an attribute whose classes are mirror-symmetric (a face's identity) it loses nothing and cannot
  tell light from the left from light from the right, nor a head turned one way from the other:
  averaging a trained identity encoder this way after training removed the left/right share of its
  lighting leak (BENCHMARKS.md). Not for attributes that a mirror changes (digits, handedness).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from facefactors.data.pairs_sampler import PairSampler, fetch_like
from facefactors.data.specs import Batch, ImageDataset
from facefactors.errors import FacefactorsError
from facefactors.latent import Latent
from facefactors.methods.autoencoder import reconstruction_loss
from facefactors.methods.base import Method, MethodParams, ModelSetup, OptimizerSpec, warmup_ramp
from facefactors.methods.registry import register
from facefactors.nn.classifiers import CodeShapedClassifier, MLPHead
from facefactors.nn.critics import PatchCritic, gradient_penalty
from facefactors.nn.decoders import MapDecoder
from facefactors.nn.memory import CodeRing
from facefactors.nn.encoders import MapEncoder
from facefactors.nn.losses import (class_means, code_cycle_error, code_kernel, label_dependence,
                                   label_kernel_dependence, within_class_share)
from facefactors.nn.whitening import RunningWhitening


# the main phase's decoder terms that the polish phase can keep (each only where its weight is on)
POLISH_TERMS = ("rec", "hybrid", "carry_rec", "pair_swap")


@dataclass
class AdversarialAttributesParams(MethodParams):
    lr: float = 1e-4                      # encoders + decoder (official: Adam 1e-4, beta1 0.5)
    betas: tuple[float, float] = (0.5, 0.999)
    classifier_lr: float = 1e-4
    critic_lr: float = 1e-4
    code_channels: int = 16               # channels of each spatial code
    code_size: int = 8                    # spatial side of each code
    res_blocks: int = 2                   # decoder residual blocks at code resolution (paper: 6)
    critic_width: int = 32
    critic_layers: int = 3
    critic_style: str = "pix2pix"         # pix2pix | deep (StarGAN's deeper PatchGAN, the paper's)
    rec: float = 10.0
    rec_loss: str = "l1"
    cls: float = 1.0
    dis: float = 1.0
    hybrid: float = 1.0
    adv: float = 1.0
    gp: float = 10.0
    adversary_hidden: int = 0             # >0: MLP adversaries on detached codes (not in the paper)
    adversary: float = 1.0                # weight of the uniform loss against those adversaries
    adversary_weights: dict[str, float] = field(default_factory=dict)  # "part:attribute" -> multiplier of its term
    adversary_lr: float = 0.0             # their learning rate (0: classifier_lr)
    adversary_steps: int = 1              # their updates per step on the detached codes (cheap: MLPs)
    confuse_extra: tuple[str, ...] = ()   # unmodelled attributes the attribute parts must not carry
    confuse_linked: tuple[str, ...] = ()  # identity-linked attributes every part but identity must not carry
    kl: float = 0.0                       # variational bottleneck weight per nat (0: deterministic codes)
    kl_parts: dict[str, float] = field(default_factory=dict)  # per-part weights in place of kl (needs kl > 0)
    warmup: float = 0.0                   # fraction of training before dis/hybrid/adv start
    ramp: float = 0.0                     # fraction of training over which they ramp to full weight
    critic_every: int = 1                 # critic update (and its term) every k steps
    attr_width: int = 0                   # conv width of the attribute encoders (0: model width)
    part_widths: dict[str, int] = field(default_factory=dict)  # per-part encoder widths in place of the above
    moments: float = 0.0                  # label dependence of each part on the others' labels (not in the paper)
    kernel: float = 0.0                   # kernel alignment of each part with the others' labels (not in the paper)
    whiten: bool = False                  # moments / kernel see whitened parts (nn.whitening)
    hybrid_batch: int = 0                 # hybrids decoded per step (0: the whole batch)
    memory: int = 0                       # moments / kernel also see this many past codes (detached)
    adversary_memory: int = 0             # the MLP adversaries also train on this many past codes (detached)
    adversary_given: bool = False         # the MLP adversaries also see the labels their part may carry (not in the paper)
    latent_cycle: float = 0.0             # hybrids re-encoded must give back the codes they were decoded from (not in the paper)
    identity_pairs: int = 0               # same-identity partners drawn for the first n images, encoded for the terms below
    identity_compact: float = 0.0         # within-identity share of the identity part's variance (not in the paper)
    pair_swap: float = 0.0                # reconstruct each paired image from its partner's identity part (not in the paper)
    carry: dict[str, list[str]] = field(default_factory=dict)  # attribute -> continuous labels C_m also regresses (not in the paper)
    carry_weight: float = 1.0             # weight of those regressions (real images, codes, hybrids, reconstructions)
    kernel_within: float = 0.0            # kernel dependence of each attribute part's within-class residual (not in the paper)
    within_memory: int = 256              # past residuals (detached) those terms also see
    within_momentum: float = 0.05         # update rate of the running class centres the residuals are taken from
    polish_terms: tuple[str, ...] = POLISH_TERMS  # the decoder terms train.polish trains on (rec always)
    flip_invariant: tuple[str, ...] = ()  # parts encoded as the mean over the image and its mirror (not in the paper)


def uniform_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between the uniform distribution and softmax(logits) (Eq. 4), batch mean."""
    return -F.log_softmax(logits.float(), dim=1).mean(dim=1).mean()


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) in nats, summed over the code, batch mean."""
    return 0.5 * (mu.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).flatten(1).sum(1).mean()


def _rename_old_memory_buffers(state_dict, prefix, *args) -> None:
    """Checkpoints from before ``nn.memory.CodeRing`` named the dependence ring's buffers
    ``memory_codes``, ``memory_labels``, ``memory_filled`` and ``memory_next``."""
    for old in ("codes", "labels", "filled", "next"):
        key = f"{prefix}memory_{old}"
        if key in state_dict:
            state_dict[f"{prefix}memory.{old}"] = state_dict.pop(key)


def shuffle_parts(z: Latent, attributes: list[str], generator: torch.Generator | None = None
                  ) -> tuple[Latent, dict[str, torch.Tensor]]:
    """Permute each attribute part independently across the batch (``rest`` stays): Eq. 5."""
    b = z.batch_size
    perms = {a: torch.randperm(b, generator=generator).to(z[a].device) for a in attributes}
    return z.replace(**{a: z[a][perms[a]] for a in attributes}), perms


@register
class AdversarialAttributes(Method):
    name = "adversarial_attributes"
    summary = ("Oldfield et al.: per-attribute spatial codes, uniform-posterior disentanglement loss, "
               "latent shuffling with hybrid classification, WGAN-GP PatchGAN critic.")
    Params = AdversarialAttributesParams

    def __init__(self, setup: ModelSetup, params: AdversarialAttributesParams):
        super().__init__(setup, params)
        for a in setup.attributes:
            if not a.discrete:
                raise ValueError(f"attribute {a.name!r} is {a.kind}; adversarial_attributes models "
                                 "categorical or binary attributes")
        if not setup.attributes:
            raise ValueError("adversarial_attributes needs at least one attribute")
        p = params
        for key in ("hybrid_batch", "memory", "adversary_memory", "identity_pairs", "within_memory"):
            if getattr(p, key) < 0:
                raise ValueError(f"method.{key}={getattr(p, key)!r} must be >= 0")
        for key in ("adversary_memory", "adversary_given"):
            if getattr(p, key) and p.adversary_hidden <= 0:
                raise ValueError(f"{key} needs MLP adversaries (adversary_hidden > 0)")
        for key in ("identity_compact", "pair_swap"):
            if getattr(p, key) > 0 and p.identity_pairs <= 0:
                raise ValueError(f"{key} needs identity_pairs > 0: a batch alone rarely holds two faces of one identity")
        self.attributes = [a.name for a in setup.attributes]
        unknown = [t for t in p.polish_terms if t not in POLISH_TERMS]
        if unknown or "rec" not in p.polish_terms:
            raise ValueError(f"method.polish_terms={list(p.polish_terms)!r}: name 'rec' and any of "
                             f"{', '.join(POLISH_TERMS[1:])}")
        if p.kl_parts:
            unknown = [n for n in p.kl_parts if n not in self.attributes + ["rest"]]
            if unknown:
                raise ValueError(f"method.kl_parts names {unknown[0]!r}, which is not a part; parts: "
                                 f"{', '.join(self.attributes + ['rest'])}")
            if p.kl <= 0 or any(w <= 0 for w in p.kl_parts.values()):
                raise ValueError("method.kl_parts needs kl > 0 and a weight > 0 for each part it names "
                                 "(a stochastic code with no KL charged is not a bottleneck)")
        self.n_classes = {a.name: a.num_classes for a in setup.attributes}
        needs_identity = [k for k in ("confuse_linked", "identity_pairs", "identity_compact", "pair_swap")
                          if getattr(p, k)]
        if needs_identity and "identity" not in self.n_classes:
            raise ValueError(f"{' and '.join(needs_identity)} need an identity part, which is not modelled "
                             "(model.attributes)")
        for key in ("confuse_extra", "confuse_linked"):
            missing = [a for a in getattr(p, key) if a not in setup.extra_attributes]
            if missing:
                raise ValueError(f"{key} names {missing[0]!r}, which is not a categorical attribute of the "
                                 f"dataset (or is modelled already); available: {', '.join(setup.extra_attributes)}")
        both = sorted(set(p.confuse_extra) & set(p.confuse_linked))
        if both:
            raise ValueError(f"{both[0]!r} is in both confuse_extra and confuse_linked; name it in one")
        self.extra_classes = {a: setup.extra_attributes[a] for a in p.confuse_extra}
        self.linked_classes = {a: setup.extra_attributes[a] for a in p.confuse_linked}
        if (self.extra_classes or self.linked_classes) and p.adversary_hidden <= 0 and p.moments <= 0 and p.kernel <= 0:
            raise ValueError("confuse_extra and confuse_linked need MLP adversaries (adversary_hidden > 0) or "
                             "dependence terms (moments or kernel > 0)")
        parts = self.attributes + ["rest"]
        # (part, attribute) pairs the part must not carry: every other modelled attribute (rest:
        # all of them), for the attribute parts the unmodelled nuisances of confuse_extra, and for
        # every part but identity (rest included) the identity-linked attributes of confuse_linked
        self.confusion_pairs = ([(q, a) for q in parts for a in self.n_classes if a != q]
                                + [(q, a) for q in self.attributes for a in self.extra_classes]
                                + [(q, a) for q in parts if q != "identity" for a in self.linked_classes])
        self.confusion_classes = {**self.n_classes, **self.extra_classes, **self.linked_classes}
        out_channels = p.code_channels * (2 if p.kl > 0 else 1)
        for option in ("part_widths", "flip_invariant"):
            unknown = [n for n in getattr(p, option) if n not in parts]
            if unknown:
                raise ValueError(f"method.{option} names {unknown[0]!r}, which is not a part; parts: {', '.join(parts)}")
        bad = [n for n, w in p.part_widths.items() if not isinstance(w, int) or w <= 0]
        if bad:
            raise ValueError(f"method.part_widths.{bad[0]}={p.part_widths[bad[0]]!r} must be a positive integer")
        self.encoders = nn.ModuleDict({
            n: MapEncoder(setup.image_size, setup.channels, out_channels, p.code_size, self._width(n, setup.width),
                          setup.norm)
            for n in parts})
        self.decoder = MapDecoder(setup.image_size, setup.channels, p.code_channels * len(parts), p.code_size,
                                  setup.width, setup.norm, p.res_blocks)
        unknown = [a for a in p.carry if a not in self.n_classes]
        if unknown:
            raise ValueError(f"method.carry names {unknown[0]!r}, which is not a modelled attribute; "
                             f"modelled: {', '.join(self.attributes)}")
        self.carry = {a: list(p.carry[a]) for a in self.attributes if p.carry.get(a)}
        self.classifiers = nn.ModuleDict({
            a: CodeShapedClassifier(setup.image_size, setup.channels, p.code_channels, p.code_size,
                                    k + len(self.carry.get(a, [])), setup.width)
            for a, k in self.n_classes.items()})
        # standardisation of the carried labels (set from the bound train split; saved with the model)
        for a, names in self.carry.items():
            self.register_buffer(f"carry_mean_{a}", torch.zeros(len(names)))
            self.register_buffer(f"carry_std_{a}", torch.ones(len(names)))
        self._carry_hidden: dict[str, dict[str, list[int]]] = {}
        self.critic = PatchCritic(setup.channels, p.critic_width, p.critic_layers, style=p.critic_style) if p.adv > 0 else None
        code_dim = p.code_channels * p.code_size * p.code_size
        self.adversaries = None
        # labels each part's adversaries are given with adversary_given: what the part may carry
        self.given = {q: ([q] if q in self.n_classes else list(self.extra_classes)) if p.adversary_given else []
                      for q in parts}
        pair_names = {f"{q}:{a}" for q, a in self.confusion_pairs}
        unknown = sorted(k for k in p.adversary_weights if k not in pair_names)
        if unknown:
            raise ValueError(f"method.adversary_weights names {unknown[0]!r}, which is not a confusion pair; pairs: "
                             f"{', '.join(f'{q}:{a}' for q, a in self.confusion_pairs)}")
        if any(w < 0 for w in p.adversary_weights.values()):
            raise ValueError("method.adversary_weights must be >= 0")
        if p.adversary_weights and p.adversary_hidden <= 0:
            raise ValueError("adversary_weights needs MLP adversaries (adversary_hidden > 0)")
        if p.adversary_hidden > 0:
            self.adversaries = nn.ModuleDict({
                f"{q}__{a}": MLPHead(code_dim + sum(self.confusion_classes[g] for g in self.given[q]),
                                     self.confusion_classes[a], p.adversary_hidden)
                for q, a in self.confusion_pairs})
        self.part_white = None
        dependence = p.moments > 0 or p.kernel > 0
        if p.whiten and dependence:
            self.part_white = nn.ModuleDict({q: RunningWhitening(code_dim) for q in parts})
        # rings of past codes and labels: for the dependence terms, and for the adversaries' updates
        self.memory = CodeRing(parts, self.confusion_classes, p.memory, code_dim) if p.memory > 0 and dependence else None
        self._register_load_state_dict_pre_hook(_rename_old_memory_buffers)
        self.adversary_ring = (CodeRing(parts, self.confusion_classes, p.adversary_memory, code_dim)
                               if p.adversary_memory > 0 and self.adversaries is not None else None)
        # kernel_within: running class centres of each attribute part, and a ring of past residuals
        self.within_pairs = [(q, a) for q, a in self.confusion_pairs if q in self.n_classes]
        self.within_ring = None
        if p.kernel_within > 0:
            if not 0 < p.within_momentum <= 1:
                raise ValueError(f"method.within_momentum={p.within_momentum!r} must be in (0, 1]")
            for q in self.attributes:
                self.register_buffer(f"centre_{q}", torch.zeros(self.n_classes[q], code_dim))
                self.register_buffer(f"centre_seen_{q}", torch.zeros(self.n_classes[q], dtype=torch.bool))
            if p.within_memory > 0:
                self.within_ring = CodeRing(self.attributes, self.confusion_classes, p.within_memory, code_dim)
        self._partners: PairSampler | None = None
        self._images: torch.Tensor | None = None
        self._labels: dict[str, torch.Tensor] = {}

    def _width(self, part: str, model_width: int) -> int:
        """Conv width of a part's encoder: ``part_widths``, else ``attr_width`` for attribute parts,
        else the model's width."""
        p = self.params
        if part in p.part_widths:
            return p.part_widths[part]
        return model_width if part == "rest" or p.attr_width <= 0 else p.attr_width

    # ------------------------------------------------------------------ data
    def bind_dataset(self, ds: ImageDataset, seed: int = 0, split: str = "train") -> None:
        """With ``identity_pairs``: draw same-identity partners from ``ds``'s ``split``."""
        for a, names in self.carry.items():
            missing = [t for t in names if t not in ds.labels or ds.labels[t].dtype.is_floating_point is False]
            if missing:
                raise FacefactorsError(f"method.carry asks {a!r} to regress {missing[0]!r}, which is not a continuous "
                                       f"label of dataset {ds.name!r}; its labels: {', '.join(ds.labels)}")
            self._carry_hidden.update({t: ds.factor_hidden[t] for t in names if t in ds.factor_hidden})
            rows = torch.as_tensor(ds.split(split))
            t = torch.stack([ds.labels[n][rows].float() for n in names], dim=1)
            shown = self._carry_shown({k: v[rows] for k, v in ds.labels.items()}, names)
            getattr(self, f"carry_mean_{a}").copy_(torch.nanmean(t.masked_fill(~shown, float("nan")), 0))
            getattr(self, f"carry_std_{a}").copy_(torch.stack([t[shown[:, j], j].std() for j in range(len(names))])
                                                  .clamp_min(1e-6))
        if self.params.identity_pairs > 0:
            self._partners = PairSampler(ds.labels["identity"], ds.split(split), seed)
            self._images = ds.images
            self._labels = {a: ds.labels[a] for a in self.confusion_classes}

    def partners(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Images of the same identity as the batch's first ``identity_pairs`` images, drawn from
        the bound split, and their labels (every attribute the terms see)."""
        n = min(self.params.identity_pairs, len(batch.image))
        idx, _ = self._partners.same(batch.index[:n].cpu().numpy(), step)
        rows = torch.from_numpy(idx)
        return (self.augment_images(fetch_like(self._images, idx, batch.image)),
                {a: v[rows].to(batch.image.device) for a, v in self._labels.items()})

    def _carry_shown(self, labels, names: list[str]) -> torch.Tensor:
        """(B, T) bool: the carried label shows in the image (not declared hidden by the dataset)."""
        cols = []
        for t in names:
            shown = torch.ones_like(labels[t], dtype=torch.bool)
            for other, values in self._carry_hidden.get(t, {}).items():
                shown &= ~torch.isin(labels[other], torch.as_tensor(values, device=labels[other].device))
            cols.append(shown)
        return torch.stack(cols, dim=1)

    def carry_loss(self, outputs: torch.Tensor, a: str, labels, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Squared error of C_a's regression outputs (after its class logits) against the carried
        labels (``idx``: of the rows idx), standardised, over the rows where they show."""
        names = self.carry[a]
        if not all(t in labels for t in names):
            missing = next(t for t in names if t not in labels)
            raise FacefactorsError(f"method.carry needs the label {missing!r}, but the batch has only: {', '.join(labels)}")
        rows = labels if idx is None else {k: v[idx] for k, v in labels.items()}
        t = torch.stack([rows[n].float() for n in names], dim=1)
        t = (t - getattr(self, f"carry_mean_{a}")) / getattr(self, f"carry_std_{a}")
        shown = self._carry_shown(rows, names).to(t.dtype)
        err = (outputs[:, self.n_classes[a]:].float() - t).pow(2) * shown
        return err.sum() / shown.sum().clamp_min(1.0)

    def _class_loss(self, logits: torch.Tensor, a: str, labels, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy of C_a's class logits, plus its carried regressions (``carry_weight``)."""
        y = labels[a] if idx is None else labels[a][idx]
        loss = F.cross_entropy(logits[:, :self.n_classes[a]], y)
        if a in self.carry:
            loss = loss + self.params.carry_weight * self.carry_loss(logits, a, labels, idx)
        return loss

    # ------------------------------------------------------------------ the model
    @property
    def part_names(self) -> list[str]:
        return self.attributes + ["rest"]

    def _encoder(self, n: str, x: torch.Tensor) -> torch.Tensor:
        """Part n's encoder output, in fp32 even under bf16 autocast (``train.precision``): the
        adversaries and dependence terms judge variations in the codes finer than bf16 rounds to
        (with bf16 codes the kernel term's gradient pointed 19 degrees off; BENCHMARKS.md)."""
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if n in self.params.flip_invariant:   # one pass over image and mirror (BatchNorm sees both)
                h = self.encoders[n](torch.cat([x, x.flip(3)]))
                return 0.5 * (h[:x.shape[0]] + h[x.shape[0]:])
            return self.encoders[n](x)

    def encode(self, x: torch.Tensor) -> Latent:
        return Latent((n, self._encoder(n, x)[:, :self.params.code_channels]) for n in self.part_names)

    def encode_stochastic(self, x: torch.Tensor) -> tuple[Latent, Latent, torch.Tensor | None]:
        """(means, samples, KL) for training; without the bottleneck samples are the means. The KL
        sums the parts', a part named in ``kl_parts`` scaled by its weight over ``kl``; times ``kl``
        it is the charged term."""
        if self.params.kl <= 0:
            z = self.encode(x)
            return z, z, None
        c = self.params.code_channels
        mu, sample, kl = {}, {}, 0.0
        for n in self.part_names:
            h = self._encoder(n, x)
            m, logvar = h[:, :c], h[:, c:].clamp(-12.0, 6.0)
            mu[n], sample[n] = m, m + torch.randn_like(m) * (0.5 * logvar).exp()
            part_kl = gaussian_kl(m, logvar)
            if n in self.params.kl_parts:  # relative to kl, which the caller charges (unnamed parts: as before)
                part_kl = part_kl * (self.params.kl_parts[n] / self.params.kl)
            kl = kl + part_kl
        return Latent(mu), Latent(sample), kl

    def decode(self, z: Latent) -> torch.Tensor:
        return self.decoder(torch.cat([z[n] for n in self.part_names], dim=1))

    def polish_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """The polish phase (``train.polish``): the main phase's decoder terms on the frozen
        encoders' means, with their weights: reconstruction, the shuffled hybrids' labels read by
        the frozen classifiers (``hybrid``), the carried labels of reconstructions (``carry_rec``)
        and the same-identity swaps (``pair_swap``); not the critic. ``polish_terms`` keeps a
        subset. Reconstruction alone raised PSNR but let transfers show the donor's expression
        intensity less (BENCHMARKS.md)."""
        p = self.params
        x, labels = batch.image, batch.labels
        with torch.no_grad():
            z = self.encode(x)
        x_rec = self.decode(z)
        out = {"rec": p.rec * reconstruction_loss(p.rec_loss, x_rec, x)}
        if p.hybrid > 0 and "hybrid" in p.polish_terms:
            _, perms, x_mix = self._hybrids(z)
            out["hybrid"] = p.hybrid * self._hybrid_loss(x_mix, labels, perms)
        if self.carry and "carry_rec" in p.polish_terms:
            out["carry_rec"] = self._carry_rec_loss(x_rec, labels)
        if p.pair_swap > 0 and self._partners is not None and "pair_swap" in p.polish_terms:
            xp, _ = self.partners(batch, step)
            with torch.no_grad():
                partner_identity = self._encoder("identity", xp)[:, :p.code_channels]
            out["pair_swap"] = self._pair_swap_loss(z, partner_identity, x)
        return out

    def _hybrids(self, z: Latent) -> tuple[Latent, dict[str, torch.Tensor], torch.Tensor]:
        """Codes shuffled per attribute across the batch (the first ``hybrid_batch`` of them), the
        permutations, and their decodes."""
        z_mix, perms = shuffle_parts(z, self.attributes)
        b = z_mix.batch_size
        n = min(self.params.hybrid_batch or b, b)
        if n < b:
            z_mix, perms = z_mix.index(slice(0, n)), {a: perm[:n] for a, perm in perms.items()}
        return z_mix, perms, self.decode(z_mix)

    def _hybrid_loss(self, x_mix: torch.Tensor, labels, perms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The hybrids classified as the labels their donors gave them, mean over the attributes."""
        return sum(self._class_loss(self.classifiers[a](x_mix), a, labels, perms[a])
                   for a in self.attributes) / len(self.attributes)

    def _carry_rec_loss(self, x_rec: torch.Tensor, labels) -> torch.Tensor:
        """``carry_weight`` x the carried labels' error as read from the reconstructions."""
        return self.params.carry_weight * sum(self.carry_loss(self.classifiers[a](x_rec), a, labels)
                                              for a in self.carry) / len(self.carry)

    def _pair_swap_loss(self, z: Latent, partner_identity: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``pair_swap`` x the error of the first images decoded with their partners' identity part."""
        n = len(partner_identity)
        swapped = z.index(slice(0, n)).replace(identity=partner_identity)
        return self.params.pair_swap * reconstruction_loss(self.params.rec_loss, self.decode(swapped), x[:n])

    # ------------------------------------------------------------------ training
    def optimizers(self) -> dict[str, OptimizerSpec]:
        p = self.params
        groups = {"classifiers": OptimizerSpec(list(self.classifiers.parameters()), p.classifier_lr, betas=p.betas)}
        if self.critic is not None:
            groups["critic"] = OptimizerSpec(list(self.critic.parameters()), p.critic_lr, betas=p.betas)
        if self.adversaries is not None:
            groups["adversaries"] = OptimizerSpec(list(self.adversaries.parameters()),
                                                  p.adversary_lr or p.classifier_lr, betas=p.betas)
        groups["autoencoder"] = OptimizerSpec(list(self.encoders.parameters()) + list(self.decoder.parameters()),
                                              p.lr, betas=p.betas)
        return groups

    def _adversary_heads(self) -> list[tuple[str, str, nn.Module]]:
        """(part, attribute, head) of every MLP adversary."""
        return [(*key.split("__"), head) for key, head in self.adversaries.items()]

    def schedule(self, step: int, total_steps: int) -> float:
        """Multiplier of the confusion, hybrid and critic terms: 0 during warm-up, then a linear ramp."""
        return warmup_ramp(step, total_steps, self.params.warmup, self.params.ramp)

    def _part_seen(self, z: Latent, q: str) -> torch.Tensor:
        """Part q flattened, as the dependence terms see it: whitened with ``whiten``."""
        x = z[q].flatten(1)
        return self.part_white[q](x) if self.part_white is not None else x

    def _adversary_input(self, q: str, code: torch.Tensor, labels) -> torch.Tensor:
        """Part q's code, flattened, with the one-hot labels it is given (``adversary_given``)."""
        code = code.flatten(1)
        if not self.given[q]:
            return code
        onehots = [F.one_hot(labels[g].long(), self.confusion_classes[g]).to(code.dtype) for g in self.given[q]]
        return torch.cat([code, *onehots], dim=1)

    def dependence_terms(self, z: Latent, labels, scale: float) -> dict[str, torch.Tensor]:
        """``moments`` and ``kernel``: the mean over the confusion pairs (q, a) of how much a's
        labels explain part q (0: independent), each times its weight and ``scale``."""
        p = self.params
        if self.part_white is not None and self.training:
            for q, w in self.part_white.items():
                w.update(z[q])
        use_memory = self.memory is not None and self.training
        if use_memory:
            batch_z, batch_labels = z, labels
            parts, labels = self.memory.with_memory({q: z[q] for q in self.part_names}, labels)
            z = Latent((q, parts[q]) for q in self.part_names)
        seen = {q: self._part_seen(z, q) for q in self.part_names}
        out = {}
        if p.moments > 0:
            terms = [label_dependence(seen[q], labels[a], self.confusion_classes[a]) for q, a in self.confusion_pairs]
            out["moments"] = scale * p.moments * sum(terms) / len(terms)
        if p.kernel > 0:  # the unbiased estimate, charged only above 0 (independence reads about 0)
            # one kernel per part, shared by its pairs (too few codes: the measure reads 0 without it)
            judged = dict.fromkeys(q for q, _ in self.confusion_pairs)
            kernels = {q: code_kernel(seen[q]) for q in judged} if len(seen[self.part_names[0]]) >= 4 else {}
            terms = [label_kernel_dependence(seen[q], labels[a], self.confusion_classes[a], unbiased=True,
                                             kernel=kernels.get(q)).clamp_min(0)
                     for q, a in self.confusion_pairs]
            out["kernel"] = scale * p.kernel * sum(terms) / len(terms)
        if use_memory:
            self.memory.remember({q: batch_z[q] for q in self.part_names}, batch_labels)
        return out

    def within_residuals(self, z: Latent, labels, update: bool) -> dict[str, torch.Tensor]:
        """Each attribute part flattened, minus the running centre of its own class (detached);
        with ``update`` the centres then move toward this batch's class means."""
        out = {}
        for q in self.attributes:
            x, y = z[q].flatten(1).float(), labels[q].long()
            centre, seen = getattr(self, f"centre_{q}"), getattr(self, f"centre_seen_{q}")
            if update:
                with torch.no_grad():
                    present = torch.unique(y)
                    means, _ = class_means(x.detach(), y, self.n_classes[q])
                    rate = torch.where(seen[present], self.params.within_momentum, 1.0)[:, None]
                    centre[present] += rate * (means[present] - centre[present])
                    seen[present] = True
            out[q] = x - centre[y]
        return out

    def within_terms(self, z: Latent, labels, scale: float) -> torch.Tensor:
        """``kernel_within``: the mean over the attribute parts' confusion pairs (q, a) of the
        unbiased kernel dependence of q's within-class residual on a's labels."""
        batch = self.within_residuals(z, labels, update=self.training)
        res, seen_labels = batch, labels
        if self.within_ring is not None and self.training:
            res, seen_labels = self.within_ring.with_memory(batch, labels)
            self.within_ring.remember({q: r.detach() for q, r in batch.items()}, labels)
        if len(next(iter(res.values()))) < 5:
            return next(iter(res.values())).sum() * 0.0
        res = {q: r / r.detach().std(0).clamp_min(1e-6) for q, r in res.items()}  # standardised per dim
        kernels = {q: code_kernel(r) for q, r in res.items()}
        terms = [label_kernel_dependence(res[q], seen_labels[a], self.confusion_classes[a], unbiased=True,
                                         kernel=kernels[q]).clamp_min(0) for q, a in self.within_pairs]
        return scale * self.params.kernel_within * sum(terms) / len(terms)

    def train_step(self, batch: Batch, step: int, total_steps: int) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        p = self.params
        x, labels = batch.image, batch.labels
        s = self.schedule(step, total_steps)

        # 1. classifiers C_m on real images only
        yield "classifiers", {"cls_real": sum(self._class_loss(self.classifiers[a](x), a, labels)
                                              for a in self.attributes) / len(self.attributes)}

        b = len(x)
        if p.identity_pairs > 0 and self._partners is None:
            raise RuntimeError("adversarial_attributes: identity_pairs > 0 but no dataset is bound (bind_dataset)")
        if self._partners is not None:  # encoded in one pass with the batch: the same norm statistics
            xp, labels_p = self.partners(batch, step)
            z_all, sample_all, kl = self.encode_stochastic(torch.cat([x, xp]))
            z, z_sample = z_all.index(slice(0, b)), sample_all.index(slice(0, b))
            labels_all = {a: torch.cat([labels[a], labels_p[a]]) for a in labels_p}
        else:
            z_all, labels_all = None, None
            z, z_sample, kl = self.encode_stochastic(x)
        x_rec = self.decode(z_sample)
        use_critic = self.critic is not None and s > 0 and step % p.critic_every == 0
        use_hybrid = s > 0 and (p.hybrid > 0 or use_critic)
        if use_hybrid:
            z_mix, perms, x_mix = self._hybrids(z_sample)

        # 2. WGAN-GP critic: real images against (detached) shuffled hybrids
        if use_critic:
            fake, real = x_mix.detach(), x[:len(x_mix)]
            yield "critic", {"wgan": self.critic(fake).mean() - self.critic(real).mean(),
                             "gp": p.gp * gradient_penalty(self.critic, real, fake)}

        # 3. optional MLP adversaries on detached codes
        if self.adversaries is not None:
            codes, seen_labels = {n: z[n].detach() for n in self.part_names}, labels
            if self.adversary_ring is not None:  # the batch and the remembered codes, then remember the batch
                codes, seen_labels = self.adversary_ring.with_memory(codes, labels)
                self.adversary_ring.remember({n: z[n].detach() for n in self.part_names}, labels)
            for _ in range(p.adversary_steps):  # logged adv_ce is the sum over these updates
                losses = [F.cross_entropy(head(self._adversary_input(q, codes[q], seen_labels)), seen_labels[a])
                          for q, a, head in self._adversary_heads()]
                yield "adversaries", {"adv_ce": sum(losses) / len(losses)}

        # 4. encoders and decoder
        out = {"rec": p.rec * reconstruction_loss(p.rec_loss, x_rec, x)}
        if kl is not None:
            out["kl"] = p.kl * kl
        if p.cls > 0:
            out["cls"] = p.cls * sum(self._class_loss(self.classifiers[a].head(z[a]), a, labels)
                                     for a in self.attributes) / len(self.attributes)
        if p.dis > 0 and s > 0:
            terms = [uniform_cross_entropy(self.classifiers[a].head(z[part])[:, :self.n_classes[a]])
                     for part in self.part_names for a in self.attributes if a != part]
            if terms:
                out["dis"] = s * p.dis * sum(terms) / len(terms)
        if self.adversaries is not None and p.adversary > 0 and s > 0:
            terms = [p.adversary_weights.get(f"{q}:{a}", 1.0) * uniform_cross_entropy(
                         head(self._adversary_input(q, z[q], labels)))
                     for q, a, head in self._adversary_heads()]
            out["dis_mlp"] = s * p.adversary * sum(terms) / len(terms)
        z_dep, labels_dep = (z, labels) if z_all is None else (z_all, labels_all)  # with partners
        if (p.moments > 0 or p.kernel > 0) and s > 0:
            out.update(self.dependence_terms(z_dep, labels_dep, s))
        if p.kernel_within > 0 and s > 0 and self.within_pairs:
            out["kernel_within"] = self.within_terms(z_dep, labels_dep, s)
        if p.identity_compact > 0 and s > 0 and z_all is not None:
            out["compact"] = s * p.identity_compact * within_class_share(
                self._part_seen(z_dep, "identity"), labels_dep["identity"], self.n_classes["identity"])
        if use_hybrid and p.hybrid > 0:
            out["hybrid"] = s * p.hybrid * self._hybrid_loss(x_mix, labels, perms)
        if self.carry:  # the reconstructions must show the carried labels too (the hybrids' ceiling)
            out["carry_rec"] = self._carry_rec_loss(x_rec, labels)
        if use_critic:
            out["adv"] = -s * p.adv * self.critic(x_mix).mean()
        if p.pair_swap > 0 and z_all is not None:  # x from its partner's identity part: a known answer
            out["pair_swap"] = self._pair_swap_loss(z_sample, sample_all["identity"][b:b + len(xp)], x)
        if use_hybrid and p.latent_cycle > 0:
            out["latent_cyc"] = s * p.latent_cycle * code_cycle_error(self.encode(x_mix), z_mix)
        yield "autoencoder", out
