"""Classifier posterior entropy per latent part (Oldfield et al., Fig. 5).

For every part and every discrete attribute: the mean entropy of a classifier's posterior over
the attribute's classes given the part's code. Near 0 on a part's own attribute (the code
tells the class), near log K elsewhere (the code says nothing about that attribute), so the
``normalized`` value (entropy / log K) should be ~0 on the diagonal and ~1 off it.

The posteriors come from the method's own classifiers when it has them: a method may define
``part_posteriors(z: Latent) -> {part: {attribute: probabilities (B, K)}}`` (rows summing to
1, classes in the attribute's order); otherwise from a fresh probe per (part, attribute): a
logistic regression (behind a StandardScaler) fit on train-split codes and applied to the
test-split codes. A probe's posterior on an uninformative part tends to the train class
frequencies, so its normalized entropy is the normalized entropy of the class prior (1 for
balanced classes).
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from facefactors.data.specs import AttributeSpec, ImageDataset
from facefactors.errors import FacefactorsError
from facefactors.eval.probes import LINEAR_MAX_ITER, LINEAR_TOL, discrete_attributes, subsample


def entropy(probs: np.ndarray, what: str = "posteriors") -> np.ndarray:
    """Entropy (nats) of each row of a (N, K) probability array (0 log 0 = 0)."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2:
        raise FacefactorsError(f"{what} must be an (N, K) array, got shape {p.shape}")
    if (p < -1e-6).any() or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise FacefactorsError(f"{what} must be probabilities: non-negative rows summing to 1")
    p = np.clip(p, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(1)


def entropy_summary(probs: np.ndarray, num_classes: int | None = None, what: str = "posteriors"
                    ) -> dict[str, float]:
    """``{"entropy": mean nats, "normalized": mean / log K, "num_classes": K}`` (K = columns
    unless given; normalized is 0 for K = 1)."""
    h = entropy(probs, what)
    k = int(num_classes or np.asarray(probs).shape[1])
    mean = float(h.mean()) if len(h) else float("nan")
    return {"entropy": mean, "normalized": mean / math.log(k) if k > 1 else 0.0, "num_classes": k}


def probe_posteriors(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, num_classes: int,
                     seed: int = 0) -> np.ndarray:
    """(N_test, num_classes) posteriors of a logistic-regression probe fit on (x_train, y_train);
    classes absent from the train labels get probability 0."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_train = np.asarray(y_train).astype(np.int64)
    out = np.zeros((len(x_test), num_classes))
    classes = np.unique(y_train)
    if len(classes) == 1:
        out[:, classes[0]] = 1.0
        return out
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=LINEAR_MAX_ITER, tol=LINEAR_TOL,
                                                               random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        probe.fit(np.asarray(x_train, np.float32), y_train)
        proba = probe.predict_proba(np.asarray(x_test, np.float32))
    out[:, probe.classes_] = proba
    return out


def model_posteriors(model, ds: ImageDataset, indices, batch_size: int = 256, device="cpu"
                     ) -> dict[str, dict[str, np.ndarray]] | None:
    """The method's own posteriors (``model.part_posteriors``) on images ``indices``, or None
    when the method has no such classifiers."""
    fn = getattr(model, "part_posteriors", None)
    if not callable(fn):
        return None
    from facefactors.data.specs import to_float_image
    from facefactors.eval.latents import inference

    idx = torch.as_tensor(np.asarray(indices, np.int64))
    chunks: list[dict[str, dict[str, torch.Tensor]]] = []
    dev = torch.device(device)
    with inference(model):
        for s in range(0, len(idx), batch_size):
            x = to_float_image(ds.images[idx[s:s + batch_size]].to(dev))
            chunks.append(fn(model.encode(x)))
    if not chunks:
        return {}
    return {p: {a: torch.cat([c[p][a].detach().float().cpu() for c in chunks]).numpy() for a in chunks[0][p]}
            for p in chunks[0]}


def posterior_entropy(train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                      attributes: Mapping[str, AttributeSpec], parts: Iterable[str] | None = None,
                      posteriors: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                      max_train: int | None = 4000, max_test: int | None = 2000, seed: int = 0,
                      log: Callable[[str], None] | None = None) -> dict:
    """Mean posterior entropy per (part, discrete attribute).

    ``posteriors`` (the method's own, on the test arrays' images, e.g. from ``model_posteriors``)
    take precedence; (part, attribute) pairs they lack are filled by probes. Returns
    ``{"source": {part: "model" | "probe"}, "parts": {part: {attribute: entropy_summary}}}``.
    """
    if parts is None:
        parts = [k[len("part/"):] for k in test if k.startswith("part/")]
    parts = list(parts)
    attrs = discrete_attributes(attributes, test)
    rng = np.random.default_rng([seed, 11])
    n_train = len(train["index"]) if "index" in train else len(train[f"part/{parts[0]}"])
    n_test = len(test["index"]) if "index" in test else len(test[f"part/{parts[0]}"])
    tr = subsample(n_train, max_train, rng)
    te = subsample(n_test, max_test, rng)
    t0 = time.perf_counter()
    out: dict = {"source": {}, "parts": {}}
    for p in parts:
        own = (posteriors or {}).get(p) or {}
        out["source"][p] = "model" if own else "probe"
        out["parts"][p] = {}
        for a in attrs:
            k = attributes[a].num_classes
            if a in own:
                probs = np.asarray(own[a])
                if probs.shape != (n_test, k):
                    raise FacefactorsError(f"part_posteriors[{p!r}][{a!r}] has shape {probs.shape}, "
                                           f"expected {(n_test, k)}")
                probs = probs[te]
            else:
                x_tr = np.asarray(train[f"part/{p}"])[tr]
                x_te = np.asarray(test[f"part/{p}"])[te]
                probs = probe_posteriors(x_tr, np.asarray(train[f"label/{a}"])[tr], x_te, k, seed)
            out["parts"][p][a] = entropy_summary(probs, k, f"part_posteriors[{p!r}][{a!r}]" if a in own
                                                 else "probe posteriors")
    if log:
        log(f"  posterior entropy: {len(parts)} parts x {len(attrs)} attributes in {time.perf_counter() - t0:.1f}s")
    return out
