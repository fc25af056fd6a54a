"""D2AE: identity distilling and dispelling autoencoder (Liu et al., CVPR 2018).

A shared conv trunk feeds two branches (3 conv layers, global average pool, FC; 256-d by
default) giving f_T (latent part named after the modelled attribute, ``identity``) and f_P
(part ``rest``); the decoder reconstructs the image from [f_T, f_P]. Identity is the only
label used. Losses (paper Eq. 1-6):

- ``id_ce`` (L_T, weight ``identity`` = lambda_T): softmax identity cross-entropy on f_T;
  updates branch T, the trunk and the identity head.
- ``adv_ce`` (L_T^adv, weight ``adv`` = lambda_P): an identity classifier on the *detached*
  f_P, in its own optimiser group, so it never updates the encoder.
- ``confusion`` (L_H, weight ``confusion`` = lambda_P): cross-entropy between the uniform
  distribution and that classifier's posterior on f_P, back-propagated to branch P and the
  trunk through a *frozen* copy of the classifier (its parameters are detached), so it never
  updates the classifier. The uniform target covers the identities seen in training so far
  (a buffer), since held-out identities have no training images to be confused with.
- ``rec`` (L_X, weight ``rec`` = lambda_X): reconstruction from the clean features.
- ``rec_aug`` (augmented L_X, weight ``rec_aug``): reconstruction from statistically
  augmented features f + eps * sigma (Eq. 5), eps ~ N(0, 1), sigma the running per-channel
  standard deviation of each feature, kept as a buffer with batch-norm style momentum (so it
  is saved in checkpoints and bounds edits at evaluation time). With augmentation on, L_T,
  L_T^adv and L_H also see the augmented features ("the loss functions ... can be
  straightforwardly modified by the augmented features", Sec. 3.4).

Every weight can be 0 (the paper's Table 1 ablations are configs); ``augment: false``
switches augmentation off. ``h_updates_classifier: true`` reproduces the paper's
"w/o L_T^adv" row, where L_H also updates the identity classifier (the degenerate case the
paper warns about).

Weights. The paper uses lambda_T = 1, lambda_P = 0.1 and lambda_X = 1.81e-5 on
L_X = 1/2 * ||x - x_rec||^2 summed over 235 x 235 x 3 values, i.e. lambda_X * L_X =
1.81e-5 * 0.5 * 165675 * MSE ~= 1.5 x the per-pixel mean squared error. Our ``rec`` weighs
the per-pixel mean MSE of images in [-1, 1] (size independent), so ``rec: 1.5`` is the
paper's weight (with the usual (x - 127.5) / 128 input scaling; 0.375 if the paper's pixels
were in [0, 1]). The SynthFaces configs keep it: short CPU trials with 5 and 20 gave no
better reconstructions and a less discriminative identity feature.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from facefactors.data.specs import Batch
from facefactors.latent import Latent
from facefactors.methods.adversarial_attributes import uniform_cross_entropy
from facefactors.methods.autoencoder import reconstruction_loss
from facefactors.methods.base import Method, MethodParams, ModelSetup, OptimizerSpec, warmup_ramp
from facefactors.methods.registry import register
from facefactors.nn.blocks import norm_layer
from facefactors.nn.classifiers import MLPHead
from facefactors.nn.decoders import VectorDecoder
from facefactors.nn.encoders import ConvTrunk

DEFAULT_FEATURE_DIM = 256


@dataclass
class D2AEParams(MethodParams):
    lr: float = 1e-3                    # encoder, decoder, identity head (paper: SGD 0.01)
    betas: tuple[float, float] = (0.9, 0.999)
    optimizer: str = "adam"             # adam | sgd (the paper's solver, with ``momentum``)
    momentum: float = 0.9
    adversary_lr: float = 1e-3
    identity: float = 1.0               # lambda_T: L_T
    adv: float = 0.1                    # lambda_P: L_T^adv (trains the classifier on detached f_P)
    confusion: float = 0.1              # lambda_P: L_H (uniform posterior through the frozen classifier)
    rec: float = 1.5                    # lambda_X: L_X on per-pixel mean MSE in [-1, 1] (see module doc)
    rec_aug: float = 1.5                # lambda_X: augmented L_X
    rec_loss: str = "mse"               # mse | l1
    augment: bool = True                # statistical augmentation f + eps * sigma
    aug_scale: float = 1.0              # multiplies sigma (1 = the paper)
    std_momentum: float = 0.1           # running-std momentum (batch-norm style)
    adversary_hidden: int = 0           # 0: linear classifier as in the paper; >0: one hidden layer
    h_updates_classifier: bool = False  # the paper's "w/o L_T^adv" ablation: L_H also trains the classifier
    warmup: float = 0.0                 # fraction of training before L_H starts
    ramp: float = 0.0                   # fraction of training over which L_H ramps to full weight


def branch(in_channels: int, out_dim: int, norm: str) -> nn.Sequential:
    """B_theta: three conv layers (the first halves the trunk's map, cheap on CPU), global average pool, FC."""
    c = in_channels

    def conv(k: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(c, c, k, stride, (k - stride + 1) // 2, bias=norm == "none"), norm_layer(norm, c),
                nn.LeakyReLU(0.2, inplace=True)]

    return nn.Sequential(*conv(4, 2), *conv(3, 1), *conv(3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(c, out_dim))


def frozen_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with its parameters detached: gradients reach ``x`` but never the module."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    return torch.func.functional_call(module, params, (x,))


def seen_uniform_cross_entropy(logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to the uniform distribution over the ``seen`` classes (all when none are marked)."""
    if bool(seen.any()) and not bool(seen.all()):
        logits = logits[:, seen]
    return uniform_cross_entropy(logits)


@register
class D2AE(Method):
    name = "d2ae"
    summary = ("Liu et al.: identity distilling (f_T, softmax CE) and dispelling (f_P, adversarial uniform "
               "posterior) branches, autoencoder with statistical augmentation.")
    Params = D2AEParams

    def __init__(self, setup: ModelSetup, params: D2AEParams):
        super().__init__(setup, params)
        p = params
        if len(setup.attributes) != 1 or not setup.attributes[0].discrete:
            got = [a.name for a in setup.attributes]
            raise ValueError(f"d2ae models exactly one categorical attribute (identity), got model.attributes={got}")
        if p.optimizer not in ("adam", "sgd"):
            raise ValueError(f"method.optimizer={p.optimizer!r}: use adam or sgd")
        if p.rec_loss not in ("mse", "l1"):
            raise ValueError(f"method.rec_loss={p.rec_loss!r}: use mse or l1")
        if not 0.0 < p.std_momentum <= 1.0:
            raise ValueError(f"method.std_momentum={p.std_momentum!r} must be in (0, 1]")
        if not (p.identity > 0 or p.confusion > 0 or p.rec > 0 or (p.augment and p.rec_aug > 0)):
            raise ValueError("every encoder loss weight (identity, confusion, rec, rec_aug) is 0: nothing to train")
        spec = setup.attributes[0]
        self.id_part = spec.name
        self.n_ids = spec.num_classes
        unknown = set(setup.part_dims) - {self.id_part, "rest"}
        if unknown:
            raise ValueError(f"part_dims names unknown parts {sorted(unknown)}; parts are {[self.id_part, 'rest']}")
        self.dims = {self.id_part: int(setup.part_dims.get(self.id_part, DEFAULT_FEATURE_DIM)),
                     "rest": int(setup.part_dims.get("rest", DEFAULT_FEATURE_DIM))}
        trunk_size = 8 if setup.image_size >= 16 else setup.image_size
        self.trunk = ConvTrunk(setup.image_size, setup.channels, setup.width, trunk_size, setup.norm)
        c = self.trunk.out_channels
        self.branch_t = branch(c, self.dims[self.id_part], setup.norm)
        self.branch_p = branch(c, self.dims["rest"], setup.norm)
        self.decoder = VectorDecoder(setup.image_size, setup.channels, sum(self.dims.values()), setup.width,
                                     setup.norm)
        self.id_head = nn.Linear(self.dims[self.id_part], self.n_ids)
        needs_adversary = p.adv > 0 or p.confusion > 0
        self.adversary = MLPHead(self.dims["rest"], self.n_ids, p.adversary_hidden) if needs_adversary else None
        self.register_buffer("std_t", torch.ones(self.dims[self.id_part]))
        self.register_buffer("std_p", torch.ones(self.dims["rest"]))
        self.register_buffer("std_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen", torch.zeros(self.n_ids, dtype=torch.bool))

    # ------------------------------------------------------------------ the model
    @property
    def part_names(self) -> list[str]:
        return [self.id_part, "rest"]

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.branch_t(h), self.branch_p(h)

    def encode(self, x: torch.Tensor) -> Latent:
        f_t, f_p = self.features(x)
        return Latent({self.id_part: f_t, "rest": f_p})

    def decode(self, z: Latent) -> torch.Tensor:
        return self.decoder(torch.cat([z[self.id_part], z["rest"]], dim=1))

    def feature_std(self) -> dict[str, torch.Tensor]:
        """The learned (running) per-channel standard deviation of each part (Sec. 3.4; bounds edits)."""
        return {self.id_part: self.std_t.detach().clone(), "rest": self.std_p.detach().clone()}

    # ------------------------------------------------------------------ augmentation
    @torch.no_grad()
    def _update_std(self, f_t: torch.Tensor, f_p: torch.Tensor) -> None:
        if f_t.shape[0] < 2:
            return
        m = 1.0 if int(self.std_updates) == 0 else self.params.std_momentum
        for buf, f in ((self.std_t, f_t), (self.std_p, f_p)):
            buf.lerp_(f.detach().float().std(dim=0), m)
        self.std_updates += 1

    def augment(self, f: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """f + eps * sigma with eps ~ N(0, 1) per element (Eq. 5)."""
        return f + torch.randn_like(f) * (self.params.aug_scale * std).to(f.dtype)

    # ------------------------------------------------------------------ training
    def optimizers(self) -> dict[str, OptimizerSpec]:
        p = self.params
        kind = dict(kind=p.optimizer, betas=p.betas, momentum=p.momentum if p.optimizer == "sgd" else 0.0)
        groups = {}
        adversary_params = list(self.adversary.parameters()) if self.adversary is not None else []
        if adversary_params and p.adv > 0:
            groups["adversary"] = OptimizerSpec(adversary_params, p.adversary_lr, **kind)
        main = [prm for mod in (self.trunk, self.branch_t, self.branch_p, self.decoder, self.id_head)
                for prm in mod.parameters()]
        if p.h_updates_classifier and adversary_params:
            main += adversary_params
        groups["autoencoder"] = OptimizerSpec(main, p.lr, **kind)
        return groups

    def schedule(self, step: int, total_steps: int) -> float:
        """Multiplier of L_H: 0 during warm-up, then a linear ramp to 1."""
        return warmup_ramp(step, total_steps, self.params.warmup, self.params.ramp)

    def train_step(self, batch: Batch, step: int, total_steps: int) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        p = self.params
        x, y = batch.image, batch.labels[self.id_part]
        self.seen[y] = True
        f_t, f_p = self.features(x)
        if p.augment:
            if self.training:
                self._update_std(f_t, f_p)
            ft_a, fp_a = self.augment(f_t, self.std_t), self.augment(f_p, self.std_p)
        else:
            ft_a, fp_a = f_t, f_p

        # 1. the identity classifier on detached f_P (L_T^adv): never reaches the encoder
        if self.adversary is not None and p.adv > 0:
            yield "adversary", {"adv_ce": p.adv * F.cross_entropy(self.adversary(fp_a.detach()).float(), y)}

        # 2. encoder, decoder and identity head
        out: dict[str, torch.Tensor] = {}
        if p.identity > 0:
            out["id_ce"] = p.identity * F.cross_entropy(self.id_head(ft_a).float(), y)
        s = self.schedule(step, total_steps)
        if self.adversary is not None and p.confusion > 0 and s > 0:
            logits = self.adversary(fp_a) if p.h_updates_classifier else frozen_forward(self.adversary, fp_a)
            out["confusion"] = s * p.confusion * seen_uniform_cross_entropy(logits, self.seen)
        if p.rec > 0:
            out["rec"] = p.rec * reconstruction_loss(p.rec_loss, self.decoder(torch.cat([f_t, f_p], 1)), x)
        if p.augment and p.rec_aug > 0:
            out["rec_aug"] = p.rec_aug * reconstruction_loss(p.rec_loss, self.decoder(torch.cat([ft_a, fp_a], 1)), x)
        yield "autoencoder", out
