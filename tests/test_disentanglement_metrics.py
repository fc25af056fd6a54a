"""MIG, DCI and SAP against disentanglement_lib's definitions on cases with known answers."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from facefactors.data.specs import AttributeSpec
from facefactors.errors import FacefactorsError
from facefactors.eval.disentanglement import (_svm_1d, dci, dci_from_importance, discrete_entropy, discretize,
                                              disentanglement_metrics, factor_table, mig, mig_details,
                                              mutual_info_matrix, sap, sap_score_matrix)


def _factors(n: int, ks=(4, 3, 2), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, k, n) for k in ks], 1)


def _factorial(ks=(4, 3, 2), reps: int = 20) -> np.ndarray:
    """Every combination of factor values ``reps`` times: factors exactly independent in the sample,
    so the mutual information between different factors is exactly 0."""
    return np.array(list(itertools.product(*[range(k) for k in ks])) * reps)


# --------------------------------------------------------------------------- shared pieces
def test_discretize_is_dlib_histogram_binning():
    x = np.array([[0.0], [0.5], [1.0], [0.26]])
    # 2 equal-width bins over [0, 1]: edges [0, 0.5] -> np.digitize -> 1, 2, 2, 1
    np.testing.assert_array_equal(discretize(x, 2)[:, 0], [1, 2, 2, 1])
    assert set(discretize(np.random.default_rng(0).normal(size=(500, 1)), 20)[:, 0]) <= set(range(1, 21))
    assert np.unique(discretize(np.ones((5, 1)), 20)).size == 1  # constant column: one bin


def test_mutual_information_equals_sklearn():
    rng = np.random.default_rng(1)
    f = _factors(300, (4, 7, 2))
    codes = discretize(np.concatenate([f + rng.normal(scale=0.5, size=f.shape), rng.normal(size=(300, 2))], 1))
    m = mutual_info_matrix(codes, f)
    ref = [[mutual_info_score(f[:, j], codes[:, i]) for j in range(3)] for i in range(5)]
    np.testing.assert_allclose(m, ref, atol=1e-12)
    np.testing.assert_allclose(discrete_entropy(f), [mutual_info_score(c, c) for c in f.T], atol=1e-12)


# --------------------------------------------------------------------------- MIG
def test_mig_identity_codes_is_one_and_noise_is_zero():
    rng = np.random.default_rng(2)
    f = _factorial(reps=80)
    assert mig(f.astype(float), f) == pytest.approx(1.0)
    with_noise_dims = np.concatenate([f, rng.normal(size=(len(f), 5))], 1)
    assert mig(with_noise_dims, f) == pytest.approx(1.0, abs=0.03)  # noise dims share a little MI by chance
    assert mig(rng.normal(size=(len(f), 6)), f) < 0.03


def test_mig_hand_computed_gap_and_duplicates():
    y = np.tile(np.arange(4), 100)[:, None]
    # dim 0 holds y (I = log 4), dim 1 only its high bit (I = log 2): gap (log4 - log2) / log4 = 0.5
    assert mig(np.concatenate([y, y // 2], 1).astype(float), y) == pytest.approx(0.5)
    # a duplicated dimension leaves no gap
    f = _factorial((4, 3))
    details = mig_details(np.stack([f[:, 0], f[:, 0], f[:, 1]], 1).astype(float), f)
    assert details["per_factor"][0] == pytest.approx(0.0) and details["per_factor"][1] == pytest.approx(1.0)
    assert details["mig"] == pytest.approx(0.5)
    # a constant factor has no entropy: left out, as are its None entries
    const = np.concatenate([f, np.zeros((len(f), 1), int)], 1)
    d = mig_details(np.stack([f[:, 0], f[:, 1], f[:, 1]], 1).astype(float), const)
    assert d["per_factor"][2] is None and d["mig"] == pytest.approx(0.5)


def test_metric_input_errors():
    with pytest.raises(FacefactorsError, match="differ in length"):
        mig(np.zeros((10, 2)), np.zeros((9, 1)))
    with pytest.raises(FacefactorsError, match="non-finite"):
        mig(np.full((4, 1), np.nan), np.zeros((4, 1)))


# --------------------------------------------------------------------------- DCI
def test_dci_from_importance_hand_computed():
    assert dci_from_importance(np.eye(3)) == pytest.approx((1.0, 1.0))
    assert dci_from_importance(np.ones((3, 3))) == pytest.approx((0.0, 0.0), abs=1e-9)
    # two codes both about factor 0: each code is pure (D = 1); factor 0 spread over 2 of 2 codes (C = 0)
    d, c = dci_from_importance(np.array([[1.0, 0.0], [1.0, 0.0]]))
    assert d == pytest.approx(1.0) and c == pytest.approx(0.0, abs=1e-9)
    # one code about both factors equally, one unused: D = 1 - log_2(2) = 0; C = 1 (each factor in one code)
    d, c = dci_from_importance(np.array([[1.0, 1.0], [0.0, 0.0]]))
    assert d == pytest.approx(0.0, abs=1e-9) and c == pytest.approx(1.0)


def test_dci_identity_duplicated_and_noise_codes():
    rng = np.random.default_rng(3)
    f_tr, f_te = _factors(400, seed=4), _factors(200, seed=5)
    r = dci(f_tr.astype(float), f_tr, f_te.astype(float), f_te, n_estimators=10)
    assert r["disentanglement"] > 0.95 and r["completeness"] > 0.95 and r["informativeness"] == 1.0
    dup_tr = np.repeat(f_tr, 2, axis=1).astype(float)
    dup = dci(dup_tr, f_tr, np.repeat(f_te, 2, axis=1).astype(float), f_te, n_estimators=10)
    assert dup["disentanglement"] > 0.95 and dup["completeness"] < 0.8  # importance split across copies
    noise = dci(rng.normal(size=(400, 6)), f_tr, rng.normal(size=(200, 6)), f_te, n_estimators=10)
    assert noise["disentanglement"] < 0.3 and noise["informativeness"] < 0.55


# --------------------------------------------------------------------------- SAP
def test_exact_svm_matches_sklearn_linear_svc():
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(6)
    for k in (2, 5):
        y = rng.choice(k, 300, p=np.arange(1, k + 1) / np.arange(1, k + 1).sum())  # unbalanced classes
        x = (y + rng.normal(scale=0.7, size=300)) * 3.0 + 2.0
        w, b = _svm_1d(x[:, None], y, k)
        ref = LinearSVC(C=0.01, class_weight="balanced", tol=1e-8, max_iter=100000).fit(x[:, None], y)
        np.testing.assert_allclose(w[0], ref.coef_[:, 0], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(b[0], ref.intercept_, rtol=1e-4, atol=1e-7)


def test_sap_score_matrix_matches_sklearn_solver():
    rng = np.random.default_rng(7)
    f_tr, f_te = _factors(300, (2, 3, 6), 8), _factors(200, (2, 3, 6), 9)
    c_tr = np.concatenate([f_tr + rng.normal(scale=s, size=f_tr.shape) for s in (0.3, 2.0)], 1)
    c_te = np.concatenate([f_te + rng.normal(scale=s, size=f_te.shape) for s in (0.3, 2.0)], 1)
    exact = sap_score_matrix(c_tr, f_tr, c_te, f_te)
    ref = sap_score_matrix(c_tr, f_tr, c_te, f_te, solver="sklearn")
    np.testing.assert_allclose(exact, ref, atol=1e-9)


def test_sap_known_answers():
    rng = np.random.default_rng(10)
    f_tr, f_te = _factors(1000, (2, 2), 11), _factors(1000, (2, 2), 12)
    # binary factors read off their own dimension (accuracy 1) and not the other's (0.5): SAP 0.5
    assert sap(f_tr.astype(float), f_tr, f_te.astype(float), f_te) == pytest.approx(0.5, abs=0.05)
    # continuous version: squared correlation 1 vs ~0
    assert sap(f_tr.astype(float), f_tr, f_te.astype(float), f_te, continuous=True) == pytest.approx(1.0, abs=0.01)
    # duplicated dimensions: no gap
    dup = np.repeat(f_tr, 2, axis=1).astype(float)
    assert sap(dup, f_tr, np.repeat(f_te, 2, axis=1).astype(float), f_te) == pytest.approx(0.0)
    assert sap(rng.normal(size=(1000, 3)), f_tr, rng.normal(size=(1000, 3)), f_te) < 0.06


# --------------------------------------------------------------------------- wrapper
def _arrays(n, seed):
    rng = np.random.default_rng(seed)
    colour, size = rng.integers(0, 3, n), rng.uniform(0, 1, n)
    return {"part/colour": np.eye(3)[colour] + 0.01 * rng.normal(size=(n, 3)),
            "part/rest": np.stack([size, rng.normal(size=n)], 1).astype(np.float32),
            "label/colour": colour, "label/size": size.astype(np.float32), "index": np.arange(n)}


def test_disentanglement_metrics_wrapper_bins_continuous_factors():
    attrs = {"colour": AttributeSpec("colour", "categorical", ("r", "g", "b")),
             "size": AttributeSpec("size", "continuous")}
    train, test = _arrays(400, 0), _arrays(300, 1)
    names, f_tr, f_te, binned = factor_table(train, test, attrs, n_bins=20)
    assert names == ["colour", "size"] and binned == ["size"]
    assert f_tr[:, 1].min() >= 1 and f_tr[:, 1].max() <= 20 and f_te.shape == (300, 2)
    lines: list[str] = []
    out = disentanglement_metrics(train, test, attrs, dci_estimators=5, dci_chance=True, log=lines.append)
    assert set(out) == {"mig", "dci", "sap", "disentanglement_info"}
    info = out["disentanglement_info"]
    assert info["dims"] == 5 and info["factors"] == ["colour", "size"] and info["binned"] == ["size"]
    assert set(out["dci"]) >= {"disentanglement", "completeness", "informativeness", "disentanglement_chance"}
    assert out["dci"]["disentanglement_chance"] < out["dci"]["disentanglement"]  # shuffled codes: the floor
    # size lives in one dimension only: its MIG is high; colour is one-hot over 3 dims: its MIG is low
    assert info["mig_per_factor"]["size"] > 0.6 and info["mig_per_factor"]["colour"] < 0.5
    assert math.isfinite(out["sap"]) and lines
    with pytest.raises(FacefactorsError, match="unknown factor"):
        factor_table(train, test, attrs, ["nosuch"])
