"""Decoder polishing (``train.polish``): a last phase that trains the decoder alone on the frozen
encoder's deterministic codes.

During the main schedule a stochastic code's decoder learns from noisy samples, and in methods
with adversaries, critics and swaps its reconstruction gradient competes with all of them for
the shared rate; evaluation, transfers and every downstream use decode the code's mean. After
the main schedule, this phase freezes everything but ``Method.polish_modules()`` (in eval mode,
so encoder norm statistics stay as evaluation sees them) and trains those on
``Method.polish_step``: by default the mean-squared error of reconstructions from ``encode``,
whose codes no gradient reaches. The codes, and so every probe, leakage and retrieval figure read
from them, are exactly the main phase's; only what is drawn from them changes.

The phase has its own Adam (fresh moments; its state is checkpointed, so resume is exact) and its
own rate: ``lr``, decayed on a cosine to ``lr_final`` x ``lr`` over the phase. The run's
``train.steps`` are the main phase; the run ends at ``steps + polish.steps``. A time budget covers
both phases: size ``train.steps`` so that the polish phase fits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from facefactors.errors import FacefactorsError

GROUP = "polish"


@dataclass
class PolishConfig:
    steps: int = 0          # steps of the polish phase after train.steps; 0 = off
    lr: float = 1.0e-4      # Adam rate at the phase's start
    lr_final: float = 0.1   # the rate at its last step, as a multiple of lr (cosine); 1 = constant

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise FacefactorsError(f"train.polish.steps={self.steps} must be >= 0 (0 switches the phase off)")
        if not self.lr > 0:
            raise FacefactorsError(f"train.polish.lr={self.lr} must be > 0")
        if not 0.0 <= self.lr_final <= 1.0:
            raise FacefactorsError(f"train.polish.lr_final={self.lr_final} must be in [0, 1]")

    @property
    def active(self) -> bool:
        return self.steps > 0

    def rate(self, t: int) -> float:
        """The learning rate at polish step ``t`` (0-based): a pure function of the step, so
        resume continues the same curve."""
        frac = min(max(t / max(self.steps - 1, 1), 0.0), 1.0)
        return self.lr * (self.lr_final + (1.0 - self.lr_final) * 0.5 * (1.0 + math.cos(math.pi * frac)))
