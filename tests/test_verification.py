"""LFW-layout pairs, pairs.txt round trip, and verification metrics on constructed features."""
from __future__ import annotations

import numpy as np
import pytest

from facefactors.data.pairs import image_numbers, make_pairs, read_lfw_pairs, write_lfw_pairs
from facefactors.errors import FacefactorsError
from facefactors.eval.verification import (auc, best_threshold, cosine_scores, feature_sets, kfold_accuracy,
                                           paired_difference, roc_curve, tpr_at_fpr, verification_report, verify)


def identities(n_ids=40, per_id=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat(np.arange(n_ids), per_id))


def test_pairs_lfw_layout():
    ids = identities()
    pairs = make_pairs(ids, n_folds=10, per_fold=30, seed=1)
    assert pairs.n_folds == 10 and pairs.per_fold == 30 and len(pairs) == 10 * 60
    for f in range(10):
        in_fold = pairs.fold == f
        assert pairs.same[in_fold].sum() == 30 and (~pairs.same[in_fold]).sum() == 30
    assert np.all(ids[pairs.a[pairs.same]] == ids[pairs.b[pairs.same]])
    assert np.all(ids[pairs.a[~pairs.same]] != ids[pairs.b[~pairs.same]])
    assert np.all(pairs.a != pairs.b)
    # folds are person-disjoint: no identity (hence no pair) crosses folds
    fold_of = {}
    for a, b, f in zip(pairs.a, pairs.b, pairs.fold):
        for p in (ids[a], ids[b]):
            assert fold_of.setdefault(int(p), int(f)) == f
    # no duplicate pairs
    keys = {(min(a, b), max(a, b)) for a, b in zip(pairs.a, pairs.b)}
    assert len(keys) == len(pairs)
    again = make_pairs(ids, n_folds=10, per_fold=30, seed=1)
    assert np.array_equal(again.a, pairs.a) and np.array_equal(again.b, pairs.b)


def test_pairs_shrink_when_data_is_short():
    ids = identities(n_ids=8, per_id=3)
    pairs = make_pairs(ids, n_folds=10, per_fold=300)
    assert pairs.n_folds == 4                     # 8 identities -> 4 folds of 2 people
    assert pairs.per_fold == 6                    # 2 people x 3 images: 6 matched pairs per fold
    assert len(pairs) == 4 * 12
    with pytest.raises(FacefactorsError, match="at least 4"):
        make_pairs(np.array([0, 0, 1, 1, 2, 2]))


def test_lfw_pairs_file_round_trip(tmp_path):
    ids = identities(n_ids=20, per_id=5)
    names = [f"person_{i}" for i in range(20)]
    pairs = make_pairs(ids, n_folds=10, per_fold=4, seed=2)
    path = tmp_path / "pairs.txt"
    write_lfw_pairs(path, pairs, ids, names)
    lines = path.read_text().splitlines()
    assert lines[0] == "10\t4" and len(lines) == 1 + 10 * 8
    assert len(lines[1].split("\t")) == 3 and len(lines[5].split("\t")) == 4
    back = read_lfw_pairs(path, ids, names)
    for field in ("a", "b", "same", "fold"):
        assert np.array_equal(getattr(back, field), getattr(pairs, field)), field
    num = image_numbers(ids)
    assert sorted(num[ids == 3].tolist()) == [1, 2, 3, 4, 5]
    path.write_text("10\t4\nnobody\t1\t2\n")
    with pytest.raises(FacefactorsError, match="expected 80 pair lines"):
        read_lfw_pairs(path, ids, names)


def separable_features(ids, dim=16, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids.max() + 1, dim))
    return centres[ids] + noise * rng.normal(size=(len(ids), dim))


def test_verification_separable_and_random():
    ids = identities(n_ids=40, per_id=12)
    pairs = make_pairs(ids, n_folds=10, per_fold=30)
    good = verify(separable_features(ids), pairs)
    assert good["accuracy"] == 1.0 and good["tpr_at_fpr"] == 1.0 and good["auc"] == pytest.approx(1.0)
    assert good["n_folds"] == 10 and good["n_pairs"] == 600
    rand = verify(np.random.default_rng(3).normal(size=(len(ids), 16)), pairs)
    assert 0.4 < rand["accuracy"] < 0.62
    assert rand["tpr_at_fpr"] < 0.1
    report = verification_report({"part/id": separable_features(ids),
                                  "part/rest": np.random.default_rng(4).normal(size=(len(ids), 8))}, pairs)
    assert list(report) == ["id", "rest", "id+rest"]
    assert report["id"]["accuracy"] == 1.0 and report["rest"]["accuracy"] < 0.65


