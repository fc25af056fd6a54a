"""Discriminability of each part f_p and of its complement f_not_p (Browatzki & Wallraven, Table 2).

For a part named after an attribute, f_p should carry that attribute and its complement f_not_p
(everything but p) should carry much less of it. Works for every method: the complement is
``model.complement_parts(p)`` where the method defines it, otherwise every other part, read
from ``encode_split`` arrays (no re-encoding). Per part p with attribute a:

- discrete a: fresh probes (``probes.probe_score``: accuracy, chance, normalized) on f_p and on
  f_not_p, their ratio ``leakage_ratio = normalized(f_not_p) / normalized(f_p)`` (the claim to
  check: at most 0.5), and the macro one-vs-rest ROC AUC of a linear probe (the paper's
  expression AUC) for attributes with at most ``auc_max_classes`` classes;
- continuous a: R^2 of a ridge regression on f_p and on f_not_p;
- identity-like a (``verify``): LFW-style verification (cosine similarity, 10-fold accuracy,
  ``eval/verification.py``) of f_p and f_not_p on pairs of the ``unseen`` split (else test).
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from facefactors.data.specs import AttributeSpec, ImageDataset
from facefactors.errors import FacefactorsError
from facefactors.eval.probes import PROBE_KINDS, probe_score, subsample

Complement = Callable[[str], list[str]]


@dataclass
class ComplementConfig:
    """Settings of the part / complement discriminability evaluation."""

    probes: tuple[str, ...] = ("linear", "mlp")
    max_train: int = 4000
    max_test: int = 2000
    mlp_hidden: int = 256
    auc_max_classes: int = 20          # AUC for attributes with at most this many classes
    verify: tuple[str, ...] = ("identity",)   # attributes judged by verification too
    n_folds: int = 10
    pairs_per_fold: int = 300
    max_verify_images: int = 4000
    batch_size: int = 256
    seed: int = 0


def complement_of(model_or_parts, part: str) -> list[str]:
    """The parts forming f_not_part: ``model.complement_parts(part)`` when the method defines it,
    else every other part (``model_or_parts`` is a model or a list of part names)."""
    fn = getattr(model_or_parts, "complement_parts", None)
    if callable(fn):
        return list(fn(part))
    parts = list(getattr(model_or_parts, "part_names", model_or_parts))
    if part not in parts:
        raise FacefactorsError(f"unknown latent part {part!r}; parts: {', '.join(parts)}")
    return [q for q in parts if q != part]


def complement_features(arrays: Mapping[str, np.ndarray], parts: Sequence[str]) -> np.ndarray:
    """The named ``part/<q>`` arrays concatenated, (N, sum of dims)."""
    missing = [q for q in parts if f"part/{q}" not in arrays]
    if missing:
        raise FacefactorsError(f"latent part(s) {missing} missing from the encoded arrays")
    if not parts:
        raise FacefactorsError("a complement needs at least one other part")
    return np.concatenate([np.asarray(arrays[f"part/{q}"], dtype=np.float32) for q in parts], axis=1)


def linear_auc(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
               seed: int = 0) -> float | None:
    """Macro one-vs-rest ROC AUC of a logistic-regression probe (binary: AUC of the positive class).

    Test classes the probe never saw are left out; None when fewer than two classes remain.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, tol=1e-3, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        clf.fit(x_train, y_train)
        proba = clf.predict_proba(x_test)
    classes = clf.classes_
    keep = np.isin(y_test, classes)
    y, proba = np.asarray(y_test)[keep], proba[keep]
    present = np.unique(y)
    if present.size < 2:
        return None
    if classes.size == 2:
        return float(roc_auc_score(y == classes[1], proba[:, 1]))
    aucs = [roc_auc_score(y == c, proba[:, k]) for k, c in enumerate(classes) if c in present]
    return float(np.mean(aucs))


