"""Few-shot recognition of unseen identities from latent parts.

The ``unseen`` split holds whole identities no model saw in training. For k in (1, 5, 10):
draw k support images per identity, classify every other image of those identities by the
nearest class mean of the supports (cosine similarity after standardizing each dimension with
train-split statistics) or by a logistic regression fit on the supports; the accuracy is
averaged over a few seeded draws. Identities with fewer than k + 1 images sit out that k.
A part that generalizes identity scores high; a part meant to hold no identity should stay
near chance (1 / number of identities).
"""
from __future__ import annotations

import time
import warnings
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from facefactors.errors import FacefactorsError


def _standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return (x - mean) / np.where(std > 0, std, 1.0)


def _ncm_predict(sx: np.ndarray, sy: np.ndarray, qx: np.ndarray) -> np.ndarray:
    """Nearest class mean by cosine similarity."""
    classes = np.unique(sy)
    means = np.stack([sx[sy == c].mean(0) for c in classes])
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    q = qx / np.maximum(np.linalg.norm(qx, axis=1, keepdims=True), 1e-12)
    return classes[np.argmax(q @ means.T, axis=1)]


def _logistic_predict(sx: np.ndarray, sy: np.ndarray, qx: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=300, tol=1e-3, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(sx, sy)
    return clf.predict(qx)


def fewshot_accuracy(x: np.ndarray, y: np.ndarray, shots: Sequence[int] = (1, 5, 10), draws: int = 5,
                     method: str = "ncm", seed: int = 0, mean: np.ndarray | None = None,
                     std: np.ndarray | None = None) -> dict[str, dict]:
    """Few-shot accuracy on codes ``x`` (N, D) with identity labels ``y``.

    ``mean``/``std`` standardize the codes (default: statistics of ``x`` itself). Returns
    ``{str(k): {"accuracy": mean over draws, "std", "chance", "n_classes", "n_queries"}}``;
    a k with fewer than 2 eligible identities is left out.
    """
    if method not in ("ncm", "logistic"):
        raise FacefactorsError(f"unknown few-shot method {method!r}; use 'ncm' or 'logistic'")
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y).reshape(-1)
    if len(x) != len(y):
        raise FacefactorsError(f"few-shot: {len(x)} codes but {len(y)} labels")
    mean = x.mean(0) if mean is None else np.asarray(mean, np.float64).reshape(-1)
    std = x.std(0) if std is None else np.asarray(std, np.float64).reshape(-1)
    x = _standardize(x, mean, std)
    classes, counts = np.unique(y, return_counts=True)
    out: dict[str, dict] = {}
    for k in shots:
        eligible = classes[counts >= k + 1]
        if len(eligible) < 2:
            continue
        accs, n_q = [], 0
        for r in range(draws):
            rng = np.random.default_rng([seed, int(k), r])
            support, query = [], []
            for c in eligible:
                members = rng.permutation(np.flatnonzero(y == c))
                support.append(members[:k])
                query.append(members[k:])
            s, q = np.concatenate(support), np.concatenate(query)
            if method == "ncm":
                pred = _ncm_predict(x[s], y[s], x[q])
            else:
                pred = _logistic_predict(x[s], y[s], x[q], seed)
            accs.append(float(np.mean(pred == y[q])))
            n_q = len(q)
        out[str(k)] = {"accuracy": float(np.mean(accs)), "std": float(np.std(accs)),
                       "chance": 1.0 / len(eligible), "n_classes": int(len(eligible)), "n_queries": int(n_q)}
    return out


def fewshot_unseen(unseen: Mapping[str, np.ndarray], train: Mapping[str, np.ndarray] | None = None,
                   parts: Iterable[str] | None = None, attribute: str = "identity",
                   shots: Sequence[int] = (1, 5, 10), draws: int = 5, method: str = "ncm", seed: int = 0,
                   log: Callable[[str], None] | None = None) -> dict:
    """Few-shot accuracy of every part on the ``unseen`` split's ``attribute`` (``encode_split``
    arrays); codes are standardized with ``train``-split statistics when given.
    Returns ``{"attribute", "method", "draws", "parts": {part: fewshot_accuracy(...)}}``."""
    key = f"label/{attribute}"
    if key not in unseen:
        raise FacefactorsError(f"few-shot: the unseen split has no {attribute!r} labels")
    if parts is None:
        parts = [k[len("part/"):] for k in unseen if k.startswith("part/")]
    t0 = time.perf_counter()
    res: dict = {"attribute": attribute, "method": method, "draws": draws,
                 "n_images": int(len(unseen[key])), "parts": {}}
    for p in parts:
        ref = np.asarray(train[f"part/{p}"], np.float64) if train is not None else None
        res["parts"][p] = fewshot_accuracy(unseen[f"part/{p}"], unseen[key], shots, draws, method, seed,
                                           None if ref is None else ref.mean(0),
                                           None if ref is None else ref.std(0))
    if log:
        log(f"  few-shot {attribute}: {len(res['parts'])} parts, {res['n_images']} unseen images "
            f"in {time.perf_counter() - t0:.1f}s")
    return res
