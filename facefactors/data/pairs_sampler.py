"""Same-class and different-class partners for training pairs (cycle-consistent VAE and the like).

Two ways to find a partner for every image of a batch:

- ``PairSampler``: from a pool of dataset indices (the train split), drawn as a pure function of
  ``(seed, step, salt)`` like ``train/sampler.py``, so a resumed run draws the same partners.
  Vectorised: the pool is sorted by label once; a same-class partner is a uniform draw from the
  anchor's class block, skipping the anchor itself; a different-class partner a uniform draw
  from everything outside that block.
- ``in_batch_partners``: within the batch itself (no dataset needed): each image picks a random
  other image of the batch with the same (or a different) label, falling back to itself when
  the batch has none.

Where no partner exists (a class of one image, a pool of one class) the anchor is its own
partner, and ``found`` says which anchors were paired properly.
"""
from __future__ import annotations

import numpy as np
import torch

from facefactors.data.specs import to_float_image
from facefactors.errors import FacefactorsError


def fetch_like(images: torch.Tensor, idx: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """Dataset images ``images[idx]`` (uint8) as floats with ``like``'s device, dtype and memory
    format (partners drawn by a sampler, next to the batch they join)."""
    x = to_float_image(images[torch.from_numpy(np.asarray(idx, dtype=np.int64))]).to(like.device, like.dtype)
    if like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class PairSampler:
    """Partners for anchors, drawn from ``pool`` (dataset indices) by the labels ``labels[pool]``.

    ``labels`` covers the whole dataset (indexed by dataset index). Anchors need not be in the
    pool: their class is looked up in ``labels``; an anchor of a class absent from the pool gets
    itself as a same-class partner.
    """

    def __init__(self, labels: np.ndarray | torch.Tensor, pool: np.ndarray, seed: int = 0):
        labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        labels = labels.reshape(-1)
        pool = np.asarray(pool, dtype=np.int64).reshape(-1)
        if len(pool) == 0:
            raise FacefactorsError("pair sampler: the pool of images is empty")
        if pool.min() < 0 or pool.max() >= len(labels):
            raise FacefactorsError(f"pair sampler: pool indexes outside the {len(labels)} labels")
        if not np.issubdtype(labels.dtype, np.integer):
            raise FacefactorsError(f"pair sampler: labels must be class indices, got {labels.dtype}")
        self.labels = labels.astype(np.int64)
        self.seed = int(seed)
        order = np.argsort(self.labels[pool], kind="stable")
        self.sorted = pool[order]                               # pool grouped by class
        sorted_labels = self.labels[self.sorted]
        self.classes, self.start, self.count = np.unique(sorted_labels, return_index=True, return_counts=True)
        # position of every pool image inside its class block (-1: not in the pool)
        self.rank = np.full(len(labels), -1, np.int64)
        self.rank[self.sorted] = np.arange(len(pool)) - np.repeat(self.start, self.count)

    def _rng(self, step: int, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 17, int(step), int(salt)])

    def _class_block(self, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, count, present) of each anchor's class block; count 0 where the class is absent."""
        lab = self.labels[anchors]
        pos = np.clip(np.searchsorted(self.classes, lab), 0, len(self.classes) - 1)
        present = self.classes[pos] == lab
        return np.where(present, self.start[pos], 0), np.where(present, self.count[pos], 0), present

    def same(self, anchors: np.ndarray, step: int, salt: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """A random other pool image of each anchor's class: (partners, found)."""
        anchors = np.asarray(anchors, dtype=np.int64).reshape(-1)
        start, count, _ = self._class_block(anchors)
        rank = self.rank[anchors]
        in_pool = rank >= 0
        others = count - in_pool.astype(np.int64)          # candidates that are not the anchor
        u = self._rng(step, salt).random(len(anchors))
        r = np.floor(u * np.maximum(others, 1)).astype(np.int64)
        r = np.where(in_pool & (r >= rank), r + 1, r)       # skip the anchor's own slot
        found = others > 0
        partners = np.where(found, self.sorted[np.minimum(start + r, len(self.sorted) - 1)], anchors)
        return partners, found

    def different(self, anchors: np.ndarray, step: int, salt: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """A random pool image of another class for each anchor: (partners, found)."""
        anchors = np.asarray(anchors, dtype=np.int64).reshape(-1)
        start, count, _ = self._class_block(anchors)
        outside = len(self.sorted) - count
        u = self._rng(step, salt).random(len(anchors))
        r = np.floor(u * np.maximum(outside, 1)).astype(np.int64)
        r = np.where(r >= start, r + count, r)              # jump over the anchor's class block
        found = outside > 0
        partners = np.where(found, self.sorted[np.minimum(r, len(self.sorted) - 1)], anchors)
        return partners, found


def in_batch_partners(labels: torch.Tensor, different: bool = False,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row, the batch position of a random other row with the same label (``different``:
    another label); itself when there is none. Returns (positions (B,), found (B,) bool)."""
    labels = labels.reshape(-1)
    b = labels.shape[0]
    eq = labels[:, None] == labels[None, :]
    valid = ~eq if different else eq & ~torch.eye(b, dtype=torch.bool, device=labels.device)
    scores = torch.rand(b, b, generator=generator).to(labels.device)
    scores = torch.where(valid, scores, torch.full_like(scores, -1.0))
    best = scores.argmax(dim=1)
    found = valid.any(dim=1)
    return torch.where(found, best, torch.arange(b, device=labels.device)), found
