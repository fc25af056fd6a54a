"""Active units of a VAE code: the dims whose posterior mean varies over the data.

A unit whose mean barely moves from image to image (Burda et al. 2016 call it inactive when the
variance of E[z_u | x] over the data is below 0.01, against the prior's 1) is posterior noise:
the decoder is trained on samples whose noise there is ~30 times the signal, so it cannot read
it. Yet the small signal left in such means is a linear readout of the encoder's shared
features, and a probe that standardises its input reads it at full strength. ``ActiveUnits``
keeps running per-dim statistics of the means during training (buffers, so they are saved and
resume is exact) and gives the mask of units above the threshold, so a method can return the
inactive units at the prior mean, 0.

With ``relative`` the criterion is the unit's signal-to-noise ratio instead: the variance of its
mean over the data over its mean posterior variance. That is what the decoder, which sees
samples, can read of the unit (a Gaussian channel carries 0.5 ln(1 + SNR) nats), whatever the
scale the encoder gives it; a variance of 0.05 is a busy unit when the posterior sd is 0.1 and
noise when it is 1.
"""
from __future__ import annotations

import torch
from torch import nn


class ActiveUnits(nn.Module):
    """Running mean and variance of (B, D) posterior means; ``mask()`` is 1 where the variance
    exceeds ``threshold``. The statistics are a plain average over the first ``1 / momentum``
    batches, then an exponential moving average (the encoder drifts while it trains). With
    ``relative`` the threshold applies to ``snr()`` and the posterior variance is tracked too
    (buffer ``noise``; ``update`` then needs the log-variances)."""

    def __init__(self, dim: int, threshold: float = 0.01, momentum: float = 0.01, relative: bool = False):
        super().__init__()
        if threshold <= 0 or not 0 < momentum <= 1:
            raise ValueError(f"active units need threshold > 0 and momentum in (0, 1], got {threshold}, {momentum}")
        self.threshold, self.momentum, self.relative = float(threshold), float(momentum), bool(relative)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("second", torch.zeros(dim))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        if self.relative:
            self.register_buffer("noise", torch.ones(dim))

    @torch.no_grad()
    def update(self, mu: torch.Tensor, logvar: torch.Tensor | None = None) -> None:
        if self.relative and logvar is None:
            raise ValueError("relative active units need the posterior log-variances")
        mu = mu.detach().float().flatten(1)
        w = max(self.momentum, 1.0 / (int(self.seen) + 1))
        self.mean.lerp_(mu.mean(0), w)
        self.second.lerp_(mu.pow(2).mean(0), w)
        if self.relative:
            self.noise.lerp_(logvar.detach().float().flatten(1).exp().mean(0), w)
        self.seen.add_(1)

    def variance(self) -> torch.Tensor:
        return (self.second - self.mean.pow(2)).clamp_min(0)

    def snr(self) -> torch.Tensor:
        """Variance of each unit's mean over its mean posterior variance (needs ``relative``)."""
        if not self.relative:
            raise ValueError("snr() needs relative active units (the posterior variance is not tracked)")
        return self.variance() / self.noise.clamp_min(1e-12)

    def mask(self) -> torch.Tensor:
        """1.0 for active units, 0.0 for inactive ones; all 1 before any update."""
        if int(self.seen) == 0:
            return torch.ones_like(self.mean)
        return ((self.snr() if self.relative else self.variance()) > self.threshold).to(self.mean.dtype)
