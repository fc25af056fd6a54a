"""Attribute recognition with a linear SVM on latent features (D2AE Sec. 4.3, Table 1, Fig. 5a).

For every feature set (each part and the concatenation of all parts) and every labelled
discrete attribute, a linear SVM (scikit-learn ``LinearSVC`` on standardised features,
one-vs-rest for several classes) is fit on train-split latents and scored on test-split
latents. Feature sets wider than ``max_dim`` (spatial codes of other methods, their
concatenation) are first projected by a PCA fit on the train codes to ``max_dim`` dimensions,
so the SVMs stay fast; the result records ``pca_dims`` when that happens.
``recognition_difference`` gives the per-attribute accuracy difference between two feature
sets (f_T minus f_P in the paper: positive where the identity feature wins).
"""
from __future__ import annotations

import time
import warnings
from typing import Callable, Mapping, Sequence

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from facefactors.data.specs import AttributeSpec
from facefactors.errors import FacefactorsError
from facefactors.eval.probes import discrete_attributes, subsample
from facefactors.eval.verification import feature_sets

# liblinear budget: tol 1e-3 (default 1e-4) moved test accuracies by at most 0.002 on trained
# D2AE codes (14 part x attribute fits) and cuts the time by 20-60%; the iteration cap bounds
# the worst case (untrained, non-separable codes).
SVM_TOL = 1e-3
SVM_MAX_ITER = 500


def fit_linear_svm(x: np.ndarray, y: np.ndarray, c: float = 1.0, seed: int = 0):
    """A fitted ``StandardScaler + LinearSVC`` pipeline (primal solver: samples outnumber dims here)."""
    x = np.asarray(x, dtype=np.float32)
    svm = LinearSVC(C=c, dual=x.shape[0] < x.shape[1], tol=SVM_TOL, max_iter=SVM_MAX_ITER, random_state=seed)
    model = make_pipeline(StandardScaler(), svm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, np.asarray(y))
    return model


def svm_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 c: float = 1.0, seed: int = 0) -> dict[str, float]:
    """Test accuracy of a linear SVM, with chance = the test accuracy of the train majority class."""
    classes, counts = np.unique(y_train, return_counts=True)
    chance = float(np.mean(np.asarray(y_test) == classes[np.argmax(counts)]))
    model = fit_linear_svm(x_train, y_train, c, seed)
    acc = float(np.mean(model.predict(np.asarray(x_test, dtype=np.float32)) == np.asarray(y_test)))
    return {"accuracy": acc, "chance": chance}


def attribute_recognition(train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                          attributes: Mapping[str, AttributeSpec], parts: Sequence[str] | None = None,
                          include: Sequence[str] | None = None, max_classes: int = 50,
                          max_train: int | None = 4000, max_test: int | None = 2000, c: float = 1.0,
                          max_dim: int | None = 512, seed: int = 0, log: Callable[[str], None] | None = None
                          ) -> dict[str, dict[str, dict[str, float]]]:
    """``{feature set: {attribute: {"accuracy", "chance"}}}`` for each part and their concatenation.

    ``include`` restricts the attributes (default: every discrete labelled one with at most
    ``max_classes`` classes; identity with hundreds of classes is judged by verification).
    Attributes with a single class in the train subsample are skipped.
    """
    attrs = discrete_attributes(attributes, train)
    if include is not None:
        unknown = [a for a in include if a not in attrs]
        if unknown:
            raise FacefactorsError(f"cannot recognise {unknown}: not discrete labelled attributes "
                                   f"(available: {', '.join(attrs)})")
        attrs = list(include)
    else:
        attrs = [a for a in attrs if attributes[a].num_classes <= max_classes]
    feats_tr = feature_sets(train, parts)
    feats_te = feature_sets(test, parts)
    rng = np.random.default_rng([seed, 5])
    n_tr, n_te = len(next(iter(feats_tr.values()))), len(next(iter(feats_te.values())))
    tr, te = subsample(n_tr, max_train, rng), subsample(n_te, max_test, rng)
    t0 = time.perf_counter()
    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in feats_tr}
    for name in feats_tr:
        x_tr, x_te = feats_tr[name][tr], feats_te[name][te]
        reduced = None
        if max_dim is not None and x_tr.shape[1] > max_dim and len(x_tr) > max_dim:
            pca = PCA(max_dim, random_state=seed).fit(x_tr)
            x_tr, x_te = pca.transform(x_tr).astype(np.float32), pca.transform(x_te).astype(np.float32)
            reduced = max_dim
        for a in attrs:
            y_tr = np.asarray(train[f"label/{a}"])[tr]
            if np.unique(y_tr).size < 2:
                continue
            out[name][a] = svm_accuracy(x_tr, y_tr, x_te, np.asarray(test[f"label/{a}"])[te], c, seed)
            if reduced:
                out[name][a]["pca_dims"] = reduced
    if log:
        log(f"  linear SVMs: {len(feats_tr)} feature sets x {len(attrs)} attributes "
            f"({len(tr)} train / {len(te)} test) in {time.perf_counter() - t0:.1f}s")
    return out


def recognition_difference(recognition: Mapping[str, Mapping[str, Mapping[str, float]]], first: str,
                           second: str) -> dict[str, float]:
    """Per attribute, accuracy of ``first`` minus accuracy of ``second`` (both feature sets present)."""
    for name in (first, second):
        if name not in recognition:
            raise FacefactorsError(f"no recognition results for {name!r}; have {', '.join(recognition)}")
    return {a: recognition[first][a]["accuracy"] - recognition[second][a]["accuracy"]
            for a in recognition[first] if a in recognition[second]}
