"""Read and write single image files (PNG/JPEG) for the command line.

Images enter the library as uint8 (C, H, W) tensors of exactly the size a model was trained
at: a size mismatch is an error, never a silent resize, so users know what they fed in.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from facefactors.errors import FacefactorsError
from facefactors.io import write_bytes


def load_image(path: str | os.PathLike, size: int | tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Load an image file as uint8 (channels, H, W); ``size`` is H = W or (H, W)."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if channels not in (1, 3):
        raise FacefactorsError(f"{p}: channels={channels} must be 1 or 3")
    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if not p.is_file():
        raise FacefactorsError(f"image file not found: {p}")
    try:
        with Image.open(p) as im:
            im.load()
            found = (im.height, im.width)
            if found != (h, w):
                raise FacefactorsError(f"{p}: image is {found[1]}x{found[0]} pixels but the model expects "
                                       f"{w}x{h}; resize or crop it first")
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))   # flatten transparency on white
                im = Image.alpha_composite(bg, im)
            im = im.convert("L" if channels == 1 else "RGB")
            arr = np.array(im, dtype=np.uint8)
    except FacefactorsError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise FacefactorsError(f"{p}: not a readable image file ({e.__class__.__name__}: {e})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def save_image(path: str | os.PathLike, image) -> None:
    """Save a uint8 image, (C, H, W) or (H, W, C) tensor/array with C in {1, 3}, atomically.

    The format follows the suffix (.png, .jpg/.jpeg); anything else is written as PNG.
    """
    from PIL import Image

    p = Path(path)
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.dtype != np.uint8:
        raise FacefactorsError(f"{p}: save_image wants uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise FacefactorsError(f"{p}: save_image wants a (C, H, W) or (H, W, C) image, got shape {arr.shape}")
    if arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.shape[2] not in (1, 3):
        raise FacefactorsError(f"{p}: save_image wants 1 or 3 channels, got shape {arr.shape}")
    pil = Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if arr.shape[2] == 1 else arr))
    fmt = "JPEG" if p.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    buf = io.BytesIO()
    pil.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    write_bytes(p, buf.getvalue())
