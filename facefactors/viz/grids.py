"""Image grids: swaps, interpolations, reconstructions and counterfactuals (uint8 in, uint8 out).

Images come in as uint8 torch tensors (N, C, H, W) (the dataset layout) or uint8 numpy
arrays (N, H, W, C) (the renderer layout); grids come out as uint8 numpy (H, W, C)
with ``gap`` pixels of ``background`` between cells.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from facefactors.eval.latents import as_nchw_uint8, decode_uint8, encode_images
from facefactors.latent import Latent, interpolate, swap


def to_hwc(images) -> np.ndarray:
    """uint8 images (torch NCHW or numpy NHWC) -> numpy (N, H, W, C)."""
    return as_nchw_uint8(images).permute(0, 2, 3, 1).contiguous().numpy()


def image_grid(rows: Sequence[Sequence[np.ndarray | None]], gap: int = 2, background: int = 255) -> np.ndarray:
    """Tile a list of rows of (H, W, C) uint8 cells; ``None`` leaves a cell blank.

    All cells share one size; rows may have different lengths (short rows stay blank on the right).
    """
    cells = [c for row in rows for c in row if c is not None]
    if not cells:
        raise ValueError("image_grid needs at least one image")
    h, w, ch = np.asarray(cells[0]).shape
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    out = np.full((n_rows * h + (n_rows - 1) * gap, n_cols * w + (n_cols - 1) * gap, ch),
                  background, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            if cell is None:
                continue
            cell = np.asarray(cell)
            if cell.shape != (h, w, ch):
                raise ValueError(f"grid cell ({i}, {j}) has shape {cell.shape}, expected {(h, w, ch)}")
            y, x = i * (h + gap), j * (w + gap)
            out[y:y + h, x:x + w] = cell
    return out


def grid_cell(grid: np.ndarray, row: int, col: int, cell_hw: tuple[int, int], gap: int = 2) -> np.ndarray:
    """The cell at (row, col) of a grid built by ``image_grid`` (for checks and crops)."""
    h, w = cell_hw
    y, x = row * (h + gap), col * (w + gap)
    return grid[y:y + h, x:x + w]


def swap_grid(model, images_src, images_donor, part: str, gap: int = 2, batch_size: int = 256,
              device: str | torch.device = "cpu") -> np.ndarray:
    """Row 0: donors' originals (top-left blank); column 0: sources' originals;
    cell (i, j) = decode(swap(z_src_i, z_donor_j, part))."""
    src, don = as_nchw_uint8(images_src), as_nchw_uint8(images_donor)
    z_src = encode_images(model, src, batch_size, device)
    z_don = encode_images(model, don, batch_size, device)
    n_s, n_d = z_src.batch_size, z_don.batch_size
    rep_s = z_src.index(torch.arange(n_s).repeat_interleave(n_d))
    rep_d = z_don.index(torch.arange(n_d).repeat(n_s))
    out = to_hwc(decode_uint8(model, swap(rep_s, rep_d, part), batch_size, device))
    src_hwc, don_hwc = to_hwc(src), to_hwc(don)
    rows: list[list[np.ndarray | None]] = [[None] + list(don_hwc)]
    for i in range(n_s):
        rows.append([src_hwc[i]] + list(out[i * n_d:(i + 1) * n_d]))
    return image_grid(rows, gap)


def interpolation_strips(model, images_a, images_b, part: str, steps: int = 8, gap: int = 2,
                         batch_size: int = 256, device: str | torch.device = "cpu") -> np.ndarray:
    """One row per pair: original a, ``steps`` decodes with ``part`` moved from a's code to
    b's (alpha = 0 .. 1, other parts from a), original b."""
    a, b = as_nchw_uint8(images_a), as_nchw_uint8(images_b)
    za = encode_images(model, a, batch_size, device)
    zb = encode_images(model, b, batch_size, device)
    alphas = torch.linspace(0.0, 1.0, steps)
    lats = interpolate(za, zb, part, alphas)
    decoded = to_hwc(decode_uint8(model, Latent.cat(lats), batch_size, device))
    n = za.batch_size
    a_hwc, b_hwc = to_hwc(a), to_hwc(b)
    rows = []
    for i in range(n):
        rows.append([a_hwc[i]] + [decoded[s * n + i] for s in range(steps)] + [b_hwc[i]])
    return image_grid(rows, gap)


def reconstruction_grid(model, images, gap: int = 2, columns: int | None = None, batch_size: int = 256,
                        device: str | torch.device = "cpu") -> np.ndarray:
    """Originals row over reconstructions row; with ``columns`` the pairs of rows wrap."""
    x = as_nchw_uint8(images)
    rec = to_hwc(decode_uint8(model, encode_images(model, x, batch_size, device), batch_size, device))
    orig = to_hwc(x)
    cols = columns or len(orig)
    rows = []
    for start in range(0, len(orig), cols):
        rows.append(list(orig[start:start + cols]))
        rows.append(list(rec[start:start + cols]))
    return image_grid(rows, gap)


def counterfactual_grid(a, b, truth, transfer, gap: int = 2) -> np.ndarray:
    """One row per example: columns A, B, truth, transfer."""
    cols = [to_hwc(v) for v in (a, b, truth, transfer)]
    return image_grid([[c[i] for c in cols] for i in range(len(cols[0]))], gap)
