"""The evaluation protocol every method goes through: one call, one metrics.json, one report.

``evaluate`` encodes (subsampled) train and test splits, fits the leakage probes, measures
reconstruction and, on procedural data, counterfactual transfer; it writes
``metrics.json``, the figures under ``figures/`` and a self-contained ``report.html``.
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from facefactors.data.specs import ImageDataset
from facefactors.errors import FacefactorsError
from facefactors.eval.counterfactual import counterfactual_transfer
from facefactors.eval.latents import encode_split, parts_of
from facefactors.eval.probes import leakage_matrix
from facefactors.eval.reconstruction import reconstruction_metrics
from facefactors.io import save_png, write_json

CF_RATIO_KEYS = ("ratio_to_reconstruction", "ratio_to_no_change",
                 "region_ratio_to_reconstruction", "region_ratio_to_no_change")


@dataclass
class EvalConfig:
    """Evaluation settings (stored in metrics.json as ``eval_config``)."""

    n_pairs: int = 256            # counterfactual pairs per part
    max_train: int = 4000         # train latents the probes see (subsampled, seeded)
    max_test: int = 2000          # test latents for probes and reconstruction
    mlp_hidden: int = 256         # hidden units of the MLP probe
    probes: tuple[str, ...] = ("linear", "mlp")
    batch_size: int = 256
    seed: int = 0
    grid_size: int = 6            # images per side of swap grids, rows of the other figures


def _subsample(indices: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) <= n:
        return indices
    return np.sort(rng.choice(indices, size=n, replace=False))


def _safe_name(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", part)


def _upscale(grid: np.ndarray, cell: int, min_cell: int = 48) -> np.ndarray:
    """Nearest-neighbour enlarge grids of tiny images so figures stay legible."""
    k = max(1, -(-min_cell // max(cell, 1)))
    return grid if k == 1 else np.repeat(np.repeat(grid, k, axis=0), k, axis=1)


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The figures to judge a run by, from a metrics dict.

    ``max_offdiag_leakage[probe]`` = the largest normalized leakage where part != attribute
    (the ``rest`` part is off-diagonal for every attribute), with its part and attribute;
    ``diagonal_accuracy[probe][attribute]`` = probe accuracy of the attribute's own part;
    when ``metrics["attributes"]`` marks some attributes identity-linked,
    ``max_offdiag_leakage_unlinked`` also leaves out those read from the ``identity`` part
    (skin tone in the identity code is no leak).
    """
    out: dict[str, Any] = {}
    rec = metrics.get("reconstruction") or {}
    for key in ("psnr", "mse", "ssim"):
        out[key] = rec.get(key)
    linked = {a for a, s in (metrics.get("attributes") or {}).items() if s.get("identity_linked")}
    leak = metrics.get("leakage") or {}
    out["max_offdiag_leakage"], out["diagonal_accuracy"] = {}, {}
    if linked:
        out["max_offdiag_leakage_unlinked"] = {}
    for kind, by_part in leak.items():
        best = None
        best_unlinked = None
        diag: dict[str, float] = {}
        for part, by_attr in by_part.items():
            for attr, entry in by_attr.items():
                value = entry.get("normalized")
                if part != "rest" and part == attr:
                    diag[attr] = entry.get("accuracy")
                    continue
                if value is None:
                    continue
                if best is None or value > best["value"]:
                    best = {"value": value, "part": part, "attribute": attr}
                if not (part == "identity" and attr in linked):
                    if best_unlinked is None or value > best_unlinked["value"]:
                        best_unlinked = {"value": value, "part": part, "attribute": attr}
        out["max_offdiag_leakage"][kind] = best
        out["diagonal_accuracy"][kind] = diag
        if "max_offdiag_leakage_unlinked" in out:
            out["max_offdiag_leakage_unlinked"][kind] = best_unlinked
    out["counterfactual"] = {p: {k: m.get(k) for k in CF_RATIO_KEYS}
                             for p, m in (metrics.get("counterfactual") or {}).items()}
    return out


