"""scikit-learn's bundled 8x8 handwritten digits as an ImageDataset (no download needed).

A tiny real dataset for smoke tests and the quickest demos: 1,797 images, one attribute
("digit"), upsampled smoothly to the requested size.
"""
from __future__ import annotations

import numpy as np
import torch

from facefactors.data.specs import AttributeSpec, ImageDataset
from facefactors.errors import FacefactorsError


def load_digits_dataset(size: int = 32, seed: int = 0, test_fraction: float = 0.2,
                        channels: int = 1) -> ImageDataset:
    """Digits resized to ``size`` (bilinear), uint8 (N, channels, size, size); split stratified by digit."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    size, channels = int(size), int(channels)
    if not 8 <= size <= 1024:
        raise FacefactorsError(f"digits: size={size} must be between 8 and 1024")
    if channels not in (1, 3):
        raise FacefactorsError(f"digits: channels={channels} must be 1 or 3")
    if not 0.0 < float(test_fraction) < 1.0:
        raise FacefactorsError(f"digits: test_fraction={test_fraction} must be in (0, 1)")

    bunch = load_digits()
    raw = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)   # 0..16 -> 0..255
    target = bunch.target.astype(np.int64)
    resized = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
                        for im in raw]) if size != 8 else raw
    images = torch.from_numpy(np.ascontiguousarray(resized)).unsqueeze(1)
    if channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()

    idx = np.arange(len(target))
    train, test = train_test_split(idx, test_size=float(test_fraction), random_state=int(seed), stratify=target)
    spec = AttributeSpec("digit", "categorical", tuple(str(d) for d in range(10)))
    return ImageDataset(
        name="digits", images=images, labels={"digit": torch.from_numpy(target)},
        attributes={"digit": spec},
        splits={"train": np.sort(train).astype(np.int64), "test": np.sort(test).astype(np.int64)},
        meta={"config": {"size": size, "seed": int(seed), "test_fraction": float(test_fraction),
                         "channels": channels}, "source": "sklearn.datasets.load_digits"})
