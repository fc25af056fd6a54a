"""Identity-centred evaluation for any method's run (D2AE's protocol, usable by every method).

``identity_evaluation`` gathers, for every latent part and the concatenation of all parts:
verification on identities the model never trained on (LFW-layout pairs from the ``unseen``
split, else from the test split), linear-SVM attribute recognition with the identity-vs-rest
difference chart, channel Gaussianity, and, when an evaluation oracle (a classifier trained on
real images) is available, SVM-direction editing with its success rate, the identity kept
after editing and residual maps. It returns the metrics to store under ``"identity"`` in
``metrics.json`` and the figures (title -> path) for the report.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from facefactors.data.pairs import Pairs, make_pairs, write_lfw_pairs
from facefactors.data.specs import ImageDataset
from facefactors.errors import FacefactorsError
from facefactors.eval.editing import (EDIT_MAX_STD, EDIT_OVERSHOOT, EDIT_SVM_C, apply_edits, edit_part, edit_steps,
                                      edit_success, fit_directions, learned_std, mean_latent, residual_maps,
                                      svm_directions)
from facefactors.eval.gaussianity import gaussianity
from facefactors.eval.latents import decode_uint8, encode_images, encode_split
from facefactors.eval.probes import discrete_attributes, subsample
from facefactors.eval.recognition import attribute_recognition, recognition_difference
from facefactors.eval.verification import verification_report, without_curves
from facefactors.io import save_png

IDENTITY = "identity"


@dataclass
class IdentityEvalConfig:
    """Settings of the identity-centred evaluation (stored with its metrics)."""

    n_folds: int = 10                 # verification folds (LFW: 10)
    pairs_per_fold: int = 300         # matched (and as many mismatched) pairs per fold (LFW: 300)
    fpr_target: float = 1e-3          # TPR is reported at this false-positive rate
    max_verify_images: int = 20000    # images of the verification split encoded (subsampled beyond);
                                      # pairs.txt numbers each person's images in dataset order among them
    max_train: int = 4000             # train codes the SVMs see
    max_test: int = 2000              # test codes for recognition and Gaussianity
    svm_c: float = 1.0
    recognition_max_classes: int = 50  # attributes with more classes (identity) are left to verification
    recognition_max_dim: int = 512     # wider feature sets are PCA-reduced before the SVMs
    gaussian_bins: int | None = None   # None: about sqrt(N) bins, 10..50
    gaussian_max_channels: int = 512   # channels fitted per part
    histogram_channels: int = 36       # channels drawn in the histogram figure (paper: 36)
    edit: bool = True                  # SVM-direction editing scored by the oracle
    edit_directions: tuple[str, ...] = ("svm", "mean")  # edit direction kinds (editing.DIRECTION_KINDS)
    edit_svm_c: float = EDIT_SVM_C     # C of the edit SVMs: strongly regularised (see editing.EDIT_SVM_C)
    edit_pairwise: bool = True         # source-to-target SVMs for attributes of 3+ classes (see editing)
    edit_images: int = 128             # test images edited (each towards every class it is not)
    edit_max_std: float = EDIT_MAX_STD  # alpha bound, in learned stds along the direction
    edit_overshoot: float = EDIT_OVERSHOOT  # edit target beyond the class mean projection (learned stds)
    residual_std: float = 3.0          # step of the residual maps, in learned stds
    residual_direction: str = "svm"    # direction kind of the residual maps
    grid_images: int = 4               # rows of the edit figure
    batch_size: int = 256
    seed: int = 0


def _log_time(log, what: str, t0: float) -> None:
    log(f"  {what} in {time.perf_counter() - t0:.1f}s")


def _pick(indices: np.ndarray, n: int, seed: int, salt: int) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64)
    return idx[subsample(len(idx), n, np.random.default_rng([seed, salt]))]


def _load_oracle(ds: ImageDataset, device, log):
    """The shared evaluation oracle, or (None, reason) when it cannot be had."""
    try:
        from facefactors.eval.oracle import get_oracle
    except ImportError as e:
        return None, f"no evaluation oracle ({e})"
    try:
        return get_oracle(ds, device=device, log=log), None
    except FacefactorsError as e:
        return None, f"evaluation oracle unavailable: {e}"


def verification_pairs(ds: ImageDataset, cfg: IdentityEvalConfig) -> tuple[str, np.ndarray, np.ndarray, Pairs]:
    """The verification protocol's images and pairs: (split, dataset indices, identities, pairs).

    Held-out identities (the ``unseen`` split) when the dataset has them, else ``test``;
    seeded by ``cfg.seed``, so every run on the same data is scored on the same pairs.
    """
    unseen = ds.splits.get("unseen")
    split = "unseen" if unseen is not None and len(unseen) else "test"
    idx = np.sort(_pick(ds.split(split), cfg.max_verify_images, cfg.seed, 21))
    ids = ds.labels[IDENTITY][torch.from_numpy(idx)].numpy()
    return split, idx, ids, make_pairs(ids, cfg.n_folds, cfg.pairs_per_fold, cfg.seed)


def _verification(model, ds, parts, cfg, device, out_dir, fig_dir, log) -> tuple[dict, dict, dict[str, Path]]:
    from facefactors.viz.identity_plots import plot_roc

    split, idx, ids, pairs = verification_pairs(ds, cfg)
    write_lfw_pairs(out_dir / f"verification_pairs_{split}.txt", pairs, ids, ds.attribute(IDENTITY).classes)
    arrays = encode_split(model, ds, idx, cfg.batch_size, device)
    report = verification_report(arrays, pairs, parts, cfg.fpr_target)
    path = fig_dir / "identity_roc.png"
    plot_roc(report, path, title=f"verification on {split} identities ({pairs.n_folds} folds x "
                                 f"{pairs.per_fold} + {pairs.per_fold} pairs)")
    metrics = {"split": split, "n_images": int(len(idx)), "n_identities": int(np.unique(ids).size),
               "n_pairs": len(pairs), "n_folds": pairs.n_folds, "pairs_per_fold": pairs.per_fold,
               "fpr_target": cfg.fpr_target, "pairs_file": f"verification_pairs_{split}.txt",
               "features": without_curves(report)}
    for name, r in metrics["features"].items():
        log(f"  verification {name}: accuracy {r['accuracy']:.3f}, TPR@FPR{cfg.fpr_target:g} {r['tpr_at_fpr']:.3f}")
    return metrics, report, {f"Verification ROC on {split} identities": path}


def _editable(ds: ImageDataset, train: Mapping[str, np.ndarray], cfg: IdentityEvalConfig) -> list[str]:
    """Discrete attributes other than identity, with few enough classes and two or more in ``train``."""
    return [a for a in discrete_attributes(ds.attributes, train)
            if a != IDENTITY and ds.attributes[a].num_classes <= cfg.recognition_max_classes
            and np.unique(train[f"label/{a}"]).size >= 2]


def _edit_grid(model, ds, images, dirs_by_kind, cfg, device) -> np.ndarray:
    """One block of rows per direction kind (a blank row between blocks): each row is an image,
    its reconstruction, then its edit towards each class (uint8 HWC)."""
    from facefactors.viz.grids import image_grid, to_hwc

    z = encode_images(model, images, cfg.batch_size, device)
    head = [to_hwc(images), to_hwc(decode_uint8(model, z, cfg.batch_size, device))]
    rows: list[list] = []
    for dirs in dirs_by_kind.values():
        columns = list(head)
        for k in dirs.classes:
            steps, _ = edit_steps(z.flat(dirs.part).numpy(), dirs, int(k), cfg.edit_max_std, cfg.edit_overshoot)
            columns.append(to_hwc(decode_uint8(model, apply_edits(z, dirs.part, [(steps, 1.0)]),
                                               cfg.batch_size, device)))
        if rows:
            rows.append([None])
        rows += [[col[r] for col in columns] for r in range(len(head[0]))]
    grid = image_grid(rows)
    k = max(1, -(-48 // ds.image_size))  # enlarge tiny images so the figure stays legible
    return np.repeat(np.repeat(grid, k, 0), k, 1)


def identity_evaluation(model, ds: ImageDataset, out_dir: str | Path, cfg: IdentityEvalConfig | None = None,
                        device: str | torch.device = "cpu", log: Callable[[str], None] = print, *,
                        oracle: Any = None, train: Mapping[str, np.ndarray] | None = None,
                        test: Mapping[str, np.ndarray] | None = None) -> tuple[dict, dict[str, Path]]:
    """Run the identity-centred evaluation; returns (metrics for ``metrics["identity"]``, figures).

    ``oracle`` (an object with ``predict(uint8 NCHW) -> {attribute: classes}``) defaults to
    ``facefactors.eval.oracle.get_oracle(ds)``; editing is skipped, with the reason in the
    metrics, when none can be had. ``train`` / ``test`` may pass already encoded
    ``encode_split`` arrays of those splits (otherwise seeded subsamples are encoded).
    Figures go to ``out_dir/figures``, the verification pairs (LFW ``pairs.txt`` format) to
    ``out_dir``.
    """
    from facefactors.viz.identity_plots import (plot_adj_r2, plot_channel_histograms, plot_recognition_difference,
                                                plot_residual_maps)

    cfg = cfg or IdentityEvalConfig()
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    parts = list(model.part_names)
    figures: dict[str, Path] = {}
    metrics: dict[str, Any] = {"config": dataclasses.asdict(cfg), "parts": parts}
    has_identity = IDENTITY in ds.attributes and ds.attributes[IDENTITY].discrete

    # ---------------------------------------------------------------- verification
    verification = None
    if has_identity:
        log("identity evaluation: verification")
        t0 = time.perf_counter()
        try:
            metrics["verification"], verification, figs = _verification(model, ds, parts, cfg, device, out_dir,
                                                                        fig_dir, log)
            figures.update(figs)
        except FacefactorsError as e:
            metrics["verification"] = {"skipped": str(e)}
            log(f"  verification skipped: {e}")
        _log_time(log, "verification", t0)
    else:
        metrics["verification"] = {"skipped": f"dataset {ds.name!r} has no identity attribute"}

    # ---------------------------------------------------------------- codes
    if train is None:
        train = encode_split(model, ds, np.sort(_pick(ds.split("train"), cfg.max_train, cfg.seed, 22)),
                             cfg.batch_size, device)
    if test is None:
        test_split = ds.split("test") if len(ds.split("test")) else ds.split("train")
        test = encode_split(model, ds, np.sort(_pick(test_split, cfg.max_test, cfg.seed, 23)), cfg.batch_size,
                            device)

    # ---------------------------------------------------------------- recognition
    log("identity evaluation: attribute recognition (linear SVM)")
    recognition = attribute_recognition(train, test, ds.attributes, parts, max_classes=cfg.recognition_max_classes,
                                        max_train=cfg.max_train, max_test=cfg.max_test, c=cfg.svm_c,
                                        max_dim=cfg.recognition_max_dim, seed=cfg.seed, log=log)
    linked = [a for a, s in ds.attributes.items() if s.identity_linked]
    metrics["recognition"] = {"features": recognition, "identity_linked": linked}
    if IDENTITY in parts and "rest" in parts:
        diff = recognition_difference(recognition, IDENTITY, "rest")
        metrics["recognition"]["difference_identity_minus_rest"] = diff
        path = fig_dir / "identity_recognition_difference.png"
        plot_recognition_difference(diff, path, IDENTITY, "rest", linked)
        figures["Attribute recognition: identity part minus rest (linear SVM accuracy)"] = path
    for name, by_attr in recognition.items():
        log(f"  {name}: " + ", ".join(f"{a} {v['accuracy']:.3f}" for a, v in by_attr.items()))

    # ---------------------------------------------------------------- gaussianity
    log("identity evaluation: channel Gaussianity")
    t0 = time.perf_counter()
    summary, r2 = gaussianity(test, parts, cfg.gaussian_bins, cfg.gaussian_max_channels)
    metrics["gaussianity"] = summary
    path = fig_dir / "identity_adj_r2.png"
    plot_adj_r2(r2, path, title="adjusted R^2 of per-channel Gaussian fits (test codes)")
    figures["Channel Gaussianity: adjusted R^2 per channel"] = path
    for p in parts:
        path = fig_dir / f"identity_histograms_{p}.png"
        plot_channel_histograms(test[f"part/{p}"], path, cfg.histogram_channels, cfg.gaussian_bins,
                                title=f"{p}: first channels, histograms with Gaussian fits (adjusted R^2)")
        figures[f"Channel histograms of {p}"] = path
    _log_time(log, "Gaussianity", t0)

    # ---------------------------------------------------------------- residual maps
    attrs = _editable(ds, train, cfg)
    if IDENTITY in parts and "rest" in parts and attrs:
        log("identity evaluation: residual maps")
        like = encode_images(model, ds.images[torch.as_tensor(test["index"][:1])], cfg.batch_size, device)
        base = mean_latent(model, test, like)
        bases, rows = {}, {}
        for p in (IDENTITY, "rest"):
            std = learned_std(model, p)
            for a in attrs:
                dirs = svm_directions(train[f"part/{p}"], train[f"label/{a}"], std, cfg.edit_svm_c, cfg.seed, p, a,
                                      cfg.residual_direction)
                x0, res = residual_maps(model, base, dirs, cfg.residual_std, cfg.batch_size, device)
                bases[p] = x0
                classes = dirs.classes[1:] if len(dirs.classes) == 2 else dirs.classes
                for k in classes:
                    name = ds.attribute(a).classes[int(k)]
                    rows.setdefault(a, {}).setdefault(name, {})[p] = res[dirs.row(int(k))]
        path = fig_dir / "identity_residual_maps.png"
        plot_residual_maps(bases, rows, path,
                           title=f"residual maps: decode(mean + {cfg.residual_std:g} std along the "
                                 f"{cfg.residual_direction} direction) - decode(mean)")
        figures["Residual maps per attribute direction (identity part vs rest)"] = path

    # ---------------------------------------------------------------- editing
    if not cfg.edit:
        metrics["editing"] = {"skipped": "disabled (edit: false)"}
    else:
        log("identity evaluation: editing along SVM directions")
        t0 = time.perf_counter()
        reason = None
        if oracle is None:
            oracle, reason = _load_oracle(ds, device, log)
        if oracle is None:
            metrics["editing"] = {"skipped": reason}
            log(f"  editing skipped: {reason}")
        else:
            metrics["editing"], figs = _editing(model, ds, parts, train, test, oracle, verification, cfg, device,
                                                fig_dir, log)
            figures.update(figs)
        _log_time(log, "editing", t0)

    metrics["seconds"] = round(time.perf_counter() - t_start, 1)
    log(f"identity evaluation done in {metrics['seconds']:.1f}s")
    return metrics, figures


def _editing(model, ds, parts, train, test, oracle, verification, cfg, device, fig_dir, log
             ) -> tuple[dict, dict[str, Path]]:
    sample = ds.images[torch.as_tensor(test["index"][:2])]
    predicted = set(oracle.predict(sample))
    attrs = [a for a in _editable(ds, train, cfg) if not ds.attributes[a].identity_linked and a in predicted]
    identity_part = IDENTITY if IDENTITY in parts else None
    threshold = None
    if verification is not None and identity_part in verification:
        threshold = verification[identity_part]["threshold"]
    pick = _pick(np.arange(len(test["index"])), cfg.edit_images, cfg.seed, 24)
    images = ds.images[torch.as_tensor(test["index"][pick])]
    out: dict[str, Any] = {"n_images": int(len(pick)), "by_direction": {}}
    if not attrs:
        out["skipped"] = "no identity-independent attribute the evaluation classifier predicts"
        return out, {}
    dirs: dict[str, dict] = {a: {} for a in attrs}
    for kind in cfg.edit_directions:
        by_attr = {}
        for a in attrs:
            d = fit_directions(model, train, a, c=cfg.edit_svm_c, seed=cfg.seed, kind=kind, pairwise=cfg.edit_pairwise)
            dirs[a][kind] = d
            res = edit_success(model, images, test[f"label/{a}"][pick], d, oracle, identity_part, threshold,
                               cfg.edit_max_std, cfg.edit_overshoot, cfg.batch_size, device)
            by_attr[a] = res
            kept = f", identity verified {res['identity_verified']:.3f}" if "identity_verified" in res else ""
            log(f"  edit {a} along {kind} directions (part {res['part']}): success {res['success_rate']:.3f} "
                f"(unedited {res['unedited_rate']:.3f}){kept}")
        vals = list(by_attr.values())
        summary: dict[str, Any] = {"attributes": by_attr,
                                   "mean_success_rate": float(np.mean([v["success_rate"] for v in vals])),
                                   "mean_unedited_rate": float(np.mean([v["unedited_rate"] for v in vals]))}
        if all("identity_verified" in v for v in vals):
            summary["mean_identity_verified"] = float(np.mean([v["identity_verified"] for v in vals]))
        out["by_direction"][kind] = summary
    figures: dict[str, Path] = {}
    kinds = " / ".join(cfg.edit_directions)
    for a in attrs:
        path = fig_dir / f"identity_edit_{a}.png"
        save_png(path, _edit_grid(model, ds, images[:cfg.grid_images], dirs[a], cfg, device))
        names = ", ".join(ds.attribute(a).classes[int(k)] for k in next(iter(dirs[a].values())).classes)
        figures[f"Edit {a} in part {edit_part(parts, a)}, row blocks: {kinds} directions "
                f"(original | reconstruction | towards {names})"] = path
    return out, figures


def identity_headline_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Short lines summarising ``metrics["identity"]`` (for the CLI and benchmarks)."""
    lines = []
    ver = metrics.get("verification") or {}
    for name, r in (ver.get("features") or {}).items():
        lines.append(f"verification ({ver.get('split')}) {name}: accuracy {r['accuracy']:.3f}, "
                     f"TPR@FPR{r['fpr_target']:g} {r['tpr_at_fpr']:.3f}")
    diff = (metrics.get("recognition") or {}).get("difference_identity_minus_rest")
    if diff:
        lines.append("recognition identity - rest: " + ", ".join(f"{a} {v:+.3f}" for a, v in diff.items()))
    for p, s in (metrics.get("gaussianity") or {}).items():
        if s.get("median") is not None:
            lines.append(f"gaussianity {p}: median adj R^2 {s['median']:.3f}, >0.99: {s['frac_above_0.99']:.2f}")
    for kind, ed in ((metrics.get("editing") or {}).get("by_direction") or {}).items():
        kept = (f", identity verified {ed['mean_identity_verified']:.3f}" if "mean_identity_verified" in ed else "")
        lines.append(f"editing along {kind} directions: success {ed['mean_success_rate']:.3f} "
                     f"(unedited {ed['mean_unedited_rate']:.3f}){kept}")
    return lines
