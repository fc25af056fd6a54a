"""Attribute interpolation figure (Browatzki & Wallraven, supplement Fig. 6), for any method.

For a source image a and a target image b: one row per part p (only p moves from a's code to
b's), one row per part for "all but p" (every part of p's complement moves, p stays a's), and a
last row where the whole vector moves. Columns: a, ``steps`` decodes for alpha = 0 .. 1, b.
Complements come from ``model.complement_parts(p)`` where the method defines it, otherwise
every other part.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from facefactors.eval.complements import complement_of
from facefactors.eval.latents import as_nchw_uint8, decode_uint8, encode_images
from facefactors.latent import Latent, interpolate
from facefactors.viz.grids import image_grid, to_hwc


def interpolation_rows(model, parts: Sequence[str] | None = None) -> list[tuple[str, list[str]]]:
    """(row label, parts that move) in figure order: each part, all but each part, the whole vector.

    ``parts`` defaults to the model's parts other than ``rest`` (all of them if that leaves none).
    """
    names = list(model.part_names)
    if parts is None:
        parts = [p for p in names if p != "rest"] or names
    rows = [(p, [p]) for p in parts]
    rows += [(f"all but {p}", complement_of(model, p)) for p in parts if complement_of(model, p)]
    rows.append(("all", names))
    return rows


def attribute_interpolation_grid(model, image_a, image_b, parts: Sequence[str] | None = None, steps: int = 10,
                                 gap: int = 2, batch_size: int = 256, device: str | torch.device = "cpu"
                                 ) -> tuple[np.ndarray, list[str]]:
    """One block per (a, b) pair (uint8 NCHW images, same count), blocks separated by a blank row.

    Returns the uint8 (H, W, C) grid and one label per grid row ('' for the blank rows).
    """
    if steps < 2:
        raise ValueError(f"steps={steps}: an interpolation needs at least 2 steps")
    a, b = as_nchw_uint8(image_a), as_nchw_uint8(image_b)
    if a.shape != b.shape:
        raise ValueError(f"source images {tuple(a.shape)} and target images {tuple(b.shape)} differ")
    za = encode_images(model, a, batch_size, device)
    zb = encode_images(model, b, batch_size, device)
    rows_spec = interpolation_rows(model, parts)
    alphas = torch.linspace(0.0, 1.0, steps)
    lats = [lat for _, moving in rows_spec for lat in interpolate(za, zb, moving, alphas)]
    decoded = to_hwc(decode_uint8(model, Latent.cat(lats), batch_size, device))   # (rows*steps*n, H, W, C)
    n = za.batch_size
    a_hwc, b_hwc = to_hwc(a), to_hwc(b)
    rows: list[list[np.ndarray | None]] = []
    labels: list[str] = []
    for i in range(n):
        if rows:
            rows.append([None])
            labels.append("")
        for r, (label, _) in enumerate(rows_spec):
            cells = [decoded[(r * steps + s) * n + i] for s in range(steps)]
            rows.append([a_hwc[i], *cells, b_hwc[i]])
            labels.append(label)
    return image_grid(rows, gap), labels


def plot_attribute_interpolation(model, image_a, image_b, path: str | Path, parts: Sequence[str] | None = None,
                                 steps: int = 10, batch_size: int = 256, device: str | torch.device = "cpu",
                                 title: str | None = None, min_cell: int = 48) -> Path:
    """Save the attribute interpolation figure with its row labels as PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facefactors.io import save_figure

    gap = 2
    grid, labels = attribute_interpolation_grid(model, image_a, image_b, parts, steps, gap, batch_size, device)
    cell = as_nchw_uint8(image_a).shape[-1]
    scale = max(1, -(-min_cell // cell))
    if scale > 1:
        grid = np.repeat(np.repeat(grid, scale, 0), scale, 1)
    h = (cell + gap) * scale
    fig_w = grid.shape[1] / 80 + 1.4
    fig_h = grid.shape[0] / 80 + 0.5
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray" if grid.shape[-1] == 1 else None,
              interpolation="nearest")
    centres = [r * h + cell * scale / 2 for r, lab in enumerate(labels) if lab]
    ax.set_yticks(centres, [lab for lab in labels if lab], fontsize=8)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title or f"attribute interpolation: source | {steps} steps (0 .. 100%) | target", fontsize=9)
    path = Path(path)
    save_figure(path, fig)
    return path
