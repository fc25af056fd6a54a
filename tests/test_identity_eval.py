"""Attribute recognition, Gaussianity, SVM edit directions and the identity-evaluation entry point."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from facefactors.config import RunConfig, build_dataclass
from facefactors.data.specs import AttributeSpec
from facefactors.data.synthfaces import SynthFacesConfig, generate
from facefactors.errors import FacefactorsError
from facefactors.eval.editing import (apply_edits, direction_spread, edit_alphas, edit_image, edit_part,
                                      edit_steps, svm_directions)
from facefactors.eval.gaussianity import channel_adjusted_r2, fit_channel, gaussianity, summarise
from facefactors.eval.identity import IdentityEvalConfig, identity_evaluation, identity_headline_lines
from facefactors.eval.recognition import attribute_recognition, recognition_difference
from facefactors.io import write_json
from facefactors.latent import Latent
from facefactors.runs import build_model
from tests.helpers import blobs_dataset

ATTRS = {"x": AttributeSpec("x", "categorical", ("a", "b", "c")), "y": AttributeSpec("y", "binary", ("n", "y")),
         "many": AttributeSpec("many", "categorical", tuple(str(i) for i in range(60))),
         "size": AttributeSpec("size", "continuous")}


def coded(n, seed):
    """Part 'px' encodes x (3 classes) linearly, part 'py' encodes y; each is noise for the other."""
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 3, n), rng.integers(0, 2, n)
    px = np.eye(3)[x] * 4 + rng.normal(size=(n, 3))
    py = np.c_[y * 4.0, rng.normal(size=(n, 2))] + rng.normal(size=(n, 3)) * 0.5
    return {"part/px": px.astype(np.float32), "part/py": py.astype(np.float32), "label/x": x, "label/y": y,
            "label/many": rng.integers(0, 60, n), "label/size": rng.normal(size=n)}


def test_attribute_recognition_on_constructed_features():
    rec = attribute_recognition(coded(600, 0), coded(400, 1), ATTRS, max_train=None, max_test=None)
    assert list(rec) == ["px", "py", "px+py"]
    assert set(rec["px"]) == {"x", "y"}        # 60-class attribute left out, continuous ignored
    assert rec["px"]["x"]["accuracy"] > 0.95 and rec["py"]["y"]["accuracy"] > 0.95
    assert rec["py"]["x"]["accuracy"] < 0.5 and rec["px"]["y"]["accuracy"] < 0.65
    assert rec["px+py"]["x"]["accuracy"] > 0.95 and rec["px+py"]["y"]["accuracy"] > 0.95
    assert 0.25 < rec["px"]["x"]["chance"] < 0.45
    diff = recognition_difference(rec, "px", "py")
    assert diff["x"] > 0.4 and diff["y"] < -0.3
    rec = attribute_recognition(coded(600, 0), coded(400, 1), ATTRS, max_train=None, max_test=None, max_dim=4)
    assert "pca_dims" not in rec["px"]["x"] and rec["px+py"]["x"]["pca_dims"] == 4  # 6 dims -> PCA to 4
    assert rec["px+py"]["x"]["accuracy"] > 0.9
    rec = attribute_recognition(coded(300, 0), coded(200, 1), ATTRS, include=["many"], max_train=None)
    assert set(rec["px"]) == {"many"} and rec["px"]["many"]["accuracy"] < 0.2
    with pytest.raises(FacefactorsError, match="not discrete labelled"):
        attribute_recognition(coded(50, 0), coded(50, 1), ATTRS, include=["size"])


def test_gaussianity_scores():
    rng = np.random.default_rng(0)
    normal = rng.normal(2.0, 3.0, 5000)
    bimodal = np.r_[rng.normal(-3, 0.5, 2500), rng.normal(3, 0.5, 2500)]
    skewed = rng.exponential(1.0, 5000)
    fit = fit_channel(normal)
    assert fit.adj_r2 > 0.97 and fit.mu == pytest.approx(2.0, abs=0.3) and fit.sigma == pytest.approx(3.0, rel=0.1)
    assert fit_channel(bimodal).adj_r2 < 0.5
    assert fit_channel(skewed).adj_r2 < fit.adj_r2 - 0.05
    r2 = channel_adjusted_r2(np.c_[normal, bimodal, np.ones(5000)])
    assert r2[0] > 0.97 and r2[1] < 0.5 and np.isnan(r2[2])
    s = summarise(r2)
    assert s["channels"] == 3 and s["dead"] == 1 and s["frac_above_0.9"] == pytest.approx(1 / 3)
    summary, values = gaussianity({"part/g": np.c_[normal, normal[::-1]].astype(np.float32)})
    assert summary["g"]["min"] > 0.97 and values["g"].shape == (2,)


def two_classes(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 5))
    x[:, 0] += np.where(y == 1, 3.0, -3.0)
    x[:, 1] += np.where(y == 1, 1.0, -1.0)
    return x.astype(np.float32), y


@pytest.mark.parametrize("kind", ["svm", "svm_gradient", "mean"])
def test_edit_direction_moves_a_linear_classifier(kind):
    x, y = two_classes()
    judge = LogisticRegression().fit(x, y)
    dirs = svm_directions(x, y, kind=kind, part="p", attribute="a")
    assert dirs.classes.tolist() == [0, 1]
    np.testing.assert_allclose(np.linalg.norm(dirs.directions, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(dirs.directions[0], -dirs.directions[1])
    assert dirs.directions[1][0] > 0.7           # mostly along the separating channel
    zeros = x[y == 0]
    alphas = edit_alphas(zeros, dirs, 1, max_std=3.0)
    assert (alphas > 0).all() and (alphas <= 3.0 * dirs.spread[1] + 1e-9).all()
    z = Latent({"p": torch.from_numpy(zeros)})
    edited = apply_edits(z, "p", [(dirs.directions[1], alphas)])["p"].numpy()
    assert judge.predict(zeros).mean() < 0.05 and judge.predict(edited).mean() > 0.9
    # a tight bound limits the step; codes already past the class mean do not move
    small = edit_alphas(zeros, dirs, 1, max_std=0.1)
    assert np.allclose(small, 0.1 * dirs.spread[1])
    assert np.all(edit_alphas(x[y == 1] + 10 * dirs.directions[1], dirs, 1) == 0)


def test_multiclass_directions_and_spread():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 600)
    x = (np.eye(3)[y] * 4 + rng.normal(size=(600, 3))).astype(np.float32)
    dirs = svm_directions(x, y)
    assert dirs.directions.shape == (3, 3)
    assert all(np.argmax(dirs.directions[k]) == k for k in range(3))
    judge = LogisticRegression().fit(x, y)
    for k in range(3):
        src = x[y != k]
        a = edit_alphas(src, dirs, k)
        moved = src + a[:, None] * dirs.directions[k]
        assert np.mean(judge.predict(moved) == k) > 0.8
    # the spread is the std of the codes along each direction (learned std = empirical std here)
    np.testing.assert_allclose(direction_spread(x, dirs.directions, x.std(0)), (x @ dirs.directions.T).std(0),
                               rtol=1e-3)
    with pytest.raises(FacefactorsError, match="no edit direction for class 7"):
        edit_alphas(x, dirs, 7)
    with pytest.raises(FacefactorsError, match="unknown edit direction kind"):
        svm_directions(x, y, kind="magic")
    assert edit_part(["identity", "rest"], "expression") == "rest"
    assert edit_part(["identity", "expression", "rest"], "expression") == "expression"


def test_pairwise_directions_edit_an_ordered_attribute_into_its_middle_class():
    # pose-like: classes 0, 1, 2 lie in order along channel 0, so "1 against the rest" has no
    # useful direction, while 0 -> 1 and 2 -> 1 need opposite ones
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 900)
    x = rng.normal(size=(900, 4))
    x[:, 0] = 4.0 * y + rng.normal(size=900)
    x = x.astype(np.float32)
    judge = LogisticRegression().fit(x, y)

    def middle_share(dirs, src):
        steps, in_std = edit_steps(x[y == src], dirs, 1, max_std=3.0, overshoot=0.0)
        assert (in_std >= 0).all() and (in_std <= 3.0 + 1e-9).all()
        return np.mean(judge.predict(x[y == src] + steps) == 1)

    ovr = svm_directions(x, y, c=1e-5)
    pairs = svm_directions(x, y, c=1e-5, pairwise=True)
    assert sorted(pairs.pairs) == [(0, 1), (0, 2), (1, 2)]
    assert min(middle_share(ovr, 0), middle_share(ovr, 2)) < 0.5
    assert middle_share(pairs, 0) > 0.9 and middle_share(pairs, 2) > 0.9
    # the pair's direction points from the source towards the target
    assert pairs.towards(0, 1).directions[pairs.towards(0, 1).row(1)][0] > 0.9
    assert pairs.towards(2, 1).directions[pairs.towards(2, 1).row(1)][0] < -0.9
    assert pairs.towards(1, 1) is pairs
    # the edit of an image reads its source class from the code: no label is passed
    z = Latent({"p": torch.from_numpy(x[y == 2])})
    steps, _ = edit_steps(z.flat("p").numpy(), pairs, 0, max_std=3.0)
    assert np.mean(judge.predict(apply_edits(z, "p", [(steps, 1.0)])["p"].numpy()) == 0) > 0.9


class BlobsOracle:
    """Classifies blobs images exactly: colour = the lit channel, place = top or bottom half."""

    def predict(self, images):
        x = torch.as_tensor(images).float()
        colour = x.sum(dim=(2, 3)).argmax(1).numpy()
        h = x.shape[2]
        place = (x[:, :, h // 2:].sum(dim=(1, 2, 3)) > x[:, :, :h // 2].sum(dim=(1, 2, 3))).long().numpy()
        return {"colour": colour, "place": place}


def test_blobs_oracle_is_exact():
    ds = blobs_dataset(n=64)
    pred = BlobsOracle().predict(ds.images)
    assert (pred["colour"] == ds.labels["colour"].numpy()).all() and (pred["place"] == ds.labels["place"].numpy()).all()


def tiny_run_config(method="d2ae", attributes=("identity",), dims=None) -> RunConfig:
    return build_dataclass(RunConfig, {
        "data": {"name": "synthfaces", "size": 32},
        "model": {"method": method, "attributes": list(attributes), "width": 8,
                  "part_dims": dims or {"identity": 8, "rest": 8}}})


def test_identity_evaluation_end_to_end(tmp_path):
    ds = generate(SynthFacesConfig(n=200, size=32, n_identities=16, heldout_identities=8, seed=2))
    torch.manual_seed(0)
    model = build_model(tiny_run_config(), ds).eval()

    class RandomOracle:
        def predict(self, images):
            n = len(images)
            rng = np.random.default_rng(n)
            return {a: rng.integers(0, ds.attributes[a].num_classes, n) for a in ("expression", "glasses")}

    cfg = IdentityEvalConfig(n_folds=4, pairs_per_fold=20, edit_images=8, max_train=200, max_test=100,
                             histogram_channels=4, grid_images=2)
    metrics, figures = identity_evaluation(model, ds, tmp_path, cfg, log=lambda m: None, oracle=RandomOracle())
    ver = metrics["verification"]
    assert ver["split"] == "unseen" and ver["n_folds"] == 4 and ver["pairs_per_fold"] == 20
    assert set(ver["features"]) == {"identity", "rest", "identity+rest"}
    assert (tmp_path / ver["pairs_file"]).read_text().startswith("4\t20\n")
    rec = metrics["recognition"]
    assert set(rec["features"]) == {"identity", "rest", "identity+rest"}
    assert "identity" in rec["features"]["rest"]          # 16 classes: under the class cap
    assert set(rec["difference_identity_minus_rest"]) == set(rec["features"]["identity"])
    assert rec["identity_linked"] == ["skin_tone", "hair_colour"]
    assert set(metrics["gaussianity"]) == {"identity", "rest"}
    ed = metrics["editing"]["by_direction"]
    assert set(ed) == {"svm", "mean"}
    assert set(ed["svm"]["attributes"]) == {"expression", "glasses"}   # what the oracle predicts
    for res in ed["svm"]["attributes"].values():
        assert res["part"] == "rest" and 0 <= res["success_rate"] <= 1 and "identity_verified" in res
    for path in figures.values():
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
    assert any("ROC" in t for t in figures) and any("Residual" in t for t in figures)
    write_json(tmp_path / "m.json", metrics)               # JSON-serialisable
    json.loads((tmp_path / "m.json").read_text())
    lines = identity_headline_lines(metrics)
    assert any(line.startswith("verification (unseen) identity:") for line in lines)
    assert any(line.startswith("editing along svm directions") for line in lines)


def test_identity_evaluation_without_identity_edits_blobs(tmp_path):
    """No identity attribute: verification is skipped; edits of an autoencoder are scored by an exact oracle."""
    ds = blobs_dataset(n=160)
    cfg = build_dataclass(RunConfig, {"data": {"name": "digits", "size": 32},
                                      "model": {"method": "autoencoder", "attributes": ["colour"], "width": 8,
                                                "part_dims": {"colour": 4, "rest": 4}}})
    torch.manual_seed(0)
    model = build_model(cfg, ds).eval()
    cfg = IdentityEvalConfig(edit_images=24, grid_images=2, edit_directions=("mean",))
    metrics, figures = identity_evaluation(model, ds, tmp_path, cfg, log=lambda m: None, oracle=BlobsOracle())
    assert "skipped" in metrics["verification"]
    assert set(metrics["recognition"]["features"]) == {"colour", "rest", "colour+rest"}
    assert "difference_identity_minus_rest" not in metrics["recognition"]
    by = metrics["editing"]["by_direction"]["mean"]["attributes"]
    assert by["colour"]["part"] == "colour" and by["place"]["part"] == "rest"
    assert "identity_cosine" not in by["colour"]
    assert not any("Residual" in t for t in figures)


def test_edit_image_checks_the_value():
    ds = blobs_dataset(n=96)
    cfg = build_dataclass(RunConfig, {"data": {"name": "digits", "size": 32},
                                      "model": {"method": "autoencoder", "attributes": ["colour"], "width": 8,
                                                "part_dims": {"colour": 4, "rest": 4}}})
    model = build_model(cfg, ds).eval()
    out = edit_image(model, ds, ds.images[:3], "colour", "g")
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.uint8
    with pytest.raises(FacefactorsError, match="no class 'purple'"):
        edit_image(model, ds, ds.images[:1], "colour", "purple")
    with pytest.raises(FacefactorsError, match="out of range"):
        edit_image(model, ds, ds.images[:1], "place", 5)
