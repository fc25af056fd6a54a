"""MIG, DCI and SAP with the definitions of disentanglement_lib (Locatello et al. 2019).

Codes are (N, D) arrays: the dimensions of every latent part concatenated, each element of a
sub-vector or map one dimension. Factors are (N, F) arrays of discrete values; continuous
factors are binned first by ``discretize`` (the same histogram binning disentanglement_lib
applies to codes: ``n_bins`` equal-width bins over the column's range).

- MIG (Chen et al.): codes binned into 20 equal-width bins per dimension; mutual information
  I(code_d; factor_f) as ``sklearn.metrics.mutual_info_score`` (nats); per factor the gap
  between the two most informative dimensions divided by the factor's entropy; mean over
  factors. Computed from contingency tables for all dimensions at once (equal to sklearn's
  value, see the tests). Factors with zero entropy (constant) are left out.
- DCI (Eastwood & Williams): one ``GradientBoostingClassifier`` per factor on the codes; the
  absolute feature importances form the (D, F) importance matrix R. Disentanglement =
  sum_d rho_d (1 - H_F(R_d.)) with rho_d the dimension's share of the total importance;
  completeness = sum_f rho_f (1 - H_D(R_.f)); informativeness = mean test accuracy.
  disentanglement_lib uses 100 estimators on 10,000 train / 5,000 test points; ``n_estimators``
  and the sample sizes are parameters here because GBT cost grows with D x classes (see
  ``evaluate.EvalConfig``). With many more dimensions than tree splits the importance matrix
  is sparse and D reads high even for pure noise: with the evaluation defaults (500 points,
  10 estimators) noise codes against the 12 SynthFaces factors gave D = 0.04 for 16
  dimensions, 0.20 for 160 and 0.80 for 4096. ``chance=True`` in the wrapper measures this
  floor for the codes at hand (the same fit on codes whose rows are shuffled against the
  factors); compare D across methods only with it in view.
- SAP (Kumar et al.): score matrix (D, F): discrete factors -> test accuracy of a 1-D
  ``LinearSVC(C=0.01, class_weight="balanced")`` per (dimension, factor) trained on the train
  codes; continuous (``continuous=True``) -> squared correlation on the train codes. SAP =
  mean over factors of the gap between the two best dimensions. The 1-D linear SVMs are solved
  exactly (squared hinge, L2-regularized weight and intercept, one-vs-rest with liblinear's
  class weighting) by a batched Newton method on prefix sums of sorted codes, which is what
  makes thousands of dimensions affordable; ``sap_score_matrix(..., solver="sklearn")`` runs
  sklearn's LinearSVC itself (used by the tests to check agreement).
"""
from __future__ import annotations

import time
import warnings
from typing import Callable, Mapping, Sequence

import numpy as np
import scipy.stats

from facefactors.data.specs import AttributeSpec
from facefactors.errors import FacefactorsError

SAP_C = 0.01


