"""Small datasets and configs shared by the trainer and CLI tests."""
from __future__ import annotations

import numpy as np
import torch

from facefactors.config import RunConfig, build_dataclass
from facefactors.data.specs import AttributeSpec, ImageDataset


def blobs_dataset(n: int = 96, size: int = 32, seed: int = 0) -> ImageDataset:
    """Coloured squares: 'colour' (3 classes) and 'place' (2 classes) — enough to train on in seconds."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 3, n)
    place = rng.integers(0, 2, n)
    img = np.zeros((n, 3, size, size), np.uint8)
    for i in range(n):
        y = 4 if place[i] == 0 else size // 2
        img[i, colour[i], y:y + size // 3, 4:4 + size // 3] = 220
    perm = rng.permutation(n)
    attrs = {"colour": AttributeSpec("colour", "categorical", ("r", "g", "b")),
             "place": AttributeSpec("place", "binary", ("top", "bottom"))}
    return ImageDataset("blobs", torch.from_numpy(img),
                        {"colour": torch.from_numpy(colour), "place": torch.from_numpy(place)},
                        attrs, {"train": np.sort(perm[: n * 3 // 4]), "test": np.sort(perm[n * 3 // 4:])})


def tiny_config(**train) -> RunConfig:
    base = {"seed": 3,
            "data": {"name": "digits", "size": 32},
            "model": {"method": "autoencoder", "attributes": ["colour"], "width": 8,
                      "part_dims": {"colour": 4, "rest": 4}},
            "train": {"steps": 6, "batch_size": 8, "log_every": 2, "checkpoint_every": 3, "preview_every": 0,
                      "progress": False, "keep_checkpoints": 10, **train}}
    return build_dataclass(RunConfig, base)
