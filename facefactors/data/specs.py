"""Attribute specifications and the in-memory dataset every loader returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping

import numpy as np
import torch

from facefactors.errors import FacefactorsError

Kind = Literal["categorical", "binary", "continuous"]


@dataclass(frozen=True)
class AttributeSpec:
    """A labelled attribute: its name, kind and (for discrete kinds) class names.

    ``identity_linked`` marks attributes fixed by identity (skin tone, hair colour),
    so evaluation can tell them apart from identity-independent ones.
    """

    name: str
    kind: Kind
    classes: tuple[str, ...] = ()
    identity_linked: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.kind != "continuous" else 0

    @property
    def discrete(self) -> bool:
        return self.kind in ("categorical", "binary")


@dataclass
class Batch:
    """A training/evaluation batch: images in [-1, 1] (B, C, H, W) and labels."""

    image: torch.Tensor
    labels: dict[str, torch.Tensor]
    index: torch.Tensor

    def to(self, device: torch.device | str, channels_last: bool = False) -> "Batch":
        img = self.image.to(device, non_blocking=True)
        if channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        return Batch(img, {k: v.to(device, non_blocking=True) for k, v in self.labels.items()},
                     self.index.to(device))


def to_float_image(u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [-1, 1]."""
    return u8.float().div_(127.5).sub_(1.0)


def to_uint8_image(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] (B, C, H, W) -> uint8, rounded and clamped."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


@dataclass
class ImageDataset:
    """Images kept as one uint8 tensor in memory, with labels, splits and (optionally) factors.

    images:  uint8 (N, C, H, W)
    labels:  attribute name -> tensor (N,), int64 for discrete kinds, float32 for continuous
    splits:  split name ('train', 'test', optionally 'unseen') -> int64 index array
    factors: procedural datasets only: every generative factor, enough for ``renderer``
    renderer: factors -> uint8 (N, H, W, C) images, bit-exact with ``images``
    factor_groups: attribute name -> the factor columns that attribute owns (counterfactuals)
    factor_hidden: factor column -> {label name: label values for which the factor does not show
        in the image} (a neutral face has no expression intensity); correlations with that factor
        skip those rows, since nothing can read it back from them
    """

    name: str
    images: torch.Tensor
    labels: dict[str, torch.Tensor]
    attributes: dict[str, AttributeSpec]
    splits: dict[str, np.ndarray]
    factors: dict[str, np.ndarray] | None = None
    renderer: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None
    factor_groups: dict[str, list[str]] = field(default_factory=dict)
    factor_hidden: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def split(self, name: str) -> np.ndarray:
        if name not in self.splits:
            raise FacefactorsError(
                f"unknown split {name!r} for dataset {self.name!r}; available: {', '.join(self.splits)}")
        return self.splits[name]

    def attribute(self, name: str) -> AttributeSpec:
        if name not in self.attributes:
            raise FacefactorsError(
                f"unknown attribute {name!r} for dataset {self.name!r}; available: {', '.join(self.attributes)}")
        return self.attributes[name]

    def batch(self, index: np.ndarray | torch.Tensor) -> Batch:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return Batch(to_float_image(self.images[idx]), {k: v[idx] for k, v in self.labels.items()}, idx)

    def factor_rows(self, index: np.ndarray) -> dict[str, np.ndarray]:
        if self.factors is None:
            raise FacefactorsError(f"dataset {self.name!r} has no generative factors")
        return {k: v[index] for k, v in self.factors.items()}
