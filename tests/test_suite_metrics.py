"""Known-answer tests for the evaluation suite: posterior entropy, Hopkins, Fréchet, few-shot,
t-SNE figures, and the suite inside ``evaluate`` (metrics.json keys, report sections)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facefactors.data.specs import AttributeSpec
from facefactors.errors import FacefactorsError
from facefactors.eval.entropy import entropy, entropy_summary, posterior_entropy
from facefactors.eval.evaluate import EvalConfig, evaluate, headline, headline_lines
from facefactors.eval.fewshot import fewshot_accuracy, fewshot_unseen
from facefactors.eval.frechet import feature_stats, frechet_distance, frechet_to_real
from facefactors.eval.hopkins import hopkins, hopkins_pvalue, hopkins_table, hopkins_within_clusters
from facefactors.latent import Latent
from facefactors.viz.tsne import tsne_figures
from tests.test_eval_metrics import N_COLOUR, N_SHAPE, ShapesOracle, make_shapes_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ATTRS = {"a": AttributeSpec("a", "categorical", ("x", "y", "z")), "b": AttributeSpec("b", "binary", ("no", "yes"))}


def _arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    """Part ``a`` holds attribute a (one-hot + noise), part ``noise`` nothing."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 3, n), rng.integers(0, 2, n)
    return {"part/a": (np.eye(3)[a] + 0.05 * rng.normal(size=(n, 3))).astype(np.float32),
            "part/noise": rng.normal(size=(n, 4)).astype(np.float32),
            "label/a": a, "label/b": b, "index": np.arange(n)}


# --------------------------------------------------------------------------- entropy
def test_entropy_known_values_and_errors():
    assert entropy(np.full((2, 4), 0.25)) == pytest.approx([math.log(4)] * 2)
    assert entropy(np.eye(3)) == pytest.approx([0.0] * 3)
    s = entropy_summary(np.array([[0.5, 0.5, 0.0, 0.0]]))
    assert s == {"entropy": pytest.approx(math.log(2)), "normalized": pytest.approx(0.5), "num_classes": 4}
    with pytest.raises(FacefactorsError, match="probabilities"):
        entropy(np.array([[0.7, 0.7]]))
    with pytest.raises(FacefactorsError, match=r"part_posteriors\['a'\]\['a'\] must be probabilities"):
        posterior_entropy(_arrays(50, 0), _arrays(40, 1), ATTRS, posteriors={"a": {"a": np.ones((40, 3))}})


def test_posterior_entropy_probe_and_model_sources():
    train, test = _arrays(600, 0), _arrays(300, 1)
    out = posterior_entropy(train, test, ATTRS)
    assert out["source"] == {"a": "probe", "noise": "probe"}
    assert out["parts"]["a"]["a"]["normalized"] < 0.2          # the code tells the class
    assert out["parts"]["noise"]["a"]["normalized"] > 0.9      # says nothing: ~ the (balanced) prior
    assert out["parts"]["a"]["b"]["normalized"] > 0.9          # independent attribute
    # the method's own posteriors take precedence where given
    own = {"a": {"a": np.tile([0.5, 0.5, 0.0], (300, 1))}}
    mixed = posterior_entropy(train, test, ATTRS, posteriors=own)
    assert mixed["source"]["a"] == "model" and mixed["source"]["noise"] == "probe"
    assert mixed["parts"]["a"]["a"]["entropy"] == pytest.approx(math.log(2))
    assert mixed["parts"]["a"]["b"]["normalized"] > 0.9        # missing pair: filled by a probe
    with pytest.raises(FacefactorsError, match="shape"):
        posterior_entropy(train, test, ATTRS, posteriors={"a": {"a": np.ones((5, 3)) / 3}})


