"""Face verification on any features: cosine similarity, 10-fold accuracy, TPR at a fixed FPR, ROC.

The LFW protocol (Huang et al. 2007, as used by D2AE): pairs in person-disjoint folds
(``facefactors.data.pairs``); for each fold a similarity threshold is chosen to maximise
accuracy on the other folds and scored on this one; the mean over folds is the accuracy.
TPR at FPR 1e-3 is read off the ROC curve of all pairs: the largest true-positive rate whose
false-positive rate does not exceed 1e-3 (with 3,000 mismatched pairs, at most 3 accepted).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from facefactors.data.pairs import Pairs
from facefactors.errors import FacefactorsError


def cosine_scores(features: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity between rows ``features[a[i]]`` and ``features[b[i]]`` (0 for a zero vector)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise FacefactorsError(f"features must be (N, D), got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norm > 0, norm, 1.0)
    return np.einsum("ij,ij->i", x[np.asarray(a)], x[np.asarray(b)])


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), accepting pairs with score >= threshold, from (0, 0) to (1, 1).

    Tied scores form one point; thresholds decrease (the first is +inf).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise FacefactorsError("a ROC curve needs both matched and mismatched pairs")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]   # last position of each distinct score
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    return fpr, tpr, np.r_[np.inf, s[last]]


def tpr_at_fpr(scores: np.ndarray, same: np.ndarray, target: float = 1e-3) -> float:
    """The largest TPR over thresholds whose FPR is at most ``target``."""
    fpr, tpr, _ = roc_curve(scores, same)
    return float(tpr[fpr <= target + 1e-12].max())


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a ROC curve (trapezoids)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy of ``score >= threshold``; thresholds lie midway
    between distinct scores (or just outside their range), ties broken towards the middle one."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    if s.size == 0:
        raise FacefactorsError("no pairs to choose a threshold on")
    u = np.unique(s)
    cand = np.r_[u[0] - 1.0, (u[:-1] + u[1:]) / 2.0, u[-1] + 1.0]
    # accepted positives / negatives for each candidate: scores >= cand
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    tp = len(pos) - np.searchsorted(pos, cand, side="left")
    tn = np.searchsorted(neg, cand, side="left")
    acc = (tp + tn) / s.size
    best = np.flatnonzero(acc == acc.max())
    k = best[len(best) // 2]
    return float(cand[k]), float(acc[k])


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, fold: np.ndarray) -> dict[str, object]:
    """LFW accuracy: per fold, the threshold that is best on the other folds, scored on this fold."""
    s, y, f = np.asarray(scores), np.asarray(same, dtype=bool), np.asarray(fold)
    folds = np.unique(f)
    if len(folds) < 2:
        raise FacefactorsError("k-fold verification accuracy needs at least 2 folds")
    accs, thresholds = [], []
    for k in folds:
        test = f == k
        t, _ = best_threshold(s[~test], y[~test])
        accs.append(float(np.mean((s[test] >= t) == y[test])))
        thresholds.append(t)
    return {"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
            "fold_accuracy": accs, "thresholds": thresholds}


def verify(features: np.ndarray, pairs: Pairs, fpr_target: float = 1e-3) -> dict[str, object]:
    """Verification metrics of one feature set on ``pairs`` (positions index ``features``).

    Returns ``accuracy`` (10-fold), ``accuracy_std``, ``tpr_at_fpr`` (at ``fpr_target``),
    ``fpr_target``, ``auc``, ``threshold`` (median of the fold thresholds), ``n_pairs``,
    ``n_folds``, and ``roc`` = {"fpr", "tpr"} arrays for plotting (not for JSON).
    """
    if len(pairs) == 0:
        raise FacefactorsError("no verification pairs")
    scores = cosine_scores(features, pairs.a, pairs.b)
    fpr, tpr, _ = roc_curve(scores, pairs.same)
    k = kfold_accuracy(scores, pairs.same, pairs.fold)
    return {"accuracy": k["accuracy"], "accuracy_std": k["accuracy_std"],
            "tpr_at_fpr": tpr_at_fpr(scores, pairs.same, fpr_target), "fpr_target": fpr_target,
            "auc": auc(fpr, tpr), "threshold": float(np.median(k["thresholds"])),
            "mean_score_matched": float(scores[pairs.same].mean()),
            "mean_score_mismatched": float(scores[~pairs.same].mean()),
            "n_pairs": len(pairs), "n_folds": pairs.n_folds, "roc": {"fpr": fpr, "tpr": tpr}}


def feature_sets(arrays: Mapping[str, np.ndarray], parts: Sequence[str] | None = None,
                 concat: bool = True) -> dict[str, np.ndarray]:
    """Each ``part/<name>`` of an ``encode_split`` result, plus their concatenation named
    ``"a+b+..."`` when there is more than one part (the paper's f_C = [f_T, f_P])."""
    if parts is None:
        parts = [k[len("part/"):] for k in arrays if k.startswith("part/")]
    missing = [p for p in parts if f"part/{p}" not in arrays]
    if missing:
        raise FacefactorsError(f"latent part(s) {missing} missing from the encoded arrays")
    out = {p: np.asarray(arrays[f"part/{p}"], dtype=np.float32) for p in parts}
    if concat and len(parts) > 1:
        out["+".join(parts)] = np.concatenate([out[p] for p in parts], axis=1)
    return out


def verification_report(arrays: Mapping[str, np.ndarray], pairs: Pairs, parts: Sequence[str] | None = None,
                        fpr_target: float = 1e-3) -> dict[str, dict[str, object]]:
    """``verify`` for every part and the concatenation of all parts."""
    return {name: verify(x, pairs, fpr_target) for name, x in feature_sets(arrays, parts).items()}


def without_curves(report: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, object]]:
    """A verification report without the ROC arrays (what goes into metrics.json)."""
    return {k: {m: v for m, v in r.items() if m != "roc"} for k, r in report.items()}


