"""Deterministic batch order: the batch of step k is a pure function of (seed, k).

Epochs are seeded permutations of the training indices, so resuming at step k needs
no data-loader state, and under torchrun each process takes its slice of the same
global batch.
"""
from __future__ import annotations

import numpy as np
import torch


class EpochSampler:
    def __init__(self, indices: np.ndarray, batch_size: int, seed: int):
        if len(indices) == 0:
            raise ValueError("no training images")
        self.indices = np.asarray(indices)
        self.batch_size = batch_size
        self.seed = seed
        self._cache: tuple[int, np.ndarray] | None = None

    def _perm(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = (epoch, self.indices[torch.randperm(len(self.indices), generator=g).numpy()])
        return self._cache[1]

    def global_batch(self, step: int) -> np.ndarray:
        n = len(self.indices)
        pos = step * self.batch_size
        out = []
        while len(out) < self.batch_size:
            epoch, offset = divmod(pos, n)
            take = min(self.batch_size - len(out), n - offset)
            out.extend(self._perm(epoch)[offset:offset + take])
            pos += take
        return np.asarray(out)

    def local_batch(self, step: int, rank: int, world_size: int) -> np.ndarray:
        return self.global_batch(step)[rank::world_size]