def _f(v, fmt: str = "{:.3f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def headline_lines(metrics: Mapping[str, Any]) -> list[str]:
    """``headline`` as short human-readable lines (for the CLI summary)."""
    h = headline(metrics)
    lines = [f"reconstruction: PSNR {_f(h['psnr'], '{:.2f}')} dB, MSE {_f(h['mse'], '{:.5f}')}, "
             f"SSIM {_f(h['ssim'])}"]
    for kind, best in h["max_offdiag_leakage"].items():
        where = f" ({best['part']} -> {best['attribute']})" if best else ""
        diag = ", ".join(f"{a} {_f(v)}" for a, v in h["diagonal_accuracy"][kind].items()) or "none"
        lines.append(f"{kind} probe: max off-diagonal leakage {_f(best and best['value'])}{where}; "
                     f"diagonal accuracy: {diag}")
    for part, r in h["counterfactual"].items():
        lines.append(f"counterfactual {part}: ratio to reconstruction {_f(r['ratio_to_reconstruction'])}, "
                     f"to no change {_f(r['ratio_to_no_change'])}; region: "
                     f"{_f(r['region_ratio_to_reconstruction'])} / {_f(r['region_ratio_to_no_change'])}")
    return lines


def _figures(model, ds: ImageDataset, parts: list[str], test_all: np.ndarray, leakage: dict,
             cf_examples: dict, fig_dir: Path, cfg: EvalConfig, device, log) -> dict[str, Path]:
    """Write every figure; returns title -> path in report order."""
    from facefactors.viz.grids import counterfactual_grid, interpolation_strips, reconstruction_grid, swap_grid
    from facefactors.viz.plots import plot_image_panels, plot_leakage

    figures: dict[str, Path] = {}
    rng = np.random.default_rng([cfg.seed, 1])
    k = max(1, min(cfg.grid_size, len(test_all) // 2))
    sel = rng.choice(test_all, size=min(2 * k, len(test_all)), replace=False)
    src_idx, don_idx = sel[:k], (sel[k:2 * k] if len(sel) >= 2 * k else sel[:k])
    src, don = ds.images[src_idx], ds.images[don_idx]
    cell = ds.image_size
    bs = cfg.batch_size

    log("  figure: reconstructions")
    rec_idx = sel[:2 * k]
    path = fig_dir / "reconstructions.png"
    save_png(path, _upscale(reconstruction_grid(model, ds.images[rec_idx], columns=k, batch_size=bs,
                                                device=device), cell))
    figures["Reconstructions (originals above reconstructions)"] = path
    for p in parts:
        log(f"  figure: swap grid and interpolation for part {p!r}")
        path = fig_dir / f"swap_{_safe_name(p)}.png"
        save_png(path, _upscale(swap_grid(model, src, don, p, batch_size=bs, device=device), cell))
        figures[f"Swap {p} (rows: sources, columns: donors of {p})"] = path
        path = fig_dir / f"interp_{_safe_name(p)}.png"
        save_png(path, _upscale(interpolation_strips(model, src, don, p, steps=8, batch_size=bs,
                                                     device=device), cell))
        figures[f"Interpolation of {p} (a, 8 steps, b)"] = path
    if any(by_attr for by_part in leakage.values() for by_attr in by_part.values()):
        path = fig_dir / "leakage.png"
        plot_leakage(leakage, path, title=f"leakage on {ds.name}")
        figures["Leakage (normalized; diagonal outlined)"] = path
    if cf_examples:
        panels = {f"{p}: A | B | truth | transfer": _upscale(counterfactual_grid(e["a"], e["b"], e["truth"],
                                                                                  e["transfer"]), cell)
                  for p, e in cf_examples.items()}
        path = fig_dir / "counterfactual.png"
        plot_image_panels(panels, path)
        figures["Counterfactual transfer examples"] = path
    return figures


def evaluate(model, ds: ImageDataset, out_dir, cfg: EvalConfig | None = None, device="cpu",
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole protocol on ``model`` and ``ds``; write metrics.json, figures/, report.html.

    Returns the metrics dict (the content of metrics.json).
    """
    from facefactors.viz.report import write_report

    cfg = cfg or EvalConfig()
    log = log or (lambda s: None)
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    t_start = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    train_all = np.asarray(ds.split("train"), dtype=np.int64)
    test_all = np.asarray(ds.split("test"), dtype=np.int64)
    if len(train_all) == 0 or len(test_all) == 0:
        raise FacefactorsError(f"dataset {ds.name!r} needs non-empty train and test splits to evaluate")
    train_idx = _subsample(train_all, cfg.max_train, rng)
    test_idx = _subsample(test_all, cfg.max_test, rng)

    log(f"evaluate: encoding {len(train_idx)} train and {len(test_idx)} test images of {ds.name!r}")
    t0 = time.perf_counter()
    train = encode_split(model, ds, train_idx, cfg.batch_size, device)
    test = encode_split(model, ds, test_idx, cfg.batch_size, device)
    parts = parts_of(test)
    log(f"  encoded in {time.perf_counter() - t0:.1f}s; parts: "
        + ", ".join(f"{p} ({test['part/' + p].shape[1]})" for p in parts))

    log(f"evaluate: leakage probes ({', '.join(cfg.probes)})")
    leakage = leakage_matrix(train, test, ds.attributes, parts, cfg.probes, cfg.max_train, cfg.max_test,
                             cfg.mlp_hidden, cfg.seed, log)

    log("evaluate: reconstruction")
    reconstruction = reconstruction_metrics(model, ds, test_idx, cfg.batch_size, device)
    log(f"  PSNR {reconstruction['psnr']:.2f} dB, MSE {reconstruction['mse']:.5f}, SSIM {reconstruction['ssim']:.3f}")

    counterfactual: dict = {}
    cf_examples: dict = {}
    if ds.factors is not None and ds.renderer is not None:
        log(f"evaluate: counterfactual transfer ({cfg.n_pairs} pairs per part)")
        counterfactual, cf_examples = counterfactual_transfer(
            model, ds, test_all, cfg.n_pairs, cfg.seed, cfg.batch_size, device, parts,
            n_examples=min(cfg.grid_size, 4), log=log)

    metrics: dict[str, Any] = {
        "leakage": leakage,
        "reconstruction": reconstruction,
        "counterfactual": counterfactual,
        "parts": {p: int(test[f"part/{p}"].shape[1]) for p in parts},
        "attributes": {a: {"kind": s.kind, "num_classes": s.num_classes, "identity_linked": s.identity_linked}
                       for a, s in ds.attributes.items()},
        "dataset": {"name": ds.name, "size": len(ds), "n_train": int(len(train_all)), "n_test": int(len(test_all))},
        "method": getattr(model, "name", "") or type(model).__name__,
        "eval_config": dataclasses.asdict(cfg),
    }
    metrics["eval_config"]["probes"] = list(cfg.probes)
    write_json(out_dir / "metrics.json", metrics)

    log("evaluate: figures")
    figures = _figures(model, ds, parts, test_all, leakage, cf_examples, fig_dir, cfg, device, log)
    report = write_report(out_dir, metrics, figures, title=f"{metrics['method']} on {ds.name}")
    log(f"evaluate: wrote {out_dir / 'metrics.json'}, {len(figures)} figures and {report} "
        f"in {time.perf_counter() - t_start:.1f}s")
    for line in headline_lines(metrics):
        log("  " + line)
    return metrics
