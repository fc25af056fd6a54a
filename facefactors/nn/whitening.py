"""Whitening with running statistics, for terms that must see every direction of a code.

A dependence measure or an adversary fed raw codes is dominated by their high-variance
directions. Information kept in a direction of small variance (illumination riding on a 32-d
identity embedding whose spread is mostly between identities) moves such a term very little,
yet a fresh probe that standardises its input and fits any direction reads it. Whitening first
(ZCA with a running mean and covariance, detached from the graph) gives every direction unit
variance, so a per-dim measure on the whitened code is the multivariate one (the mean
between-class share becomes tr(S_b S_t^-1) / D), and shrinking a direction no longer hides what
it carries: the whitening scales it back up.
"""
from __future__ import annotations

import torch
from torch import nn


class RunningWhitening(nn.Module):
    """ZCA whitening of (B, D) codes by a running mean and covariance (buffers, so they are saved).

    ``update(x)`` folds a batch into the statistics: a plain average over the first
    ``1 / momentum`` batches, then an exponential moving average with ``momentum`` (the codes
    drift while the network trains). ``forward(x)`` returns (x - mean) C^-1/2 with
    C = cov + ``shrink`` * mean variance * I, which keeps the map bounded while the covariance
    is still rank-deficient (fewer samples seen than dims); a direction whose variance is far below
    ``shrink`` times the mean is scaled up only partly.
    """

    def __init__(self, dim: int, momentum: float = 0.05, shrink: float = 1e-3):
        super().__init__()
        if dim < 1 or not 0.0 < momentum <= 1.0 or shrink <= 0.0:
            raise ValueError(f"RunningWhitening needs dim >= 1, momentum in (0, 1] and shrink > 0 "
                             f"(got {dim}, {momentum}, {shrink})")
        self.momentum, self.shrink = momentum, shrink
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("cov", torch.eye(dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._matrix: torch.Tensor | None = None  # C^-1/2 of the current statistics, until they change

    def _load_from_state_dict(self, *args, **kwargs):
        self._matrix = None
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().flatten(1)
        if x.shape[0] < 2:
            return
        m = max(self.momentum, 1.0 / float(self.updates + 1))
        mean = x.mean(0)
        xc = x - mean
        with torch.autocast(x.device.type, enabled=False):  # statistics in fp32 under bf16 autocast
            cov = xc.T @ xc / (x.shape[0] - 1)
        self.mean.lerp_(mean, m)
        self.cov.lerp_(cov, m)
        self.updates += 1
        self._matrix = None

    @torch.no_grad()
    def matrix(self) -> torch.Tensor:
        """The symmetric whitening matrix C^-1/2 (D, D) of the current statistics (computed once per update)."""
        if self._matrix is not None and self._matrix.device == self.cov.device:
            return self._matrix
        d = self.cov.shape[0]
        c = self.cov + self.shrink * self.cov.diagonal().mean().clamp_min(1e-12) * torch.eye(d, device=self.cov.device)
        evals, evecs = torch.linalg.eigh(c)
        self._matrix = (evecs * evals.clamp_min(1e-12).rsqrt()) @ evecs.T
        return self._matrix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return (x.float().flatten(1) - self.mean) @ self.matrix()
