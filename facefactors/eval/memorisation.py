"""Generalisation checks: reconstruction RMSE on train and test, and the memorisation check.

Browatzki & Wallraven (supplement Table 1, Fig. 1): a model that reconstructs test images well
might just be recalling training images. ``reconstruction_rmse`` measures RMSE (0-255 pixel
units, as in the paper's table) on both splits. ``memorisation_check`` reconstructs test images
and looks up the training images nearest to each reconstruction by SSIM: a generalising model's
reconstruction is closer to its own input than to any training image. To stay cheap on CPU the
training images are first short-listed by Euclidean distance between 4x average-pooled images
(``shortlist`` per query; an exact duplicate has distance 0 and is always kept), then ranked by
full-resolution SSIM (``reconstruction.ssim``).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from facefactors.data.specs import ImageDataset, to_float_image
from facefactors.errors import FacefactorsError
from facefactors.eval.latents import as_nchw_uint8, decode_uint8, encode_images
from facefactors.eval.probes import subsample
from facefactors.eval.reconstruction import reconstruction_metrics, ssim


@dataclass
class MemorisationConfig:
    """Settings of the train/test RMSE and the memorisation check."""

    max_rmse_images: int = 2000    # images per split for the RMSE
    n_queries: int = 8             # test images reconstructed and looked up
    k: int = 5                     # nearest training images shown and scored per query
    max_train: int | None = None   # training images searched (None: the whole train split)
    shortlist: int = 64            # candidates per query ranked by SSIM
    pool: int = 4                  # average-pooling factor of the short-listing distance
    batch_size: int = 256
    seed: int = 0


def rmse_255(mse_unit: float) -> float:
    """RMSE in 0-255 pixel units from an MSE of images in [0, 1]."""
    return float(math.sqrt(max(mse_unit, 0.0)) * 255.0)


def reconstruction_rmse(model, ds: ImageDataset, train_idx, test_idx, batch_size: int = 256,
                        device: str | torch.device = "cpu") -> dict[str, Any]:
    """``{"train": {"rmse", "psnr", "ssim", "n_images"}, "test": {...}, "gap": test - train RMSE}``."""
    out: dict[str, Any] = {}
    for name, idx in (("train", train_idx), ("test", test_idx)):
        if len(idx) == 0:
            raise FacefactorsError(f"no {name} images for the reconstruction RMSE")
        m = reconstruction_metrics(model, ds, idx, batch_size, device)
        out[name] = {"rmse": rmse_255(m["mse"]), "psnr": m["psnr"], "ssim": m["ssim"], "n_images": m["n_images"]}
    out["gap"] = out["test"]["rmse"] - out["train"]["rmse"]
    return out


def _unit(u8: torch.Tensor) -> torch.Tensor:
    return (to_float_image(u8) + 1.0) * 0.5


def _pooled(u8: torch.Tensor, pool: int, batch_size: int) -> torch.Tensor:
    chunks = []
    for s in range(0, u8.shape[0], batch_size):
        x = _unit(u8[s:s + batch_size])
        chunks.append((F.avg_pool2d(x, pool) if pool > 1 else x).flatten(1))
    return torch.cat(chunks)


def nearest_by_ssim(queries, candidates, k: int = 5, shortlist: int = 64, pool: int = 4,
                    batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """For each query image, the ``k`` candidate images with the highest SSIM to it.

    ``queries`` (Q, C, H, W) and ``candidates`` (N, C, H, W) are uint8 images of one size.
    Returns (indices into ``candidates`` (Q, k), SSIM values (Q, k)), best first. Candidates are
    short-listed by distance between ``pool``-times average-pooled images, then ranked by SSIM.
    """
    q, c = as_nchw_uint8(queries), as_nchw_uint8(candidates)
    if q.shape[1:] != c.shape[1:]:
        raise FacefactorsError(f"query images {tuple(q.shape[1:])} and candidate images {tuple(c.shape[1:])} differ")
    if c.shape[0] == 0 or q.shape[0] == 0:
        raise FacefactorsError("nearest_by_ssim needs at least one query and one candidate image")
    pool = pool if pool > 1 and q.shape[-1] % pool == 0 and q.shape[-2] % pool == 0 else 1
    k = min(k, c.shape[0])
    m = min(max(shortlist, k), c.shape[0])
    qp = _pooled(q, pool, batch_size)
    best_d = torch.full((q.shape[0], 0), float("inf"))
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long)
    for s in range(0, c.shape[0], 4 * batch_size):   # running top-m over candidate chunks
        cp = _pooled(c[s:s + 4 * batch_size], pool, batch_size)
        d = torch.cdist(qp, cp)
        d_all = torch.cat([best_d, d], 1)
        i_all = torch.cat([best_i, torch.arange(s, s + cp.shape[0]).expand(q.shape[0], -1)], 1)
        top = torch.topk(d_all, min(m, d_all.shape[1]), dim=1, largest=False)
        best_d, best_i = top.values, torch.gather(i_all, 1, top.indices)
    idx = np.zeros((q.shape[0], k), np.int64)
    val = np.zeros((q.shape[0], k), np.float64)
    for j in range(q.shape[0]):
        cand = best_i[j]
        x = _unit(q[j:j + 1]).expand(len(cand), -1, -1, -1)
        s = ssim(x, _unit(c[cand])).double()
        order = torch.argsort(s, descending=True, stable=True)[:k]
        idx[j], val[j] = cand[order].numpy(), s[order].numpy()
    return idx, val


def memorisation_check(model, ds: ImageDataset, test_idx, train_idx, k: int = 5, shortlist: int = 64,
                       pool: int = 4, batch_size: int = 256, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Reconstruct ``ds.images[test_idx]`` and find the nearest training images (``train_idx``) by SSIM.

    Returns JSON-ready ``summary`` and ``queries`` (per test image: dataset indices of its nearest
    training images, SSIM of the reconstruction to each, to its own input, and of the input to its
    nearest training image) plus ``images`` (uint8 inputs, reconstructions, neighbours) for the figure.
    A reconstruction counts as ``closer_to_train`` when some training image has a higher SSIM to
    it than its own input has.
    """
    test_idx = np.asarray(test_idx, np.int64)
    train_idx = np.asarray(train_idx, np.int64)
    if len(test_idx) == 0 or len(train_idx) == 0:
        raise FacefactorsError("the memorisation check needs test and train images")
    inputs = ds.images[torch.from_numpy(test_idx)]
    recon = decode_uint8(model, encode_images(model, inputs, batch_size, device), batch_size, device)
    train_images = ds.images[torch.from_numpy(train_idx)]
    nn_pos, nn_ssim = nearest_by_ssim(recon, train_images, k, shortlist, pool, batch_size)
    to_input = ssim(_unit(recon), _unit(inputs)).double().numpy()
    input_pos, input_ssim = nearest_by_ssim(inputs, train_images, 1, shortlist, pool, batch_size)
    queries = [{"test_index": int(test_idx[j]),
                "train_indices": [int(train_idx[i]) for i in nn_pos[j]],
                "ssim_to_train": [float(v) for v in nn_ssim[j]],
                "ssim_to_input": float(to_input[j]),
                "input_nearest_train_ssim": float(input_ssim[j, 0]),
                "closer_to_train": bool(nn_ssim[j, 0] > to_input[j])} for j in range(len(test_idx))]
    summary = {"n_queries": int(len(test_idx)), "n_train_searched": int(len(train_idx)), "k": int(nn_pos.shape[1]),
               "mean_ssim_to_input": float(to_input.mean()),
               "mean_ssim_to_nearest_train": float(nn_ssim[:, 0].mean()),
               "mean_input_nearest_train_ssim": float(input_ssim[:, 0].mean()),
               "fraction_closer_to_train": float(np.mean([q["closer_to_train"] for q in queries])),
               "max_ssim_to_train": float(nn_ssim[:, 0].max())}
    images = {"inputs": inputs, "reconstructions": recon, "neighbours": train_images[torch.from_numpy(nn_pos)]}
    return {"summary": summary, "queries": queries, "images": images}