# --------------------------------------------------------------------------- Hopkins
def test_hopkins_uniform_clustered_and_pvalue():
    rng = np.random.default_rng(0)
    uniform = [hopkins(rng.uniform(size=(400, 2)), rng=rng) for _ in range(30)]
    assert np.mean(uniform) == pytest.approx(0.5, abs=0.05)  # Beta(m, m) under uniform scatter
    centres = rng.uniform(-10, 10, size=(4, 2))
    clustered = (centres[rng.integers(0, 4, 400)] + 0.05 * rng.normal(size=(400, 2)))
    assert hopkins(clustered, rng=rng) > 0.95
    assert hopkins_pvalue(0.5, 40) == pytest.approx(0.5)
    assert hopkins_pvalue(0.75, 40) < 0.001
    with pytest.raises(FacefactorsError):
        hopkins(np.zeros((1, 2)))


def test_hopkins_within_clusters_reads_sub_structure():
    rng = np.random.default_rng(1)
    n = 1200
    a, b = rng.integers(0, 3, n), rng.integers(0, 4, n)
    centre = 10.0 * np.eye(8)[a]
    free = centre + rng.normal(size=(n, 8))                              # b spread at random in each cluster
    held = centre + rng.normal(size=(n, 8)) * 0.3 + 3.0 * np.eye(8)[b + 3]   # b forms sub-clusters
    r_free = hopkins_within_clusters(free, a, b, seed=0)
    r_held = hopkins_within_clusters(held, a, b, seed=0)
    assert r_free["mean"] == pytest.approx(0.5, abs=0.07) and r_free["clustered_fraction"] < 0.2
    assert r_held["mean"] > 0.85 and r_held["clustered_fraction"] == 1.0
    assert set(r_held["per_class"]) == {"0", "1", "2"} and r_held["per_class"]["0"]["n_groups"] == 4
    # the table runs for parts named after an attribute, grouped by every other attribute
    arrays = {"part/a": held.astype(np.float32), "part/rest": free, "label/a": a, "label/b": b, "index": np.arange(n)}
    table = hopkins_table(arrays, {**ATTRS, "b": AttributeSpec("b", "categorical", tuple("pqrs"))})
    assert set(table) == {"a"} and set(table["a"]) == {"b"}
    assert set(table["a"]["b"]["per_class"]) == {"x", "y", "z"}  # class names


# --------------------------------------------------------------------------- Fréchet
def test_frechet_distance_known_values():
    mu, s = np.zeros(3), np.eye(3)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu, s, mu + [1.0, 2.0, 2.0], s) == pytest.approx(9.0)
    # diagonal covariances: |mu1 - mu2|^2 + sum (sigma1 - sigma2)^2
    assert frechet_distance(mu, np.diag([1.0, 4.0, 9.0]), mu, np.diag([4.0, 4.0, 1.0])) == pytest.approx(1 + 0 + 4)
    # rank-deficient covariances stay finite and non-negative
    x = np.random.default_rng(0).normal(size=(5, 10))
    assert math.isfinite(frechet_distance(*feature_stats(x), *feature_stats(x + 1.0)))
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20000, 2)), rng.normal(size=(20000, 2)) + [3.0, 0.0]
    assert frechet_distance(*feature_stats(a), *feature_stats(b)) == pytest.approx(9.0, abs=0.15)
    with pytest.raises(FacefactorsError):
        feature_stats(np.zeros((1, 3)))


class MeanColourOracle:
    """A stand-in feature extractor: per-channel mean and std of each image."""

    fingerprint = "f" * 64

    def features(self, images, batch_size=256):
        x = torch.as_tensor(images).float()
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1).double().numpy()


