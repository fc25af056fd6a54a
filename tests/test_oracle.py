"""The evaluation oracle: accurate on tiny data, deterministic, cached, robust to a broken cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facefactors.data.synthfaces import SynthFacesConfig, generate
from facefactors.errors import FacefactorsError
from facefactors.eval.oracle import (EvalOracle, OracleConfig, fingerprint, get_oracle, load_oracle, oracle_path,
                                     regressed_columns)
from tests.helpers import blobs_dataset

TINY = OracleConfig(steps=60, batch_size=32, width=8, feature_dim=32, lr=3e-3)


@pytest.fixture(scope="module")
def blobs():
    return blobs_dataset(n=160, size=16, seed=1)


@pytest.fixture(scope="module")
def blobs_oracle(blobs, tmp_path_factory):
    cache = tmp_path_factory.mktemp("oracle-cache")
    lines: list[str] = []
    oracle = get_oracle(blobs, TINY, cache_dir=cache, log=lines.append)
    return oracle, cache, lines


def test_blobs_oracle_is_accurate(blobs, blobs_oracle):
    oracle, cache, lines = blobs_oracle
    assert isinstance(oracle, EvalOracle)
    assert set(oracle.attributes) == {"colour", "place"} and oracle.regressed == []
    assert any("training" in s for s in lines) and any("cached" in s for s in lines)
    scores = oracle.evaluate(blobs, "test")
    assert scores["accuracy"]["colour"] >= 0.9 and scores["accuracy"]["place"] >= 0.9  # chance 1/3 and 1/2
    test = blobs.split("test")
    pred = oracle.predict(blobs.images[test])
    assert pred["colour"].dtype == np.int64 and pred["colour"].shape == (len(test),)
    proba = oracle.predict_proba(blobs.images[test])
    assert proba["colour"].shape == (len(test), 3)
    np.testing.assert_allclose(proba["colour"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(proba["colour"].argmax(1), pred["colour"])
    feats = oracle.features(blobs.images[test])
    assert feats.shape == (len(test), TINY.feature_dim) and np.isfinite(feats).all()


def test_numpy_nhwc_input_and_wrong_size(blobs, blobs_oracle):
    oracle = blobs_oracle[0]
    x = blobs.images[:10]
    nhwc = x.permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(oracle.predict(nhwc)["colour"], oracle.predict(x)["colour"])
    with pytest.raises(FacefactorsError, match="expects 3x16x16"):
        oracle.predict(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(FacefactorsError, match="uint8"):
        oracle.predict(torch.zeros(2, 3, 16, 16))


def test_cache_round_trip_is_identical(blobs, blobs_oracle):
    oracle, cache, _ = blobs_oracle
    path = oracle_path(blobs, TINY, cache)
    assert path.is_file() and path.parent.name == "oracles"
    lines: list[str] = []
    again = get_oracle(blobs, TINY, cache_dir=cache, log=lines.append)
    assert any("loaded" in s for s in lines) and not any("training" in s for s in lines)
    imgs = blobs.images[blobs.split("test")]
    for a in ("colour", "place"):
        np.testing.assert_array_equal(again.predict_proba(imgs)[a], oracle.predict_proba(imgs)[a])
    np.testing.assert_array_equal(again.features(imgs), oracle.features(imgs))
    assert again.report == oracle.report and again.fingerprint == oracle.fingerprint


def test_fingerprint_depends_on_data_and_config(blobs):
    fp = fingerprint(blobs, TINY)
    assert fp == fingerprint(blobs, OracleConfig(**vars(TINY)))
    assert fp != fingerprint(blobs, OracleConfig(**{**vars(TINY), "seed": 1}))
    other = blobs_dataset(n=160, size=16, seed=2)
    assert fp != fingerprint(other, TINY)


def test_corrupted_cache_is_retrained(blobs, tmp_path):
    cfg = OracleConfig(**{**vars(TINY), "steps": 5})
    path = oracle_path(blobs, cfg, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00not a safetensors file")
    with pytest.raises(FacefactorsError, match="not a facefactors evaluation oracle"):
        load_oracle(path)
    lines: list[str] = []
    oracle = get_oracle(blobs, cfg, cache_dir=tmp_path, log=lines.append)
    assert any("ignoring the cached file" in s for s in lines) and any("training" in s for s in lines)
    assert load_oracle(path, oracle.fingerprint).fingerprint == oracle.fingerprint  # replaced by a good file
    with pytest.raises(FacefactorsError, match="another dataset"):
        load_oracle(path, "0" * 64)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_training_is_deterministic(blobs, tmp_path):
    cfg = OracleConfig(**{**vars(TINY), "steps": 8})
    a = get_oracle(blobs, cfg, cache_dir=tmp_path / "a", log=None)
    b = get_oracle(blobs, cfg, cache_dir=tmp_path / "b", log=None)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k


def test_small_synthfaces_oracle(tmp_path):
    ds = generate(SynthFacesConfig(n=800, size=32, n_identities=6, seed=1))
    cols = regressed_columns(ds)
    assert cols[:4] == ["expression_intensity", "light_strength", "yaw", "roll"]
    assert "noise" not in cols  # constant column
    oracle = get_oracle(ds, OracleConfig(steps=120, batch_size=32), cache_dir=tmp_path, log=None)
    assert set(oracle.attributes) == {"identity", "expression", "illumination", "pose", "glasses", "background",
                                      "skin_tone", "hair_colour"}
    rep = oracle.report
    assert rep["accuracy"]["identity"] >= 0.9 and rep["accuracy"]["background"] >= 0.9
    assert np.mean(list(rep["accuracy"].values())) >= 0.75
    assert rep["r2"]["yaw"] > 0.5
    # regressed values come back in the original units
    test = ds.split("test")
    yaw = oracle.predict(ds.images[test])["yaw"]
    assert np.abs(yaw).max() < 1.0 and np.corrcoef(yaw, ds.factors["yaw"][test])[0, 1] > 0.7
