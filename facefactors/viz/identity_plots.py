"""Figures of the identity-centred evaluation: ROC curves, the f_T vs f_P recognition chart,
channel histograms with Gaussian fits, adjusted-R^2 histograms and residual maps."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from facefactors.eval.gaussianity import fit_channel, gaussian  # noqa: E402
from facefactors.io import save_figure  # noqa: E402


def plot_roc(reports: Mapping[str, Mapping], path: str | os.PathLike, title: str | None = None) -> None:
    """ROC curves (log FPR axis) of several feature sets; ``reports[name]`` is a ``verify`` result."""
    fig, ax = plt.subplots(figsize=(5.2, 4.2), layout="constrained")
    floor = None
    for name, r in reports.items():
        fpr, tpr = np.asarray(r["roc"]["fpr"]), np.asarray(r["roc"]["tpr"])
        positive = fpr[fpr > 0]
        if positive.size:
            floor = positive.min() if floor is None else min(floor, positive.min())
        label = f"{name}: acc {r['accuracy']:.3f}, TPR@{r['fpr_target']:g} {r['tpr_at_fpr']:.3f}"
        ax.plot(np.maximum(fpr, 1e-6), tpr, lw=1.6, label=label, drawstyle="steps-post")
    ax.set_xscale("log")
    ax.set_xlim(max(1e-4, (floor or 1e-4) / 2), 1.0)
    ax.set_ylim(0, 1.01)
    ax.axvline(1e-3, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title or "verification ROC (cosine similarity)", fontsize=9)
    save_figure(path, fig)


def plot_recognition_difference(diff: Mapping[str, float], path: str | os.PathLike, first: str = "identity",
                                second: str = "rest", identity_linked: Sequence[str] = (),
                                title: str | None = None) -> None:
    """Bars of accuracy(first) - accuracy(second) per attribute (D2AE Fig. 5a): red where
    ``first`` (f_T) wins, blue where ``second`` (f_P) wins; identity-linked attributes marked *."""
    names = list(diff)
    values = np.array([diff[a] for a in names], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 1.5), 3.6), layout="constrained")
    colours = ["#dc2626" if v > 0 else "#2563eb" for v in values]
    ax.bar(range(len(names)), values, color=colours)
    linked = set(identity_linked)
    ax.set_xticks(range(len(names)), [f"{a} *" if a in linked else a for a in names], rotation=40, ha="right",
                  fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel(f"accuracy({first}) - accuracy({second})")
    lim = max(0.05, float(np.abs(values).max()) * 1.15) if len(values) else 0.05
    ax.set_ylim(-lim, lim)
    for i, v in enumerate(values):
        ax.text(i, v + (0.01 if v >= 0 else -0.01) * lim * 4, f"{v:+.2f}", ha="center",
                va="bottom" if v >= 0 else "top", fontsize=7)
    ax.set_title(title or f"linear-SVM attribute recognition: red = {first} better, blue = {second} better"
                 + (" (* identity-linked)" if linked else ""), fontsize=8)
    save_figure(path, fig)


def plot_channel_histograms(features: np.ndarray, path: str | os.PathLike, n_channels: int = 36,
                            bins: int | None = None, title: str | None = None) -> None:
    """Histograms of the first ``n_channels`` channels with their Gaussian fits (D2AE Fig. 7)."""
    x = np.asarray(features)
    k = min(n_channels, x.shape[1])
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.2 * rows), squeeze=False, layout="constrained")
    for c in range(rows * cols):
        ax = axes[c // cols, c % cols]
        ax.set_xticks([])
        ax.set_yticks([])
        if c >= k:
            ax.axis("off")
            continue
        fit = fit_channel(x[:, c], bins)
        if np.isfinite(fit.adj_r2):
            width = fit.centres[1] - fit.centres[0] if len(fit.centres) > 1 else 1.0
            ax.bar(fit.centres, fit.density, width=width, color="#93c5fd")
            grid = np.linspace(fit.centres[0], fit.centres[-1], 100)
            ax.plot(grid, gaussian(grid, fit.amplitude, fit.mu, fit.sigma), color="#dc2626", lw=1)
            ax.set_title(f"{c}: {fit.adj_r2:.3f}", fontsize=6)
        else:
            ax.set_title(f"{c}: constant", fontsize=6)
    fig.suptitle(title or "channel histograms with Gaussian fits (title: channel, adjusted R^2)", fontsize=8)
    save_figure(path, fig)


def plot_adj_r2(values: Mapping[str, np.ndarray], path: str | os.PathLike, title: str | None = None) -> None:
    """Histogram of the channels' adjusted R^2, one panel per part (D2AE Fig. 8)."""
    names = list(values)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.6), squeeze=False, layout="constrained")
    for ax, name in zip(axes[0], names):
        r = np.asarray(values[name], dtype=float)
        ok = r[np.isfinite(r)]
        lo = max(-1.0, min(0.9, float(ok.min()))) if ok.size else 0.0
        ax.hist(np.clip(ok, lo, 1.0), bins=20, range=(lo, 1.0), color="#60a5fa")
        dead = int(r.size - ok.size)
        ax.set_title(f"{name}: median {np.median(ok):.3f}" + (f", {dead} constant" if dead else "")
                     if ok.size else f"{name}: no fit", fontsize=8)
        ax.set_xlabel("adjusted R^2", fontsize=8)
        ax.set_ylabel("channels", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(path, fig)


def plot_residual_maps(base: Mapping[str, np.ndarray], rows: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
                       path: str | os.PathLike, title: str | None = None, min_cell: int = 48) -> None:
    """Residual maps (D2AE Fig. 5b): the per-pixel magnitude of decode(mean + s w) - decode(mean).

    ``base[part]`` is decode(mean) (float (H, W, C) in [-1, 1]); ``rows[attribute][class][part]``
    a residual (H, W, C). One row per attribute: the decoded mean, then per class one heat map
    per part side by side (the paper's identity-vs-rest pairs), all on one colour scale. Drawn
    as a single image mosaic (fast even with dozens of cells).
    """
    parts = list(base)
    ref = next(iter(base.values()))
    h, w = ref.shape[:2]
    k = max(1, -(-min_cell // max(h, w)))
    ch, cw, gap, pair_gap = h * k, w * k, 2, 8
    n_cls = max((len(c) for c in rows.values()), default=0)
    width = cw + pair_gap + n_cls * (len(parts) * (cw + gap) + pair_gap)
    heights = max(len(rows), 1)
    label_h = 22
    mosaic = np.ones((heights * (ch + label_h), width, 3))
    vmax = max([float(np.abs(r).sum(-1).max()) for by_cls in rows.values() for by_part in by_cls.values()
                for r in by_part.values()] + [1e-6])
    cmap = plt.get_cmap("inferno")

    def up(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a, k, 0), k, 1)

    mean_img = np.clip((ref + 1) / 2, 0, 1)
    mean_img = np.repeat(mean_img, 3, -1) if mean_img.shape[-1] == 1 else mean_img[..., :3]
    labels = []
    for i, (attr, by_cls) in enumerate(rows.items()):
        y = i * (ch + label_h) + label_h
        mosaic[y:y + ch, :cw] = up(mean_img)
        labels.append((cw / 2, y - 3, "decoded mean"))
        x = cw + pair_gap
        for cls, by_part in by_cls.items():
            for p in parts:
                if p in by_part:
                    heat = cmap(np.clip(np.abs(by_part[p]).sum(-1) / vmax, 0, 1))[..., :3]
                    mosaic[y:y + ch, x:x + cw] = up(heat)
                labels.append((x + cw / 2, y - 3, f"{cls}\n{p}"))
                x += cw + gap
            x += pair_gap
    fig_w = max(4.0, width / 60)
    fig, ax = plt.subplots(figsize=(fig_w, fig_w * mosaic.shape[0] / width + 0.6), layout="constrained")
    ax.imshow(mosaic, interpolation="nearest")
    for x, y, text in labels:
        ax.text(x, y, text, ha="center", va="bottom", fontsize=5)
    ax.set_xticks([])
    ax.set_yticks([i * (ch + label_h) + label_h + ch / 2 for i in range(len(rows))], list(rows), fontsize=7)
    for side in ax.spines.values():
        side.set_visible(False)
    sm = matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(0, vmax))
    fig.colorbar(sm, ax=ax, shrink=0.6, label="|residual| (sum over channels)")
    ax.set_title(title or "residual maps: decode(mean + s w) - decode(mean), per attribute class and part",
                 fontsize=8)
    save_figure(path, fig)