def test_frechet_to_real_names_the_extractor():
    ds = make_shapes_dataset(n=200, seed=3)
    test = ds.split("test")
    same = frechet_to_real(ds.images[test], ds, MeanColourOracle(), real_indices=test)
    assert same["value"] == pytest.approx(0.0, abs=1e-6) and same["extractor"] == "facefactors-oracle:" + "f" * 20
    assert same["n_generated"] == same["n_real"] == len(test)
    darker = frechet_to_real(ds.images[test] // 2, ds, MeanColourOracle(), real_indices=test)
    assert darker["value"] > 100.0
    nhwc = ds.images[test].permute(0, 2, 3, 1).numpy()  # renderer layout works too
    assert frechet_to_real(nhwc, ds, MeanColourOracle(), real_indices=test)["value"] == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- few-shot
def test_fewshot_known_answers():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(8), 15)
    clean = np.eye(8)[y] + 0.05 * rng.normal(size=(len(y), 8))
    r = fewshot_accuracy(clean, y, shots=(1, 5, 10), draws=3)
    assert set(r) == {"1", "5", "10"}
    for k in r:
        assert r[k]["accuracy"] == pytest.approx(1.0) and r[k]["chance"] == pytest.approx(1 / 8)
        assert r[k]["n_queries"] == 8 * (15 - int(k))
    noise = fewshot_accuracy(rng.normal(size=(len(y), 8)), y, shots=(5,), draws=5)
    assert noise["5"]["accuracy"] < 0.3
    assert fewshot_accuracy(clean, y, shots=(5,), draws=2, method="logistic")["5"]["accuracy"] == pytest.approx(1.0)
    assert "20" not in fewshot_accuracy(clean, y, shots=(20,))  # needs k + 1 images per identity
    arrays = {"part/id": clean, "part/noise": rng.normal(size=(len(y), 3)), "label/identity": y}
    out = fewshot_unseen(arrays, shots=(1,), draws=2)
    assert out["parts"]["id"]["1"]["accuracy"] == pytest.approx(1.0) and set(out["parts"]) == {"id", "noise"}
    with pytest.raises(FacefactorsError, match="identity"):
        fewshot_unseen({"part/id": clean}, shots=(1,))


# --------------------------------------------------------------------------- t-SNE
def test_tsne_figures(tmp_path):
    attrs = {**ATTRS, "c": AttributeSpec("c", "continuous")}
    arrays = _arrays(120, 2)
    arrays["label/c"] = np.linspace(0, 1, 120)
    figs = tsne_figures(arrays, attrs, tmp_path, max_points=110)
    assert len(figs) == 2
    for path in figs.values():
        assert path.read_bytes().startswith(PNG_MAGIC)
    assert {p.name for p in tmp_path.iterdir()} == {"tsne_a.png", "tsne_noise.png"}
    assert tsne_figures(_arrays(50, 3), ATTRS, tmp_path / "few") == {}  # too few points: no figure


def test_tsne_of_a_scalar_part(tmp_path):
    # A switch part (ifcvae_gan's y value) is one number per image: no 2-D PCA initialisation.
    arrays = _arrays(120, 2)
    arrays["part/switch"] = np.random.default_rng(0).random((120, 1))
    figs = tsne_figures(arrays, ATTRS, tmp_path, parts=["switch"])
    assert [p.name for p in figs.values()] == ["tsne_switch.png"]


def test_tsne_skips_a_collapsed_part(tmp_path):
    # Every code the same (a fully pruned VAE code): sklearn's Barnes-Hut tree crashed the process on it.
    arrays = _arrays(120, 2)
    arrays["part/empty"] = np.zeros((120, 16))
    notes = []
    figs = tsne_figures(arrays, ATTRS, tmp_path, parts=["empty", "a"], log=notes.append)
    assert [p.name for p in figs.values()] == ["tsne_a.png"]
    assert any("skipped for part 'empty'" in n for n in notes)


# --------------------------------------------------------------------------- the suite in evaluate
class PriorShapes(ShapesOracle):
    """ShapesOracle with a prior over the shape part and its own colour classifier."""

    def sample(self, part, n, generator=None):
        if part != "shape":
            raise NotImplementedError
        return F.one_hot(torch.randint(0, N_SHAPE, (n,), generator=generator), N_SHAPE).float()

    def part_posteriors(self, z: Latent):
        return {"colour": {"colour": z["colour"][:, :N_COLOUR].clamp(0, 1) * 0.96 + 0.01}}