def paired_difference(scores_a: np.ndarray, scores_b: np.ndarray, pairs: Pairs, n_boot: int = 2000,
                      seed: int = 0) -> dict[str, object]:
    """How much better features B verify than features A on the *same* pairs (B minus A).

    Two models scored on one pair list are paired samples, so their difference is far better
    determined than either figure alone. Returns the AUC and 10-fold accuracy of each, the
    per-fold accuracy differences (and how many folds favour B), and a bootstrap over pairs
    (resampled within matched and within mismatched pairs, the same draw for A and B): the
    95% interval of the AUC difference and ``p_auc_not_greater``, the share of draws in which
    B's AUC does not exceed A's (a one-sided bootstrap p-value).
    """
    from scipy.stats import rankdata

    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape or a.shape != (len(pairs),):
        raise FacefactorsError(f"paired verification needs one score per pair for both feature sets: "
                               f"{a.shape} and {b.shape} for {len(pairs)} pairs")
    same = np.asarray(pairs.same, dtype=bool)
    pos, neg = np.flatnonzero(same), np.flatnonzero(~same)
    if pos.size == 0 or neg.size == 0:
        raise FacefactorsError("paired verification needs both matched and mismatched pairs")

    def auc_of(s: np.ndarray, p: np.ndarray, n: np.ndarray) -> float:   # Mann-Whitney U / (n_p n_n)
        r = rankdata(np.r_[s[p], s[n]])
        return float((r[:p.size].sum() - p.size * (p.size + 1) / 2) / (p.size * n.size))

    ka, kb = kfold_accuracy(a, same, pairs.fold), kfold_accuracy(b, same, pairs.fold)
    fold_diff = np.asarray(kb["fold_accuracy"]) - np.asarray(ka["fold_accuracy"])
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        p = rng.choice(pos, pos.size)
        n = rng.choice(neg, neg.size)
        diffs[i] = auc_of(b, p, n) - auc_of(a, p, n)
    auc_a, auc_b = auc_of(a, pos, neg), auc_of(b, pos, neg)
    return {"auc_a": auc_a, "auc_b": auc_b, "auc_difference": auc_b - auc_a,
            "auc_difference_ci95": [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))],
            "p_auc_not_greater": float(np.mean(diffs <= 0.0)),
            "accuracy_a": ka["accuracy"], "accuracy_b": kb["accuracy"],
            "accuracy_difference": kb["accuracy"] - ka["accuracy"],
            "fold_accuracy_difference": fold_diff.tolist(),
            "folds_favouring_b": int(np.sum(fold_diff > 0)), "folds_favouring_a": int(np.sum(fold_diff < 0)),
            "n_pairs": len(pairs), "n_boot": int(n_boot)}
