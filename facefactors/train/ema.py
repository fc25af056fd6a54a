"""An exponential moving average of a model's weights, for evaluation (``train.ema``).

Averaging the weights over the last few hundred steps smooths out the optimiser's noise, which
GANs and autoencoders trained with adversaries show most (the averaged generator of Karras et al.,
Yazici et al. 2019). Training never reads the average, so it changes no training step: a run
with ``train.ema`` on follows exactly the trajectory it follows with it off, and one checkpoint
holds both weight sets (``model/`` live, ``ema/`` averaged). ``load_run`` evaluates the average
where a checkpoint has one.

The average covers the whole state dict: parameters and floating buffers (BatchNorm's running
statistics, so they match the averaged weights); integer buffers (counters) are copied. The
rate warms up as ``min(decay, (1 + t) / (10 + t))`` at update ``t``, so early, random weights
fade quickly even with a long horizon.

Not ``torch.optim.swa_utils.AveragedModel``: it deep-copies the module, and our methods hold the
training images on the module (partner sampling), which would double the memory.
"""
from __future__ import annotations

import torch
from torch import nn

from facefactors.errors import FacefactorsError


class WeightAverage:
    """The averaged state of ``model`` (a dict of tensors shaped like its state dict)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise FacefactorsError(f"train.ema={decay} must be in (0, 1) (0 switches it off)")
        self.decay = float(decay)
        self.reset(model)

    def reset(self, model: nn.Module) -> None:
        """Start the average at ``model``'s current weights. The state dict's tensors share the
        parameters' and buffers' storage (updated in place), so they are gathered once here."""
        live = model.state_dict()
        self.shadow = {k: v.detach().clone() for k, v in live.items()}
        pairs = [(self.shadow[k], live[k].detach()) for k in self.shadow]
        self._floats = ([e for e, _ in pairs if e.is_floating_point()], [v for e, v in pairs if e.is_floating_point()])
        self._others = [(e, v) for e, v in pairs if not e.is_floating_point()]

    def rate(self, t: int) -> float:
        """The share of the old average kept at update ``t`` (0-based)."""
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, t: int) -> None:
        """Fold the model's current weights in (update ``t``, 0-based)."""
        for e, v in self._others:
            e.copy_(v)
        if self._floats[0]:
            torch._foreach_lerp_(*self._floats, 1.0 - self.rate(t))

    def tensors(self) -> dict[str, torch.Tensor]:
        """For a checkpoint."""
        return {k: v.detach().cpu().contiguous() for k, v in self.shadow.items()}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore from a checkpoint's ``ema/`` tensors (same keys and shapes as the shadow)."""
        if set(tensors) != set(self.shadow):
            raise FacefactorsError("the checkpoint's averaged weights do not fit this model")
        for k, e in self.shadow.items():
            e.copy_(tensors[k])