def test_evaluate_runs_the_suite(tmp_path):
    ds = make_shapes_dataset(n=600, seed=4)
    ids = ds.labels["colour"] * N_SHAPE + ds.labels["shape"]
    ds.labels["identity"] = ids
    ds.attributes["identity"] = AttributeSpec("identity", "categorical", tuple(f"id{i}" for i in range(12)))
    unseen = np.flatnonzero(np.isin(ids.numpy(), [0, 5]))
    ds.splits = {k: np.setdiff1d(v, unseen) for k, v in ds.splits.items()}
    ds.splits["unseen"] = unseen
    cfg = EvalConfig(n_pairs=8, max_train=300, max_test=120, probes=("linear",), grid_size=2, dci_estimators=5,
                     tsne_points=100, frechet_images=60, oracle_steps=20, oracle_cache=str(tmp_path / "cache"),
                     suite=("mig_dci_sap", "entropy", "hopkins", "tsne", "fewshot", "frechet"))
    metrics = evaluate(PriorShapes(), ds, tmp_path / "run", cfg, log=None)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    for key in ("mig", "dci", "sap", "entropy", "hopkins", "fewshot", "frechet", "oracle", "disentanglement_info"):
        assert key in on_disk, key
    assert set(on_disk["dci"]) >= {"disentanglement", "completeness", "informativeness"}
    assert 0.0 <= on_disk["mig"] <= 1.0 and 0.0 <= on_disk["sap"] <= 1.0
    assert on_disk["entropy"]["source"]["colour"] == "model" and on_disk["entropy"]["source"]["shape"] == "probe"
    assert on_disk["fewshot"]["parts"]["colour"]["1"]["n_classes"] == 2
    fd = on_disk["frechet"]
    assert fd["reconstructions"]["value"] == pytest.approx(0.0, abs=1e-6)  # exact reconstructions
    assert fd["samples"]["sampled_parts"] == ["shape"] and fd["samples"]["extractor"].startswith("facefactors-oracle:")
    # ex-post Gaussian samples exist for every method; decoded one-hot argmaxes are valid shapes, so finite
    assert fd["samples_fitted"]["density"].startswith("Gaussian fitted to training codes")
    assert 0.0 <= fd["samples_fitted"]["value"] < float("inf")
    assert list((tmp_path / "cache" / "oracles").iterdir())
    h = headline(metrics)
    assert h["mig"] == metrics["mig"] and h["dci_disentanglement"] == metrics["dci"]["disentanglement"]
    assert any(line.startswith("MIG") for line in headline_lines(metrics))
    figs = {p.name for p in (tmp_path / "run" / "figures").iterdir()}
    assert {"tsne_colour.png", "tsne_shape.png", "tsne_rest.png"} <= figs
    html = (tmp_path / "run" / "report.html").read_text()
    for title in ("Disentanglement metrics", "Classifier posterior entropy", "Hopkins statistic",
                  "Few-shot recognition", "Fréchet distance", "t-SNE per part", "Gaussian fitted to training codes"):
        assert title in html, title
    assert html.count("data:image/png;base64,") == len(figs)


def test_suite_can_be_switched_off_and_checks_names(tmp_path):
    ds = make_shapes_dataset(n=90, seed=5)
    m = evaluate(ShapesOracle(), ds, tmp_path, EvalConfig(probes=("linear",), grid_size=2, suite=()), log=None)
    assert not {"mig", "dci", "sap", "entropy", "hopkins", "fewshot", "frechet"} & set(m)
    assert "Disentanglement metrics" not in (tmp_path / "report.html").read_text()
    with pytest.raises(FacefactorsError, match="unknown evaluation suite entry 'nosuch'"):
        EvalConfig(suite=("nosuch",))