# ------------------------------------------------------------------------------------ inputs
def _as_2d(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise FacefactorsError(f"{what} must be an (N, D) array, got shape {x.shape}")
    if x.shape[0] == 0:
        raise FacefactorsError(f"{what} is empty")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise FacefactorsError(f"{what} has non-finite values")
    return x


def _check_pair(codes: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes, factors = _as_2d(codes, "codes"), _as_2d(factors, "factors")
    if codes.shape[0] != factors.shape[0]:
        raise FacefactorsError(f"codes ({codes.shape[0]} rows) and factors ({factors.shape[0]} rows) differ in length")
    return codes, factors


def discretize(x: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """disentanglement_lib's histogram discretizer, column-wise: ``n_bins`` equal-width bins over
    each column's [min, max]; values 1..n_bins (a constant column -> all one value)."""
    x = _as_2d(x, "values").astype(np.float64, copy=False)
    out = np.empty(x.shape, np.int64)
    for j in range(x.shape[1]):
        col = x[:, j]
        edges = np.histogram(col, n_bins)[1][:-1]
        out[:, j] = np.digitize(col, edges)
    return out


def _codes_of(y: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels -> 0..K-1 and K."""
    uniq, inv = np.unique(np.asarray(y), return_inverse=True)
    return inv.reshape(-1).astype(np.int64), len(uniq)


# ------------------------------------------------------------------------------------ MIG
def mutual_info_matrix(codes_discrete: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """(D, F) mutual information (nats) between discrete code columns and factor columns,
    equal to ``sklearn.metrics.mutual_info_score(factor, code)`` for every pair."""
    codes_discrete, factors = _check_pair(codes_discrete, factors)
    n, d = codes_discrete.shape
    cb = np.empty((n, d), np.int64)
    nb = np.empty(d, np.int64)
    for j in range(d):
        cb[:, j], nb[j] = _codes_of(codes_discrete[:, j])
    b = int(nb.max())
    out = np.zeros((d, factors.shape[1]))
    for f in range(factors.shape[1]):
        y, k = _codes_of(factors[:, f])
        flat = (np.arange(d)[None, :] * b + cb) * k + y[:, None]
        joint = np.bincount(flat.ravel(), minlength=d * b * k).reshape(d, b, k) / n
        pc = joint.sum(2, keepdims=True)
        py = joint.sum(1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            term = np.where(joint > 0, joint * (np.log(joint) - np.log(pc) - np.log(py)), 0.0)
        out[:, f] = np.maximum(term.sum((1, 2)), 0.0)
    return out


def discrete_entropy(factors: np.ndarray) -> np.ndarray:
    """(F,) entropy (nats) of each discrete factor column."""
    factors = _as_2d(factors, "factors")
    h = np.zeros(factors.shape[1])
    for f in range(factors.shape[1]):
        _, counts = np.unique(factors[:, f], return_counts=True)
        p = counts / counts.sum()
        h[f] = float(-(p * np.log(p)).sum())
    return h


def mig_details(codes: np.ndarray, factors: np.ndarray, n_bins: int = 20) -> dict:
    """MIG with its parts: ``{"mig", "per_factor" (gap / entropy, None for constant factors),
    "top_dim" (most informative dimension per factor), "mutual_info" (D, F)}``."""
    codes, factors = _check_pair(codes, factors)
    m = mutual_info_matrix(discretize(codes, n_bins), factors)
    h = discrete_entropy(factors)
    srt = np.sort(m, axis=0)[::-1]
    second = srt[1] if m.shape[0] > 1 else np.zeros(m.shape[1])
    per = [float((srt[0, f] - second[f]) / h[f]) if h[f] > 0 else None for f in range(m.shape[1])]
    valid = [v for v in per if v is not None]
    return {"mig": float(np.mean(valid)) if valid else None, "per_factor": per,
            "top_dim": [int(i) for i in np.argmax(m, axis=0)], "mutual_info": m}


def mig(codes: np.ndarray, factors: np.ndarray, n_bins: int = 20) -> float | None:
    """Mutual information gap (disentanglement_lib ``discrete_mig``); None without a non-constant factor."""
    return mig_details(codes, factors, n_bins)["mig"]


# ------------------------------------------------------------------------------------ DCI
def _entropy_based(p: np.ndarray, base: int) -> np.ndarray:
    """1 - entropy (base ``base``) of each column of p (normalized like scipy.stats.entropy)."""
    if base <= 1:
        return np.ones(p.shape[1])
    return 1.0 - scipy.stats.entropy(p + 1e-11, base=base)


def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) from a (D, F) importance matrix, as disentanglement_lib."""
    r = np.abs(np.asarray(importance, np.float64))
    per_code = _entropy_based(r.T, r.shape[1])
    per_factor = _entropy_based(r, r.shape[0])
    weights = r if r.sum() > 0 else np.ones_like(r)
    code_w = weights.sum(1) / weights.sum()
    factor_w = weights.sum(0) / weights.sum()
    return float(np.sum(per_code * code_w)), float(np.sum(per_factor * factor_w))


def importance_gbt(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
                   factors_test: np.ndarray, n_estimators: int = 100, seed: int = 0,
                   max_features: int | None = None) -> tuple[np.ndarray, list[float], list[float]]:
    """(D, F) GBT importance matrix, per-factor train and test accuracies. ``max_features``
    (when below D) makes each split consider that many random dimensions (sklearn's option)."""
    from sklearn.ensemble import GradientBoostingClassifier

    importance = np.zeros((codes_train.shape[1], factors_train.shape[1]))
    train_acc, test_acc = [], []
    for f in range(factors_train.shape[1]):
        y = factors_train[:, f]
        mf = max_features if max_features is not None and max_features < codes_train.shape[1] else None
        model = GradientBoostingClassifier(n_estimators=n_estimators, random_state=seed, max_features=mf)
        model.fit(codes_train, y)
        importance[:, f] = np.abs(model.feature_importances_)
        train_acc.append(float(np.mean(model.predict(codes_train) == y)))
        test_acc.append(float(np.mean(model.predict(codes_test) == factors_test[:, f])))
    return importance, train_acc, test_acc


def dci(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray, factors_test: np.ndarray,
        n_estimators: int = 100, seed: int = 0, max_features: int | None = None, details: bool = False) -> dict:
    """``{"disentanglement", "completeness", "informativeness"}`` (informativeness = mean test
    accuracy of the GBTs; ``informativeness_train`` too). Factors constant on the train set are
    left out (a classifier cannot be fit). ``max_features``: see ``importance_gbt`` (None, the
    default, is disentanglement_lib's setting). ``details`` adds the importance matrix."""
    codes_train, factors_train = _check_pair(codes_train, factors_train)
    codes_test, factors_test = _check_pair(codes_test, factors_test)
    if codes_train.shape[1] != codes_test.shape[1] or factors_train.shape[1] != factors_test.shape[1]:
        raise FacefactorsError("train and test codes/factors must have the same columns")
    keep = [f for f in range(factors_train.shape[1]) if np.unique(factors_train[:, f]).size > 1]
    if not keep:
        return {"disentanglement": None, "completeness": None, "informativeness": None}
    imp, tr, te = importance_gbt(codes_train, factors_train[:, keep], codes_test, factors_test[:, keep],
                                 n_estimators, seed, max_features)
    d, c = dci_from_importance(imp)
    out = {"disentanglement": d, "completeness": c, "informativeness": float(np.mean(te)),
           "informativeness_train": float(np.mean(tr))}
    if details:
        out["importance"] = imp
        out["factors_used"] = keep
    return out


# ------------------------------------------------------------------------------------ SAP
def _class_weights(y: np.ndarray, k: int) -> np.ndarray:
    """sklearn's ``class_weight="balanced"``: n / (K * count)."""
    counts = np.bincount(y, minlength=k).astype(np.float64)
    return len(y) / (k * np.maximum(counts, 1))


def _svm_1d(x: np.ndarray, y: np.ndarray, k: int, c: float = SAP_C, iters: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Exact 1-D L2-regularized squared-hinge SVMs (liblinear's primal, intercept regularized
    as an extra feature of value 1), one-vs-rest for K > 2 (positives weighted C*w_k, negatives
    C), one problem for K == 2 (class 1 positive; each class weighted C*w_class), w_k the
    "balanced" class weights. x (n, Dc); y (n,) in 0..k-1. Returns w, b of shape (Dc, P),
    P = 1 (binary) or K.

    In 1-D the active set of a hinge is a prefix or suffix of the sorted points of each class,
    so the objective, gradient and Hessian come from prefix sums of (1, x, x^2): over all
    points sorted per dimension, and over each class's points sorted per dimension. A damped
    Newton step then costs O(log n) per (dimension, class) problem.
    """
    n, dc = x.shape
    cw = _class_weights(y, k)
    if k == 2:
        pos_class = np.array([1])
        c_pos, c_neg = np.array([c * cw[1]]), np.array([c * cw[0]])
    else:
        pos_class = np.arange(k)
        c_pos, c_neg = c * cw, np.full(k, c)
    p = len(pos_class)
    lo, hi = x.min(0), x.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    xn = (x - lo) / span                                           # in [0, 1] per dimension
    dims = np.arange(dc)

    def prefix(v: np.ndarray) -> np.ndarray:
        """(Dc, n+1, 3) prefix sums of (1, v, v^2) along the sorted axis."""
        stack = np.stack([np.ones_like(v), v, v * v], -1).transpose(1, 0, 2)
        return np.concatenate([np.zeros((dc, 1, 3)), np.cumsum(stack, 1)], 1)

    # All points sorted per dimension; each dimension's normalized values offset by 3*d so that
    # one searchsorted over the flat array serves every dimension.
    order = np.argsort(x, axis=0, kind="stable")
    cs_all = prefix(np.take_along_axis(x, order, 0))
    flat_all = (np.take_along_axis(xn, order, 0) + 3.0 * dims).T.reshape(-1)
    # Points sorted by (class, value) per dimension; segment (d, class) offset by 3*(d*k + class).
    counts = np.bincount(y, minlength=k)
    starts = np.concatenate([[0], np.cumsum(counts)])
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n)[:, None].repeat(dc, 1), 0)
    corder = np.argsort(y[:, None] * n + rank, axis=0, kind="stable")
    seg = y[corder]
    cs_cls = prefix(np.take_along_axis(x, corder, 0))
    flat_cls = (np.take_along_axis(xn, corder, 0) + 3.0 * (dims[None, :] * k + seg)).T.reshape(-1)

    d_idx = dims[:, None].repeat(p, 1)                             # (Dc, P)
    cls_start = starts[pos_class][None, :] + 0 * d_idx             # class segment start within a dim
    n_cls = counts[pos_class][None, :] + 0 * d_idx

    def norm_t(t: np.ndarray) -> np.ndarray:
        return np.clip((t - lo[:, None]) / span[:, None], -1.0, 2.0)

    def below_all(t: np.ndarray, side: str) -> np.ndarray:
        return np.searchsorted(flat_all, norm_t(t) + 3.0 * d_idx, side=side) - d_idx * n

    def below_cls(t: np.ndarray, side: str) -> np.ndarray:
        u = norm_t(t) + 3.0 * (d_idx * k + pos_class[None, :])
        return np.searchsorted(flat_cls, u, side=side) - (d_idx * n + cls_start)

    def seg_sum(cs: np.ndarray, base: np.ndarray, i0: np.ndarray, i1: np.ndarray) -> np.ndarray:
        i1 = np.maximum(i1, i0)
        return cs[d_idx, base + i1] - cs[d_idx, base + i0]

    def active_sums(w: np.ndarray, b: np.ndarray):
        """Weighted (S0, S1, S2) over active positives (w x + b < 1) and negatives (w x + b > -1)."""
        zero = np.zeros(w.shape, np.int64)
        safe = np.where(w == 0, 1.0, w)
        tp, tn = (1.0 - b) / safe, (-1.0 - b) / safe
        pos, neg = w > 0, w < 0
        # positives active: w>0 -> x < tp (prefix); w<0 -> x > tp (suffix); w=0 -> all when b < 1
        p0 = np.where(neg, below_cls(tp, "right"), zero)
        p1 = np.where(pos, below_cls(tp, "left"), np.where(neg | (b < 1), n_cls, zero))
        sp = seg_sum(cs_cls, cls_start, p0, p1)
        # negatives (all points minus the positives) active: w>0 -> x > tn; w<0 -> x < tn; w=0 -> all when b > -1
        a0 = np.where(pos, below_all(tn, "right"), zero)
        a1 = np.where(neg, below_all(tn, "left"), np.where(pos | (b > -1), n, zero))
        q0 = np.where(pos, below_cls(tn, "right"), zero)
        q1 = np.where(neg, below_cls(tn, "left"), np.where(pos | (b > -1), n_cls, zero))
        sn = seg_sum(cs_all, 0 * d_idx, a0, a1) - seg_sum(cs_cls, cls_start, q0, q1)
        return sp * c_pos[None, :, None], sn * c_neg[None, :, None]

    def objective(w, b, sp, sn):
        def part(s, sign):
            s0, s1, s2 = s[..., 0], s[..., 1], s[..., 2]
            return s0 - 2 * sign * (w * s1 + b * s0) + w * w * s2 + 2 * w * b * s1 + b * b * s0
        return 0.5 * (w * w + b * b) + part(sp, 1.0) + part(sn, -1.0)

    w = np.zeros((dc, p))
    b = np.zeros((dc, p))
    sp, sn = active_sums(w, b)
    f = objective(w, b, sp, sn)
    for _ in range(iters):
        gw, gb = w.copy(), b.copy()
        hww, hwb, hbb = np.ones_like(w), np.zeros_like(w), np.ones_like(w)
        for s, sign in ((sp, 1.0), (sn, -1.0)):
            s0, s1, s2 = s[..., 0], s[..., 1], s[..., 2]
            # d/dw, d/db of sum c (1 - sign (w x + b))^2 over the active set
            gw += -2 * (sign * s1 - w * s2 - b * s1)
            gb += -2 * (sign * s0 - w * s1 - b * s0)
            hww += 2 * s2
            hwb += 2 * s1
            hbb += 2 * s0
        det = hww * hbb - hwb * hwb
        dw = -(hbb * gw - hwb * gb) / det
        db = -(hww * gb - hwb * gw) / det
        slope = gw * dw + gb * db
        if np.max(-slope) < 1e-20:
            break
        step = np.ones_like(w)
        todo = -slope >= 1e-20
        for _ls in range(40):
            cw_, cb_ = w + step * dw, b + step * db
            csp, csn = active_sums(cw_, cb_)
            cf = objective(cw_, cb_, csp, csn)
            ok = todo & (cf <= f + 1e-4 * step * slope + 1e-13 * np.abs(f))
            w, b, f = np.where(ok, cw_, w), np.where(ok, cb_, b), np.where(ok, cf, f)
            sp, sn = np.where(ok[..., None], csp, sp), np.where(ok[..., None], csn, sn)
            todo &= ~ok
            if not todo.any():
                break
            step = np.where(todo, step * 0.5, step)
    return w, b


def _svm_predict(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Predicted classes (n, Dc) from ``_svm_1d`` parameters."""
    if w.shape[1] == 1:
        return (x * w[None, :, 0] + b[None, :, 0] > 0).astype(np.int64)
    dec = x[:, :, None] * w[None] + b[None]
    return np.argmax(dec, axis=2)


def _svm_accuracy_sklearn(x_tr, y_tr, x_te, y_te) -> np.ndarray:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    acc = np.zeros(x_tr.shape[1])
    for j in range(x_tr.shape[1]):
        clf = LinearSVC(C=SAP_C, class_weight="balanced")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x_tr[:, j:j + 1], y_tr)
        acc[j] = np.mean(clf.predict(x_te[:, j:j + 1]) == y_te)
    return acc


def sap_score_matrix(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
                     factors_test: np.ndarray, continuous: bool = False, solver: str = "exact",
                     chunk: int = 256) -> np.ndarray:
    """(D, F) SAP score matrix (see module doc); factors with one train class score 0."""
    codes_train, factors_train = _check_pair(codes_train, factors_train)
    codes_test, factors_test = _check_pair(codes_test, factors_test)
    xtr = codes_train.astype(np.float64)
    d, nf = xtr.shape[1], factors_train.shape[1]
    scores = np.zeros((d, nf))
    if continuous:
        for f in range(nf):
            y = factors_train[:, f].astype(np.float64)
            xm = xtr - xtr.mean(0)
            ym = y - y.mean()
            cov = (xm * ym[:, None]).sum(0) / max(len(y) - 1, 1)
            var_x = (xm ** 2).sum(0) / max(len(y) - 1, 1)
            var_y = (ym ** 2).sum() / max(len(y) - 1, 1)
            ok = (var_x > 1e-12) & (var_y > 0)
            scores[:, f] = np.where(ok, cov ** 2 / np.where(ok, var_x * var_y, 1.0), 0.0)
        return scores
    xte = codes_test.astype(np.float64)
    for f in range(nf):
        classes, y_tr = np.unique(factors_train[:, f], return_inverse=True)
        y_tr = y_tr.reshape(-1)
        if len(classes) < 2:
            continue
        if solver == "sklearn":
            scores[:, f] = _svm_accuracy_sklearn(xtr, factors_train[:, f], xte, factors_test[:, f])
            continue
        if solver != "exact":
            raise FacefactorsError(f"unknown SAP solver {solver!r}; use 'exact' or 'sklearn'")
        # Test labels as train class indices; classes unseen in training can never be predicted.
        pos = np.searchsorted(classes, factors_test[:, f])
        pos = np.clip(pos, 0, len(classes) - 1)
        y_te = np.where(classes[pos] == factors_test[:, f], pos, -1)
        step = max(1, int(chunk))
        for s in range(0, d, step):
            w, b = _svm_1d(xtr[:, s:s + step], y_tr, len(classes))
            pred = _svm_predict(w, b, xte[:, s:s + step])
            scores[s:s + step, f] = np.mean(pred == y_te[:, None], axis=0)
    return scores


def sap(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray, factors_test: np.ndarray,
        continuous: bool = False, solver: str = "exact") -> float:
    """SAP score: mean over factors of the gap between the two best dimensions' scores
    (factors constant on the train set are left out)."""
    m = sap_score_matrix(codes_train, factors_train, codes_test, factors_test, continuous, solver)
    keep = [f for f in range(m.shape[1]) if np.unique(np.asarray(_as_2d(factors_train, "factors"))[:, f]).size > 1]
    if not keep:
        return None
    srt = np.sort(m[:, keep], axis=0)
    second = srt[-2] if srt.shape[0] > 1 else np.zeros(len(keep))
    return float(np.mean(srt[-1] - second))


# ------------------------------------------------------------------------------------ wrappers
def codes_of(arrays: Mapping[str, np.ndarray], parts: Sequence[str] | None = None) -> np.ndarray:
    """(N, D) concatenation of the parts' flattened codes in an ``encode_split`` result."""
    parts = list(parts) if parts is not None else [k[5:] for k in arrays if k.startswith("part/")]
    if not parts:
        raise FacefactorsError("no latent parts in the encoded arrays")
    return np.concatenate([np.asarray(arrays[f"part/{p}"], np.float64).reshape(len(arrays[f"part/{p}"]), -1)
                           for p in parts], axis=1)


def factor_table(train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                 attributes: Mapping[str, AttributeSpec], names: Sequence[str] | None = None,
                 n_bins: int = 20) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Discrete factor matrices (train, test) from the labelled attributes in ``encode_split``
    results: discrete labels as they are; continuous labels binned into ``n_bins`` equal-width
    bins over the train range (test values clipped into the same bins). Returns (names,
    train (N, F), test (M, F), binned names)."""
    if names is None:
        names = [a for a in attributes if f"label/{a}" in train and f"label/{a}" in test]
    cols_tr, cols_te, binned = [], [], []
    for a in names:
        if a not in attributes:
            raise FacefactorsError(f"unknown factor {a!r} for MIG/DCI/SAP; attributes: {', '.join(attributes)}")
        ytr, yte = np.asarray(train[f"label/{a}"]), np.asarray(test[f"label/{a}"])
        if attributes[a].kind == "continuous":
            edges = np.histogram(ytr.astype(np.float64), n_bins)[1][:-1]
            ytr, yte = np.digitize(ytr, edges), np.digitize(yte, edges)
            binned.append(a)
        cols_tr.append(ytr.astype(np.int64))
        cols_te.append(yte.astype(np.int64))
    if not cols_tr:
        return [], np.zeros((len(train["index"]), 0), np.int64), np.zeros((len(test["index"]), 0), np.int64), []
    return list(names), np.stack(cols_tr, 1), np.stack(cols_te, 1), binned


def disentanglement_metrics(train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                            attributes: Mapping[str, AttributeSpec], parts: Sequence[str] | None = None,
                            factors: Sequence[str] | None = None, n_bins: int = 20,
                            mig_max: int | None = 10000, dci_max_train: int | None = 500,
                            dci_max_test: int | None = 500, dci_estimators: int = 10,
                            dci_max_features: int | None = 256,
                            sap_max_train: int | None = 2000, sap_max_test: int | None = 1000,
                            dci_chance: bool = False, seed: int = 0,
                            log: Callable[[str], None] | None = None) -> dict:
    """MIG (on test-split codes), DCI and SAP (fit on train-split codes, scored on test-split
    codes) over all parts' dimensions against every labelled attribute (``factors`` to choose).

    Sample sizes are smaller than disentanglement_lib's (10,000 / 5,000) to bound the time:
    MIG and SAP are cheap here, the GBTs of DCI are not (their cost grows with samples x
    dimensions x classes per factor; SynthFaces has ~200 classes over its factors), hence 500 /
    500 points, 10 estimators (dlib: 100) and, for codes wider than 256 dimensions, 256 random
    candidate dimensions per split. ``disentanglement_info`` records every size used.
    ``dci_chance`` adds ``disentanglement_chance``/``completeness_chance`` to the DCI entry: the
    same fit on train codes shuffled against their factors (the floor of D for this many
    dimensions; doubles the DCI time).

    Returns ``{"mig": m, "dci": {...}, "sap": s, "disentanglement_info": {...}}``; values are None
    when no factor varies.
    """
    log = log or (lambda s: None)
    rng = np.random.default_rng([seed, 7])
    names, f_tr, f_te, binned = factor_table(train, test, attributes, factors, n_bins)
    info = {"factors": names, "binned": binned, "n_bins": n_bins, "dims": None}
    empty = {"mig": None, "dci": {"disentanglement": None, "completeness": None, "informativeness": None},
             "sap": None, "disentanglement_info": info}
    if not names:
        return empty
    c_tr, c_te = codes_of(train, parts), codes_of(test, parts)
    info["dims"] = int(c_tr.shape[1])

    def pick(n, k):
        return np.arange(n) if k is None or n <= k else np.sort(rng.choice(n, k, replace=False))

    t0 = time.perf_counter()
    i = pick(len(c_te), mig_max)
    md = mig_details(c_te[i], f_te[i], n_bins)
    info["mig_per_factor"] = dict(zip(names, md["per_factor"]))
    info["mig_n"] = int(len(i))
    t1 = time.perf_counter()
    a, b = pick(len(c_tr), dci_max_train), pick(len(c_te), dci_max_test)
    d = dci(c_tr[a], f_tr[a], c_te[b], f_te[b], n_estimators=dci_estimators, seed=seed,
            max_features=dci_max_features)
    info.update(dci_n_train=int(len(a)), dci_n_test=int(len(b)), dci_estimators=dci_estimators,
                dci_max_features=dci_max_features if dci_max_features is not None
                and dci_max_features < c_tr.shape[1] else None)
    if dci_chance and d["disentanglement"] is not None:
        shuffled = c_tr[a][rng.permutation(len(a))]
        ch = dci(shuffled, f_tr[a], c_te[b], f_te[b], n_estimators=dci_estimators, seed=seed,
                 max_features=dci_max_features)
        d["disentanglement_chance"], d["completeness_chance"] = ch["disentanglement"], ch["completeness"]
    t2 = time.perf_counter()
    a, b = pick(len(c_tr), sap_max_train), pick(len(c_te), sap_max_test)
    s = sap(c_tr[a], f_tr[a], c_te[b], f_te[b])
    info.update(sap_n_train=int(len(a)), sap_n_test=int(len(b)))
    t3 = time.perf_counter()
    log(f"  MIG {md['mig'] if md['mig'] is None else round(md['mig'], 3)} ({t1 - t0:.1f}s), "
        f"DCI D {d['disentanglement'] if d['disentanglement'] is None else round(d['disentanglement'], 3)} "
        f"({t2 - t1:.1f}s), SAP {s if s is None else round(s, 3)} ({t3 - t2:.1f}s); "
        f"{c_tr.shape[1]} dims x {len(names)} factors")
    return {"mig": md["mig"], "dci": d, "sap": s, "disentanglement_info": info}
