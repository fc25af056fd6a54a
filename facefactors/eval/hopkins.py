"""Hopkins statistic: cluster tendency, and Oldfield et al.'s Table III reading of it.

``hopkins(X)`` is the classical statistic (Hopkins & Skellam 1954; Banerjee & Dave 2004):
draw m points u uniformly in X's bounding box and m points w from X;
``H = sum d(u)^p / (sum d(u)^p + sum d(w)^p)`` with d the distance to the nearest (other)
point of X. H ~ 0.5 for uniformly scattered data, -> 1 for clustered data. With p = the
dimension (the default), H follows Beta(m, m) under uniform scatter, so ``hopkins_pvalue``
gives its exact one-sided significance; Oldfield et al. read H > 0.75 as a clustering tendency
at the 90% confidence level.

Oldfield et al. (Table III) ask whether, inside each cluster of one attribute A in A's code
(e.g. each expression cluster of the expression part), the points still group by another
attribute B (illumination): they report the mean +- std "per illumination label" of the
Hopkins statistic per expression cluster (0.52-0.62 with their disentanglement loss, 0.73-0.86
without). We compute that question directly, with the cluster itself as the reference
distribution instead of a bounding box: for each B label b inside cluster a, ``hopkins(S_b,
reference=R_b)`` with S_b the cluster's points labelled b and the u-points drawn from the
cluster's other points R_b. If B says nothing about where a point lies inside the cluster, S_b
and R_b are exchangeable and H ~ 0.5 whatever the cluster's shape or dimension; if label-b
points gather in their own region, points of R_b lie far from S_b and H -> 1. This keeps the
0.5 / 1 reading of the paper while working in the full code space (a uniform bounding box in
64+ dimensions would call every real cluster "clustered").
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Mapping

import numpy as np
import scipy.stats
from scipy.special import logsumexp
from scipy.spatial import cKDTree

from facefactors.data.specs import AttributeSpec
from facefactors.errors import FacefactorsError

CLUSTERED = 0.75    # Oldfield et al.: H > 0.75 -> clustering tendency at 90% confidence


def _nearest(tree_points: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Distance from each query to its k-th nearest point (k=2 skips the point itself)."""
    if tree_points.shape[1] <= 16:
        d, _ = cKDTree(tree_points).query(queries, k=k)
        return d if k == 1 else d[:, -1]
    sq = (queries ** 2).sum(1)[:, None] + (tree_points ** 2).sum(1)[None, :] - 2.0 * queries @ tree_points.T
    sq = np.sort(np.maximum(sq, 0.0), axis=1)[:, k - 1]
    return np.sqrt(sq)


