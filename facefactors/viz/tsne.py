"""t-SNE of each latent part, coloured by each attribute (Oldfield et al., Fig. 4).

One PNG per part: a seeded subsample (at most ``max_points``) of the part's test-split codes,
standardized, reduced to 50 dimensions by PCA when wider (the usual t-SNE preprocessing),
embedded in 2-D once, then drawn in one panel per attribute: discrete attributes with one
colour per class (a legend up to 12 classes), continuous ones on a colour scale. A part that
holds only its own attribute shows clean clusters in its own panel and well-mixed colours in
the others.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from facefactors.data.specs import AttributeSpec  # noqa: E402
from facefactors.errors import FacefactorsError  # noqa: E402
from facefactors.io import save_figure  # noqa: E402

MIN_POINTS = 100   # below this a perplexity-30 embedding says little; no figure is drawn


def embed(x: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """(N, 2) t-SNE embedding of standardized (and PCA-50 reduced) codes."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(x, np.float64).reshape(len(x), -1)
    if len(x) < 4:
        raise FacefactorsError(f"t-SNE needs at least 4 points, got {len(x)}")
    sd = x.std(0)
    x = (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = min(perplexity, (len(x) - 1) / 3.0)
    init = "pca" if x.shape[1] >= 2 else "random"   # a scalar part (a switch value) has no 2-D PCA
    return TSNE(2, perplexity=perplexity, init=init, random_state=seed, max_iter=750).fit_transform(x)


def tsne_figure(xy: np.ndarray, colours: Mapping[str, tuple[np.ndarray, AttributeSpec]], title: str):
    """Panels of the same 2-D embedding, one per attribute (values, spec)."""
    names = list(colours)
    ncol = min(4, max(1, len(names)))
    nrow = max(1, math.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 3.1 * nrow), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        values, spec = colours[name]
        if spec.discrete:
            k = max(spec.num_classes, int(values.max()) + 1 if len(values) else 1)
            cmap = plt.get_cmap("tab10" if k <= 10 else "tab20" if k <= 20 else "turbo")
            c = values.astype(int) / max(k - 1, 1) if k > 20 else values.astype(int) % cmap.N
            if k > 20:
                ax.scatter(xy[:, 0], xy[:, 1], c=c, cmap=cmap, vmin=0, vmax=1, s=4, linewidths=0)
            else:
                for cls in np.unique(values.astype(int)):
                    sel = values == cls
                    label = spec.classes[cls] if cls < len(spec.classes) else str(cls)
                    ax.scatter(xy[sel, 0], xy[sel, 1], color=cmap(cls % cmap.N), s=4, linewidths=0, label=label)
                if k <= 12:
                    ax.legend(fontsize=6, markerscale=2.5, loc="best", frameon=False, handletextpad=0.1)
        else:
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, cmap="viridis", s=4, linewidths=0)
            fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("on")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def tsne_figures(test: Mapping[str, np.ndarray], attributes: Mapping[str, AttributeSpec], out_dir: str | os.PathLike,
                 parts: Iterable[str] | None = None, max_points: int = 1000, seed: int = 0,
                 log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Write ``tsne_<part>.png`` per part into ``out_dir``; returns caption -> path (empty when
    fewer than ``MIN_POINTS`` codes are available)."""
    if parts is None:
        parts = [k[len("part/"):] for k in test if k.startswith("part/")]
    parts = list(parts)
    if not parts:
        return {}
    n = len(test[f"part/{parts[0]}"])
    if n < MIN_POINTS:
        if log:
            log(f"  t-SNE skipped: {n} test codes (< {MIN_POINTS})")
        return {}
    rng = np.random.default_rng([seed, 23])
    idx = np.arange(n) if n <= max_points else np.sort(rng.choice(n, max_points, replace=False))
    colours = {a: (np.asarray(test[f"label/{a}"])[idx], s) for a, s in attributes.items() if f"label/{a}" in test}
    out: dict[str, Path] = {}
    for p in parts:
        x = np.asarray(test[f"part/{p}"])[idx]
        if not np.ptp(x.reshape(len(x), -1), axis=0).any():  # a collapsed part: sklearn's tree code crashes on it
            if log:
                log(f"  t-SNE skipped for part {p!r}: every code is the same")
            continue
        if log:
            log(f"  figure: t-SNE of part {p!r} ({len(idx)} points)")
        xy = embed(x, seed)
        path = Path(out_dir) / f"tsne_{re.sub(r'[^A-Za-z0-9_.-]', '_', p)}.png"
        save_figure(path, tsne_figure(xy, colours, f"t-SNE of part {p!r}, coloured by attribute"))
        out[f"t-SNE of part {p} (test codes; one panel per attribute)"] = path
    return out