def ridge_r2(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test R^2 of a ridge regression (standardised features)."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    reg = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x_train, y_train)
    return float(reg.score(x_test, y_test))


def _ratio(part: float | None, comp: float | None) -> float | None:
    if part is None or comp is None or part <= 1e-9:
        return None
    return float(comp / part)


def discriminability(train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                     attributes: Mapping[str, AttributeSpec], parts: Sequence[str],
                     complement: Complement | None = None, probes: Sequence[str] = ("linear", "mlp"),
                     max_train: int | None = 4000, max_test: int | None = 2000, mlp_hidden: int = 256,
                     auc_max_classes: int = 20, seed: int = 0, log: Callable[[str], None] | None = None
                     ) -> dict[str, dict[str, Any]]:
    """Per part named after a labelled attribute: how well f_p and f_not_p give that attribute.

    ``train``/``test`` are ``encode_split`` arrays; ``complement(p)`` names the parts of f_not_p
    (default: every other part). Returns ``{part: {"attribute", "kind", "complement_parts",
    "part": {...}, "complement": {...}, "leakage_ratio": {probe: ratio}}}`` where the inner
    dicts hold ``{probe: {"accuracy", "chance", "normalized"}}`` and ``"auc"`` (discrete) or
    ``"r2"`` (continuous).
    """
    for kind in probes:
        if kind not in PROBE_KINDS:
            raise FacefactorsError(f"unknown probe kind {kind!r}; choose from {', '.join(PROBE_KINDS)}")
    parts = list(parts)
    complement = complement or (lambda p: complement_of(parts, p))
    rng = np.random.default_rng([seed, 41])
    n_tr, n_te = len(train["part/" + parts[0]]), len(test["part/" + parts[0]])
    tr, te = subsample(n_tr, max_train, rng), subsample(n_te, max_test, rng)
    out: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for p in parts:
        spec = attributes.get(p)
        if spec is None or f"label/{p}" not in train or f"label/{p}" not in test:
            continue
        others = complement(p)
        own = (np.asarray(train[f"part/{p}"], np.float32)[tr], np.asarray(test[f"part/{p}"], np.float32)[te])
        feats = {"part": own,
                 "complement": (complement_features(train, others)[tr], complement_features(test, others)[te])}
        y_tr, y_te = np.asarray(train[f"label/{p}"])[tr], np.asarray(test[f"label/{p}"])[te]
        entry: dict[str, Any] = {"attribute": p, "kind": spec.kind, "complement_parts": others}
        if spec.discrete:
            if np.unique(y_tr).size < 2:
                continue
            for name, (x_tr, x_te) in feats.items():
                res: dict[str, Any] = {k: probe_score(k, x_tr, y_tr, x_te, y_te, mlp_hidden, seed) for k in probes}
                if spec.num_classes <= auc_max_classes:
                    res["auc"] = linear_auc(x_tr, y_tr, x_te, y_te, seed)
                entry[name] = res
            entry["leakage_ratio"] = {k: _ratio(entry["part"][k]["normalized"], entry["complement"][k]["normalized"])
                                      for k in probes}
        else:
            for name, (x_tr, x_te) in feats.items():
                entry[name] = {"r2": ridge_r2(x_tr, y_tr, x_te, y_te)}
            entry["leakage_ratio"] = {"r2": _ratio(entry["part"]["r2"], max(entry["complement"]["r2"], 0.0))}
        out[p] = entry
    if log:
        log(f"  part / complement probes: {len(out)} parts ({len(tr)} train / {len(te)} test) "
            f"in {time.perf_counter() - t0:.1f}s")
    return out


def verification_discriminability(arrays: Mapping[str, np.ndarray], part: str, complement_parts: Sequence[str],
                                  identity: np.ndarray | None = None, n_folds: int = 10, per_fold: int = 300,
                                  seed: int = 0) -> dict[str, Any]:
    """Verification (cosine, k-fold accuracy, TPR@FPR, AUC) of f_part and of f_not_part.

    Pairs are built from ``identity`` (default ``arrays["label/<part>"]``) with ``make_pairs``.
    """
    from facefactors.data.pairs import make_pairs
    from facefactors.eval.verification import verify

    ids = np.asarray(arrays[f"label/{part}"] if identity is None else identity)
    pairs = make_pairs(ids, n_folds, per_fold, seed)
    out: dict[str, Any] = {"complement_parts": list(complement_parts), "n_pairs": len(pairs),
                           "n_folds": pairs.n_folds}
    for name, x in (("part", np.asarray(arrays[f"part/{part}"], np.float32)),
                    ("complement", complement_features(arrays, complement_parts))):
        out[name] = {k: v for k, v in verify(x, pairs).items() if k != "roc"}
    return out


def complement_headline(metrics: Mapping[str, Any], probe: str = "linear") -> list[str]:
    """Short lines: per part, f_p vs f_not_p (normalized probe accuracy, AUC, verification)."""
    lines = []
    for p, e in (metrics.get("probes") or {}).items():
        if "r2" in e.get("part", {}):
            lines.append(f"{p}: R^2 f_p {e['part']['r2']:.3f}, f_not_p {e['complement']['r2']:.3f}")
            continue
        if probe not in e.get("part", {}):
            continue
        a, b = e["part"][probe]["normalized"], e["complement"][probe]["normalized"]
        r = e["leakage_ratio"].get(probe)
        auc = ""
        if e["part"].get("auc") is not None and e["complement"].get("auc") is not None:
            auc = f"; AUC {e['part']['auc']:.3f} / {e['complement']['auc']:.3f}"
        lines.append(f"{p}: {probe} probe normalized f_p {a:.3f}, f_not_p {b:.3f} "
                     f"(ratio {'n/a' if r is None else f'{r:.2f}'}){auc}")
    for p, v in (metrics.get("verification") or {}).items():
        if "part" in v:
            lines.append(f"{p} verification accuracy f_p {v['part']['accuracy']:.3f}, "
                         f"f_not_p {v['complement']['accuracy']:.3f}")
    return lines


def plot_complements(metrics: Mapping[str, Any], path: str | Path, probe: str = "linear") -> None:
    """Bars per part: f_p against f_not_p (normalized probe accuracy; AUC; verification accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facefactors.io import save_figure

    panels = []
    probes = {p: e for p, e in (metrics.get("probes") or {}).items() if probe in e.get("part", {})}
    if probes:
        panels.append((f"{probe} probe, normalized accuracy", {p: (e["part"][probe]["normalized"],
                                                                   e["complement"][probe]["normalized"])
                                                               for p, e in probes.items()}))
    aucs = {p: (e["part"]["auc"], e["complement"]["auc"]) for p, e in probes.items()
            if e["part"].get("auc") is not None and e["complement"].get("auc") is not None}
    if aucs:
        panels.append(("linear probe ROC AUC (macro one-vs-rest)", aucs))
    ver = {p: (v["part"]["accuracy"], v["complement"]["accuracy"])
           for p, v in (metrics.get("verification") or {}).items() if "part" in v}
    if ver:
        panels.append(("verification accuracy (k-fold)", ver))
    if not panels:
        raise FacefactorsError("nothing to plot: no part / complement results")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False,
                             layout="constrained")
    for ax, (title, values) in zip(axes[0], panels):
        names = list(values)
        x = np.arange(len(names))
        ax.bar(x - 0.2, [values[n][0] for n in names], 0.4, label="f_p", color="#2563eb")
        ax.bar(x + 0.2, [values[n][1] for n in names], 0.4, label="f_not_p", color="#f97316")
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1.05)
    axes[0][0].legend(fontsize=8)
    save_figure(path, fig)


def complement_evaluation(model, ds: ImageDataset, out_dir: str | Path, cfg: ComplementConfig | None = None,
                          device: str | torch.device = "cpu", log: Callable[[str], None] = print, *,
                          train: Mapping[str, np.ndarray] | None = None,
                          test: Mapping[str, np.ndarray] | None = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """Part / complement discriminability of a model: (metrics, {figure title: path}).

    ``train``/``test`` may pass ``encode_split`` arrays already at hand (else seeded subsamples
    are encoded). Verification of the ``cfg.verify`` attributes uses the ``unseen`` split when
    the dataset has one, else the test split. The figure goes to ``out_dir/figures/complements.png``.
    """
    from facefactors.eval.latents import encode_split

    cfg = cfg or ComplementConfig()
    t_start = time.perf_counter()
    parts = list(model.part_names)
    rng = np.random.default_rng([cfg.seed, 43])

    def pick(split: str, n: int) -> np.ndarray:
        idx = np.asarray(ds.split(split), np.int64)
        return np.sort(idx[subsample(len(idx), n, rng)])

    if train is None:
        train = encode_split(model, ds, pick("train", cfg.max_train), cfg.batch_size, device)
    if test is None:
        test = encode_split(model, ds, pick("test", cfg.max_test), cfg.batch_size, device)
    log("complements: probes on each part and its complement")
    metrics: dict[str, Any] = {"config": dataclasses.asdict(cfg)}
    metrics["config"]["probes"] = list(cfg.probes)
    metrics["config"]["verify"] = list(cfg.verify)
    metrics["probes"] = discriminability(train, test, ds.attributes, parts, lambda p: complement_of(model, p),
                                         cfg.probes, cfg.max_train, cfg.max_test, cfg.mlp_hidden,
                                         cfg.auc_max_classes, cfg.seed, log)
    metrics["verification"] = {}
    targets = [a for a in cfg.verify if a in parts and a in ds.labels]
    if targets:
        unseen = ds.splits.get("unseen")
        split = "unseen" if unseen is not None and len(unseen) else "test"
        arrays = encode_split(model, ds, pick(split, cfg.max_verify_images), cfg.batch_size, device)
        for a in targets:
            try:
                metrics["verification"][a] = dict(
                    verification_discriminability(arrays, a, complement_of(model, a), None, cfg.n_folds,
                                                  cfg.pairs_per_fold, cfg.seed), split=split)
            except FacefactorsError as e:
                metrics["verification"][a] = {"skipped": str(e)}
    for line in complement_headline(metrics):
        log("  " + line)
    figures: dict[str, Path] = {}
    if metrics["probes"] or any("part" in v for v in metrics["verification"].values()):
        path = Path(out_dir) / "figures" / "complements.png"
        plot_complements(metrics, path, cfg.probes[0] if cfg.probes else "linear")
        figures["Each part f_p against its complement f_not_p (everything else)"] = path
    metrics["seconds"] = round(time.perf_counter() - t_start, 1)
    return metrics, figures