def test_roc_tpr_at_fpr_and_threshold_on_known_scores():
    # 1000 negatives with scores 0..0.999, 10 positives: 5 above every negative, 5 in between
    neg = np.arange(1000) / 1000
    pos = np.array([2.0, 2.1, 2.2, 2.3, 2.4, 0.9985, 0.9975, 0.5, 0.4, 0.3])
    scores = np.r_[neg, pos]
    same = np.r_[np.zeros(1000, bool), np.ones(10, bool)]
    fpr, tpr, thr = roc_curve(scores, same)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # no false positive: the 5 positives above every negative
    assert tpr_at_fpr(scores, same, 5e-4) == pytest.approx(0.5)
    # FPR <= 1e-3 allows one false positive (0.999), which admits 0.9985; two admit 0.9975
    assert tpr_at_fpr(scores, same, 1e-3) == pytest.approx(0.6)
    assert tpr_at_fpr(scores, same, 2e-3) == pytest.approx(0.7)
    assert tpr_at_fpr(scores, same, 1.0) == 1.0
    t, acc = best_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([False, False, True, True]))
    assert 0.2 < t < 0.8 and acc == 1.0


def test_kfold_threshold_is_chosen_on_other_folds():
    # fold 0's scores are shifted: a threshold fitted on fold 0 itself would be perfect there,
    # but the threshold from folds 1-2 (0.6, midway between 0.4 and 0.8) accepts its negatives
    scores = np.array([0.65, 0.7, 0.9, 0.95, 0.2, 0.3, 0.8, 0.9, 0.1, 0.4, 0.85, 0.9])
    same = np.array([0, 0, 1, 1] * 3, bool)
    fold = np.repeat([0, 1, 2], 4)
    out = kfold_accuracy(scores, same, fold)
    assert out["fold_accuracy"][0] == 0.5 and out["fold_accuracy"][1:] == [1.0, 1.0]
    assert out["accuracy"] == pytest.approx(2.5 / 3)
    assert out["thresholds"][0] == pytest.approx(0.6)


def test_cosine_and_feature_sets():
    x = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
    np.testing.assert_allclose(cosine_scores(x, [0, 0, 0], [1, 2, 3]), [1.0, 0.0, 0.0])
    sets = feature_sets({"part/a": x, "part/b": x[:, :1], "label/y": np.zeros(4)})
    assert list(sets) == ["a", "b", "a+b"] and sets["a+b"].shape == (4, 3)
    with pytest.raises(FacefactorsError, match="missing"):
        feature_sets({"part/a": x}, ["a", "zzz"])


def test_paired_difference_detects_a_small_shift_and_not_noise():
    ids = identities(n_ids=60, per_id=12)
    pairs = make_pairs(ids, n_folds=10, per_fold=60)
    rng = np.random.default_rng(0)
    base = rng.normal(size=len(pairs))
    a = base + 0.1 * pairs.same
    b = base + 0.6 * pairs.same          # same noise, more separation: B verifies better
    res = paired_difference(a, b, pairs, n_boot=300)
    fpr, tpr, _ = roc_curve(a, pairs.same)
    assert res["auc_a"] == pytest.approx(auc(fpr, tpr))   # rank AUC equals the ROC area
    assert res["auc_difference"] > 0.1 and res["auc_difference_ci95"][0] > 0
    assert res["p_auc_not_greater"] == 0.0
    assert res["folds_favouring_b"] >= 8 and len(res["fold_accuracy_difference"]) == 10
    same = paired_difference(a, a.copy(), pairs, n_boot=50)
    assert same["auc_difference"] == 0.0 and same["p_auc_not_greater"] == 1.0
    with pytest.raises(FacefactorsError, match="one score per pair"):
        paired_difference(a, b[:-1], pairs)
