"""Encode dataset splits into flat numpy arrays (latents, labels, factors) and save them.

Every metric reads these arrays, never a method's internals, so one evaluator serves
every method. The helpers here also run batched encode/decode in inference mode for
the counterfactual, reconstruction and grid code.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Mapping

import numpy as np
import torch
from torch import nn

from facefactors.data.specs import ImageDataset, to_float_image, to_uint8_image
from facefactors.errors import FacefactorsError
from facefactors.io import atomic_path
from facefactors.latent import Latent


@contextmanager
def inference(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` and ``torch.no_grad()`` for the block; every submodule's
    training flag is restored afterwards (some methods keep frozen parts in eval)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for m, training in modes:
            m.training = training


def _model_device(device: str | torch.device | None) -> torch.device:
    return torch.device(device or "cpu")


def as_nchw_uint8(images) -> torch.Tensor:
    """uint8 images as a (N, C, H, W) tensor: torch tensors are taken as NCHW,
    numpy arrays as NHWC (the renderer's layout)."""
    if isinstance(images, torch.Tensor):
        t = images
    else:
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[..., None]
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
    if t.dtype != torch.uint8:
        raise FacefactorsError(f"expected uint8 images, got {t.dtype}")
    if t.ndim != 4:
        raise FacefactorsError(f"expected a batch of images (N, C, H, W), got shape {tuple(t.shape)}")
    return t


def encode_images(model, images: torch.Tensor, batch_size: int = 256,
                  device: str | torch.device = "cpu") -> Latent:
    """Encode uint8 (N, C, H, W) images in batches; the Latent comes back on the CPU."""
    dev = _model_device(device)
    images = as_nchw_uint8(images)
    out = []
    with inference(model):
        for start in range(0, images.shape[0], batch_size):
            x = to_float_image(images[start:start + batch_size].to(dev))
            out.append(model.encode(x).map(lambda t: t.detach().float().cpu()))
    if not out:
        raise FacefactorsError("nothing to encode: no images given")
    return Latent.cat(out)


def decode_latent(model, z: Latent, batch_size: int = 256, device: str | torch.device = "cpu") -> torch.Tensor:
    """Decode a (CPU) Latent in batches to float images in [-1, 1], (N, C, H, W), on the CPU."""
    dev = _model_device(device)
    out = []
    with inference(model):
        for start in range(0, z.batch_size, batch_size):
            part = z.index(slice(start, start + batch_size)).to(dev)
            out.append(model.decode(part).detach().float().clamp(-1, 1).cpu())
    return torch.cat(out)


def decode_uint8(model, z: Latent, batch_size: int = 256, device: str | torch.device = "cpu") -> torch.Tensor:
    """Decode to uint8 (N, C, H, W)."""
    return to_uint8_image(decode_latent(model, z, batch_size, device))


def encode_split(model, ds: ImageDataset, indices, batch_size: int = 256,
                 device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """Encode ``ds.images[indices]`` and gather what the metrics need.

    Keys: ``part/<name>`` (N, d) float32 (map parts flattened), ``label/<attribute>``
    for every label, ``factor/<column>`` when the dataset has factors, and ``index``
    (the dataset indices, int64).
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise FacefactorsError(f"no images to encode from dataset {ds.name!r}")
    z = encode_images(model, ds.images[torch.from_numpy(idx)], batch_size, device)
    arrays: dict[str, np.ndarray] = {}
    for name in z.parts:
        flat = z.flat(name).numpy().astype(np.float32, copy=False)
        if not np.isfinite(flat).all():
            raise FacefactorsError(f"latent part {name!r} has non-finite values (NaN/inf); is the model diverged?")
        arrays[f"part/{name}"] = flat
    tidx = torch.from_numpy(idx)
    for name, values in ds.labels.items():
        arrays[f"label/{name}"] = values[tidx].cpu().numpy()
    if ds.factors is not None:
        for col, values in ds.factors.items():
            arrays[f"factor/{col}"] = np.asarray(values)[idx]
    arrays["index"] = idx
    return arrays


def parts_of(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Part names in an ``encode_split`` result, in order."""
    return [k[len("part/"):] for k in arrays if k.startswith("part/")]


def save_latents(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write the arrays to an uncompressed ``.npz`` atomically (keys keep their ``/``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
            f.flush()
            os.fsync(f.fileno())


def load_latents(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read back what ``save_latents`` wrote."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