def hopkins(X: np.ndarray, m: int | None = None, rng: np.random.Generator | int | None = None,
            reference: np.ndarray | None = None, power: float | None = None) -> float:
    """Hopkins statistic of the rows of ``X`` (n, d).

    m: sample size (default 10% of n, at least 1, at most n - 1). ``reference`` (r, d):
    draw the u-points from these rows instead of uniformly from X's bounding box. ``power``:
    exponent on the distances (default d with the uniform box, where it makes H ~ Beta(m, m)
    under uniform scatter; 1 with a reference sample).
    """
    X = np.asarray(X, np.float64)
    if X.ndim != 2 or X.shape[0] < 2:
        raise FacefactorsError(f"hopkins needs an (n >= 2, d) array, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise FacefactorsError("hopkins: X has non-finite values")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n, d = X.shape
    m = int(m) if m is not None else max(1, int(math.ceil(0.1 * n)))
    m = max(1, min(m, n - 1))
    if reference is not None:
        reference = np.asarray(reference, np.float64)
        if reference.ndim != 2 or reference.shape[1] != d or len(reference) == 0:
            raise FacefactorsError(f"hopkins: reference must be an (r, {d}) array, got shape {reference.shape}")
        m = min(m, len(reference))
        u_pts = reference[rng.choice(len(reference), m, replace=False)]
        p = 1.0 if power is None else float(power)
    else:
        lo, hi = X.min(0), X.max(0)
        u_pts = lo + (hi - lo) * rng.random((m, d))
        p = float(d) if power is None else float(power)
    w_pts = X[rng.choice(n, m, replace=False)]
    u = _nearest(X, u_pts, 1)
    w = _nearest(X, w_pts, 2)
    with np.errstate(divide="ignore"):
        lu, lw = logsumexp(p * np.log(u)), logsumexp(p * np.log(w))
    if np.isneginf(lu) and np.isneginf(lw):
        return 0.5
    return float(1.0 / (1.0 + math.exp(min(700.0, lw - lu))))


def hopkins_pvalue(h: float, m: int) -> float:
    """P(H >= h) under uniform scatter for the classical statistic (power = dimension): Beta(m, m)."""
    return float(scipy.stats.beta.sf(h, m, m))


def hopkins_within_clusters(codes: np.ndarray, labels_a: np.ndarray, labels_b: np.ndarray,
                            m_fraction: float = 0.1, min_points: int = 10, repeats: int = 5,
                            seed: int = 0, class_names: Mapping[int, str] | None = None) -> dict:
    """Table III: per class a of A, the mean and std over B labels b of
    ``hopkins(S_ab, reference=R_ab)`` (see the module doc), each averaged over ``repeats`` draws.

    Codes are standardized per dimension first. Clusters, or B groups, with fewer than
    ``min_points`` points (on either side) are skipped. Returns ``{"per_class": {a: {"mean",
    "std", "n_points", "n_groups"}}, "mean": mean over clusters, "clustered_fraction": share of
    (a, b) groups with H > 0.75}`` (means None when nothing qualified).
    """
    X = np.asarray(codes, np.float64).reshape(len(codes), -1)
    la, lb = np.asarray(labels_a).reshape(-1), np.asarray(labels_b).reshape(-1)
    if not (len(X) == len(la) == len(lb)):
        raise FacefactorsError("hopkins_within_clusters: codes and labels differ in length")
    sd = X.std(0)
    X = (X[:, sd > 0] - X[:, sd > 0].mean(0)) / sd[sd > 0] if (sd > 0).any() else np.zeros((len(X), 1))
    rng = np.random.default_rng([seed, 13])
    per_class: dict = {}
    all_h: list[float] = []
    for a in np.unique(la):
        in_a = la == a
        xa, ba = X[in_a], lb[in_a]
        hs = []
        for b in np.unique(ba):
            s, r = xa[ba == b], xa[ba != b]
            if len(s) < min_points or len(r) < min_points:
                continue
            m = max(1, int(round(m_fraction * len(s))))
            hs.append(float(np.mean([hopkins(s, m, rng, reference=r) for _ in range(repeats)])))
        if not hs:
            continue
        name = class_names.get(int(a), str(a)) if class_names else str(a)
        per_class[name] = {"mean": float(np.mean(hs)), "std": float(np.std(hs)), "n_points": int(in_a.sum()),
                           "n_groups": len(hs)}
        all_h += hs
    means = [v["mean"] for v in per_class.values()]
    return {"per_class": per_class, "mean": float(np.mean(means)) if means else None,
            "clustered_fraction": float(np.mean(np.asarray(all_h) > CLUSTERED)) if all_h else None}


def hopkins_table(test: Mapping[str, np.ndarray], attributes: Mapping[str, AttributeSpec],
                  parts: Iterable[str] | None = None, max_points: int | None = 2000, min_points: int = 10,
                  repeats: int = 5, seed: int = 0, log: Callable[[str], None] | None = None) -> dict:
    """For every part named after a discrete attribute A: clusters of A in that part, grouped by
    every other discrete attribute B. Returns ``{part: {B: hopkins_within_clusters(...)}}``."""
    if parts is None:
        parts = [k[len("part/"):] for k in test if k.startswith("part/")]
    discrete = [a for a, s in attributes.items() if s.discrete and f"label/{a}" in test]
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 17])
    out: dict = {}
    for p in parts:
        if p not in discrete:
            continue
        x = np.asarray(test[f"part/{p}"])
        n = len(x)
        idx = np.arange(n) if max_points is None or n <= max_points else np.sort(rng.choice(n, max_points, False))
        names = dict(enumerate(attributes[p].classes))
        out[p] = {}
        for b in discrete:
            if b == p:
                continue
            r = hopkins_within_clusters(x[idx], np.asarray(test[f"label/{p}"])[idx],
                                        np.asarray(test[f"label/{b}"])[idx], min_points=min_points,
                                        repeats=repeats, seed=seed, class_names=names)
            if r["mean"] is not None:
                out[p][b] = r
    if log:
        log(f"  Hopkins within clusters: {len(out)} parts in {time.perf_counter() - t0:.1f}s")
    return out
