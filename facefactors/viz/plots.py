"""Matplotlib figures (Agg backend): the leakage heatmap and labelled counterfactual examples."""
from __future__ import annotations

import os
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from facefactors.io import save_figure  # noqa: E402


def leakage_axes(leakage: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]
                 ) -> tuple[list[str], list[str]]:
    """Row (part) and column (attribute) order shared by every probe kind."""
    parts: list[str] = []
    attrs: list[str] = []
    for by_part in leakage.values():
        for p, by_attr in by_part.items():
            if p not in parts:
                parts.append(p)
            for a in by_attr:
                if a not in attrs:
                    attrs.append(a)
    return parts, attrs


def leakage_figure(leakage: Mapping, title: str | None = None):
    """Heatmap per probe kind: rows parts, columns attributes, cells the normalized leakage.

    Cells are annotated with their value; diagonal cells (part name == attribute name)
    are outlined; missing cells (attribute skipped) are blank.
    """
    kinds = list(leakage)
    parts, attrs = leakage_axes(leakage)
    n = max(len(kinds), 1)
    cell = 0.62
    fig_w = n * max(3.0, 1.4 + cell * len(attrs)) + 0.8
    fig_h = max(2.2, 1.3 + cell * len(parts))
    fig, axes = plt.subplots(1, n, figsize=(fig_w, fig_h), squeeze=False, sharey=True, layout="constrained")
    image = None
    for k, (ax, kind) in enumerate(zip(axes[0], kinds)):
        values = np.full((len(parts), len(attrs)), np.nan)
        for i, p in enumerate(parts):
            for j, a in enumerate(attrs):
                entry = leakage[kind].get(p, {}).get(a)
                if entry is not None and entry.get("normalized") is not None:
                    values[i, j] = entry["normalized"]
        image = ax.imshow(np.clip(values, 0, 1), cmap="magma", vmin=0, vmax=1, aspect="auto")
        for i in range(len(parts)):
            for j in range(len(attrs)):
                v = values[i, j]
                if np.isnan(v):
                    continue
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if v > 0.6 else "white")
                if parts[i] == attrs[j]:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#22c55e", lw=2.5))
        ax.set_xticks(range(len(attrs)), attrs, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(parts)), parts, fontsize=8)
        ax.set_xlabel("attribute")
        if k == 0:
            ax.set_ylabel("latent part")
        else:
            ax.tick_params(labelleft=False)
        ax.set_title(f"{kind} probe: normalized leakage", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="(acc - chance) / (1 - chance)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_leakage(leakage: Mapping, path: str | os.PathLike, title: str | None = None) -> None:
    """Save the leakage heatmap (see ``leakage_figure``) as PNG, atomically."""
    save_figure(path, leakage_figure(leakage, title))


def plot_image_panels(panels: Mapping[str, np.ndarray], path: str | os.PathLike, title: str | None = None,
                      scale: float = 0.03) -> None:
    """Stack uint8 (H, W, C) grids vertically, each under its own caption, and save as PNG."""
    names = list(panels)
    if not names:
        raise ValueError("no panels to plot")
    heights = [panels[k].shape[0] for k in names]
    width = max(panels[k].shape[1] for k in names)
    fig_w = max(3.0, width * scale)
    fig_h = sum(h * scale + 0.35 for h in heights) + (0.3 if title else 0)
    fig, axes = plt.subplots(len(names), 1, figsize=(fig_w, fig_h), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, name in zip(axes[:, 0], names):
        img = panels[name]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                  interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(path, fig)
