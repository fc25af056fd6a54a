"""Leakage matrix: how well a fresh probe recovers each discrete attribute from each latent part.

Rows are latent parts, columns attributes. A probe (logistic regression or a one-hidden-layer
MLP, both behind a StandardScaler) is fit on train-split latents and scored on test-split
latents. ``normalized = (accuracy - chance) / (1 - chance)`` with chance the test accuracy of
always predicting the most frequent train class: 1 means the part holds the attribute fully,
0 means it holds nothing a probe can use. High diagonal, zero off-diagonal is the goal.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Callable, Iterable, Mapping

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from facefactors.data.specs import AttributeSpec
from facefactors.errors import FacefactorsError

PROBE_KINDS = ("linear", "mlp")

# Budgets measured on 2 shared CPU cores: 4 parts (16-128 dims) x 8 attributes (one with
# 100 classes), 4000 train / 2000 test latents take ~2-3 s (linear) + ~20-30 s (MLP) on idle
# cores (up to ~2 min while other jobs load them). Ten-fold budgets moved normalized leakage
# by 0.002 / 0.003 on average (linear / MLP; at most 0.025 / 0.04, and the MLP's seed-to-seed
# spread is itself 0.008 on average, 0.04 at most). Features are float32
# (sklearn keeps the dtype; 2-3x faster than float64 for wide map parts, same scores).
LINEAR_MAX_ITER = 300
LINEAR_TOL = 1e-3
MLP_MAX_ITER = 100
MLP_TOL = 1e-4
MLP_PATIENCE = 10
MLP_VALIDATION_FRACTION = 0.1


def subsample(n: int, max_n: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of a seeded random subset of size ``min(n, max_n)``."""
    if max_n is None or n <= max_n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max_n, replace=False))


def _make_probe(kind: str, y: np.ndarray, hidden: int, seed: int):
    if kind == "linear":
        clf = LogisticRegression(max_iter=LINEAR_MAX_ITER, tol=LINEAR_TOL)
    elif kind == "mlp":
        # Early stopping uses a stratified validation split; it needs >= 2 samples per class
        # and room for every class on both sides, otherwise train for the fixed budget.
        _, counts = np.unique(y, return_counts=True)
        n_val = math.ceil(MLP_VALIDATION_FRACTION * len(y))
        early = bool(counts.min() >= 2 and n_val >= len(counts) and len(y) - n_val >= len(counts))
        # Small train sets get small minibatches, so that every epoch makes enough updates
        # for early stopping not to fire on the initial plateau (an undertrained probe would
        # under-report leakage).
        batch = int(np.clip(len(y) // 20, 16, 200))
        clf = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=MLP_MAX_ITER, tol=MLP_TOL, batch_size=batch,
                            early_stopping=early, validation_fraction=MLP_VALIDATION_FRACTION,
                            n_iter_no_change=MLP_PATIENCE, random_state=seed)
    else:
        raise FacefactorsError(f"unknown probe kind {kind!r}; choose from {', '.join(PROBE_KINDS)}")
    return make_pipeline(StandardScaler(), clf)


def fit_probe(kind: str, x_train: np.ndarray, y_train: np.ndarray, hidden: int = 256, seed: int = 0):
    """One fresh probe (standardised input; ``kind`` linear or mlp) fitted on the train codes."""
    probe = _make_probe(kind, y_train, hidden, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", category=RuntimeWarning)  # overflow in exp of badly scaled logits
        probe.fit(x_train, y_train)
    return probe


def predict_quietly(probe, x: np.ndarray) -> np.ndarray:
    """``probe.predict`` without the overflow warnings of badly scaled logits."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        return probe.predict(x)


def score_predictions(y_train: np.ndarray, y_test: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """``{"accuracy", "chance", "normalized"}`` of a probe's test predictions.

    Chance is the test accuracy of the most frequent train class. When chance is 1
    (the test set holds a single class, the train majority) ``normalized`` is 0.
    """
    classes, counts = np.unique(y_train, return_counts=True)
    majority = classes[np.argmax(counts)]
    chance = float(np.mean(y_test == majority))
    accuracy = float(np.mean(predicted == y_test))
    normalized = (accuracy - chance) / (1.0 - chance) if chance < 1.0 - 1e-12 else 0.0
    return {"accuracy": accuracy, "chance": chance, "normalized": float(normalized)}


def probe_score(kind: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                y_test: np.ndarray, hidden: int = 256, seed: int = 0) -> dict[str, float]:
    """Fit one fresh probe and score it (``score_predictions``)."""
    probe = fit_probe(kind, x_train, y_train, hidden, seed)
    return score_predictions(y_train, y_test, predict_quietly(probe, x_test))


def discrete_attributes(attributes: Mapping[str, AttributeSpec], arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Names of categorical/binary attributes that have labels in ``arrays``."""
    return [name for name, spec in attributes.items() if spec.discrete and f"label/{name}" in arrays]


def leakage_matrix(train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                   attributes: Mapping[str, AttributeSpec], parts: Iterable[str] | None = None,
                   probes: Iterable[str] = PROBE_KINDS, max_train: int | None = 4000,
                   max_test: int | None = 2000, mlp_hidden: int = 256, seed: int = 0,
                   log: Callable[[str], None] | None = None) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Probe every part for every discrete attribute.

    ``train``/``test`` are ``encode_split`` results. Returns
    ``{probe: {part: {attribute: {"accuracy", "chance", "normalized"}}}}``; attributes with a
    single class in the (subsampled) train set are skipped (no entry).
    """
    probes = list(probes)
    for kind in probes:
        if kind not in PROBE_KINDS:
            raise FacefactorsError(f"unknown probe kind {kind!r}; choose from {', '.join(PROBE_KINDS)}")
    if parts is None:
        parts = [k[len("part/"):] for k in train if k.startswith("part/")]
    parts = list(parts)
    for p in parts:
        if f"part/{p}" not in train or f"part/{p}" not in test:
            raise FacefactorsError(f"latent part {p!r} missing from the encoded arrays")
    attrs = discrete_attributes(attributes, train)
    rng = np.random.default_rng(seed)
    n_train = len(train[f"part/{parts[0]}"]) if parts else 0
    n_test = len(test[f"part/{parts[0]}"]) if parts else 0
    tr = subsample(n_train, max_train, rng)
    te = subsample(n_test, max_test, rng)

    result: dict = {kind: {p: {} for p in parts} for kind in probes}
    for kind in probes:
        t0 = time.perf_counter()
        for p in parts:
            x_tr = np.asarray(train[f"part/{p}"], dtype=np.float32)[tr]
            x_te = np.asarray(test[f"part/{p}"], dtype=np.float32)[te]
            for a in attrs:
                y_tr = np.asarray(train[f"label/{a}"])[tr]
                y_te = np.asarray(test[f"label/{a}"])[te]
                if np.unique(y_tr).size < 2:
                    continue
                result[kind][p][a] = probe_score(kind, x_tr, y_tr, x_te, y_te, hidden=mlp_hidden, seed=seed)
        if log:
            log(f"  {kind} probes: {len(parts)} parts x {len(attrs)} attributes "
                f"({len(tr)} train / {len(te)} test) in {time.perf_counter() - t0:.1f}s")
    return result