def plot_memorisation(result: Mapping[str, Any], path: str | Path, title: str | None = None) -> None:
    """Supplement Fig. 1: columns are test images; rows: input, reconstruction, then the nearest
    training images by SSIM (SSIM to the reconstruction above each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facefactors.io import save_figure
    from facefactors.viz.grids import to_hwc

    images = result["images"]
    inputs, recon = to_hwc(images["inputs"]), to_hwc(images["reconstructions"])
    neigh = images["neighbours"]   # (Q, k, C, H, W)
    q, k = neigh.shape[0], neigh.shape[1]
    rows = 2 + k
    fig, axes = plt.subplots(rows, q, figsize=(1.1 * q + 0.9, 1.25 * rows), squeeze=False)
    for j, info in enumerate(result["queries"]):
        cells = [(inputs[j], "input"), (recon[j], f"rec {info['ssim_to_input']:.2f}")]
        cells += [(to_hwc(neigh[j, r:r + 1])[0], f"{info['ssim_to_train'][r]:.2f}") for r in range(k)]
        for r, (img, label) in enumerate(cells):
            ax = axes[r][j]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      interpolation="nearest")
            ax.set_title(label, fontsize=7, pad=2)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("test input", fontsize=7)
    axes[1][0].set_ylabel("reconstruction", fontsize=7)
    for r in range(k):
        axes[2 + r][0].set_ylabel(f"train #{r + 1}", fontsize=7)
    fig.suptitle(title or "nearest training images to reconstructions of test images (SSIM)", fontsize=9)
    save_figure(path, fig)


def memorisation_evaluation(model, ds: ImageDataset, out_dir: str | Path, cfg: MemorisationConfig | None = None,
                            device: str | torch.device = "cpu", log: Callable[[str], None] = print
                            ) -> tuple[dict[str, Any], dict[str, Path]]:
    """Train/test reconstruction RMSE and the memorisation check: (metrics, {figure title: path})."""
    cfg = cfg or MemorisationConfig()
    t0 = time.perf_counter()
    rng = np.random.default_rng([cfg.seed, 47])
    train_all = np.asarray(ds.split("train"), np.int64)
    test_all = np.asarray(ds.split("test"), np.int64)
    if len(train_all) == 0 or len(test_all) == 0:
        raise FacefactorsError(f"dataset {ds.name!r} needs train and test images for the memorisation check")
    log("memorisation: reconstruction RMSE on train and test")
    rmse = reconstruction_rmse(model, ds, train_all[subsample(len(train_all), cfg.max_rmse_images, rng)],
                               test_all[subsample(len(test_all), cfg.max_rmse_images, rng)], cfg.batch_size, device)
    log(f"  RMSE (0-255) train {rmse['train']['rmse']:.2f}, test {rmse['test']['rmse']:.2f}")
    queries = test_all[subsample(len(test_all), cfg.n_queries, rng)]
    searched = train_all[subsample(len(train_all), cfg.max_train, rng)]
    log(f"memorisation: nearest of {len(searched)} training images to {len(queries)} test reconstructions")
    result = memorisation_check(model, ds, queries, searched, cfg.k, cfg.shortlist, cfg.pool, cfg.batch_size, device)
    s = result["summary"]
    log(f"  SSIM reconstruction to input {s['mean_ssim_to_input']:.3f}, to nearest train image "
        f"{s['mean_ssim_to_nearest_train']:.3f}; closer to a training image: {s['fraction_closer_to_train']:.2f}")
    path = Path(out_dir) / "figures" / "memorisation.png"
    plot_memorisation(result, path)
    metrics = {"config": dataclasses.asdict(cfg), "rmse": rmse, "summary": s, "queries": result["queries"],
               "seconds": round(time.perf_counter() - t0, 1)}
    return metrics, {"Memorisation check: test input, reconstruction, nearest training images by SSIM": path}
