"""Known-answer tests for the evaluation metrics: latents, leakage probes, reconstruction, counterfactuals.

The fixtures are a tiny procedural "shapes" dataset (colour, shape, background, position,
exactly re-renderable from its factors) and hand-built oracle models that invert the
renderer by template matching, so every metric has a known answer.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facefactors.data.specs import AttributeSpec, ImageDataset, to_float_image
from facefactors.eval.counterfactual import METRIC_KEYS, counterfactual_transfer, safe_ratio, sample_pairs
from facefactors.eval.latents import encode_split, load_latents, parts_of, save_latents
from facefactors.eval.probes import leakage_matrix, probe_score
from facefactors.eval.reconstruction import (PSNR_CAP, image_metrics, psnr_from_mse, reconstruction_metrics,
                                             ssim)
from facefactors.latent import Latent
from facefactors.methods.base import Method, MethodParams, ModelSetup

# --------------------------------------------------------------------------- fixtures (shared)
SIZE = 12
COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 70, 230], [230, 210, 40]], np.uint8)
BACKGROUNDS = np.array([[25, 25, 25], [190, 190, 190]], np.uint8)
_SQUARE = np.ones((6, 6), bool)
_PLUS = np.zeros((6, 6), bool)
_PLUS[2:4, :] = True
_PLUS[:, 2:4] = True
_TRIANGLE = np.tril(np.ones((6, 6), bool))
SHAPES = [_SQUARE, _PLUS, _TRIANGLE]
N_COLOUR, N_SHAPE, N_BG, N_X = 4, 3, 2, 3


def render_shapes(factors) -> np.ndarray:
    """factors {colour, shape, bg, x} (N,) ints -> uint8 (N, 12, 12, 3)."""
    colour, shape, bg, x = (np.asarray(factors[k]).astype(int) for k in ("colour", "shape", "bg", "x"))
    out = np.empty((len(colour), SIZE, SIZE, 3), np.uint8)
    for i in range(len(colour)):
        out[i] = BACKGROUNDS[bg[i]]
        y0, x0 = 3, 1 + 2 * x[i]
        region = out[i, y0:y0 + 6, x0:x0 + 6]
        region[SHAPES[shape[i]]] = COLOURS[colour[i]]
    return out


def make_shapes_dataset(n: int = 600, seed: int = 0, n_test: int | None = None) -> ImageDataset:
    """Random shapes with labels colour/shape/background (discrete) and pos (continuous)."""
    rng = np.random.default_rng(seed)
    factors = {"colour": rng.integers(0, N_COLOUR, n), "shape": rng.integers(0, N_SHAPE, n),
               "bg": rng.integers(0, N_BG, n), "x": rng.integers(0, N_X, n)}
    images = torch.from_numpy(render_shapes(factors)).permute(0, 3, 1, 2).contiguous()
    labels = {"colour": torch.from_numpy(factors["colour"]).long(),
              "shape": torch.from_numpy(factors["shape"]).long(),
              "background": torch.from_numpy(factors["bg"]).long(),
              "pos": torch.from_numpy(factors["x"]).float()}
    attrs = {"colour": AttributeSpec("colour", "categorical", ("red", "green", "blue", "yellow")),
             "shape": AttributeSpec("shape", "categorical", ("square", "plus", "triangle")),
             "background": AttributeSpec("background", "binary", ("dark", "light")),
             "pos": AttributeSpec("pos", "continuous")}
    perm = rng.permutation(n)
    k = n_test if n_test is not None else n // 3
    splits = {"train": np.sort(perm[k:]), "test": np.sort(perm[:k])}
    return ImageDataset("shapes", images, labels, attrs, splits, factors=factors, renderer=render_shapes,
                        factor_groups={"colour": ["colour"], "shape": ["shape"], "pos": ["x"],
                                       "background": ["bg"]})


class ShapesOracle(Method):
    """Inverts ``render_shapes`` by nearest template; decodes by re-rendering exactly.

    Parts: ``colour`` (one-hot 4; ``dup=True`` repeats it 3x and adds a constant column),
    ``shape`` (one-hot 3), ``rest`` a (B, k, 1, 1) map with background and position
    one-hots (plus the colour one-hot when ``colour_in_rest``), and optionally ``noise``
    (pure Gaussian noise, 8 dims). With ``decoder_colour_from="rest"`` the decoder ignores
    the colour part.
    """

    name = "shapes_oracle"

    def __init__(self, noise: bool = False, dup: bool = False, colour_in_rest: bool = False,
                 decoder_colour_from: str = "colour"):
        super().__init__(ModelSetup(image_size=SIZE, channels=3, attributes=[]), MethodParams())
        combos = np.array(list(itertools.product(range(N_COLOUR), range(N_SHAPE), range(N_BG), range(N_X))))
        self.combos = combos
        templ = render_shapes({"colour": combos[:, 0], "shape": combos[:, 1], "bg": combos[:, 2], "x": combos[:, 3]})
        self.register_buffer("templates", to_float_image(torch.from_numpy(templ).permute(0, 3, 1, 2)).flatten(1))
        self.noise, self.dup = noise, dup
        self.colour_in_rest = colour_in_rest or decoder_colour_from == "rest"
        self.decoder_colour_from = decoder_colour_from
        self.frozen = nn.Linear(1, 1)  # a submodule whose mode must survive evaluation
        self.gen = torch.Generator().manual_seed(123)

    @property
    def part_names(self) -> list[str]:
        return ["colour", "shape"] + (["noise"] if self.noise else []) + ["rest"]

    def encode(self, x: torch.Tensor) -> Latent:
        d = torch.cdist(x.flatten(1).float(), self.templates)
        f = torch.from_numpy(self.combos)[d.argmin(1)]
        colour = F.one_hot(f[:, 0], N_COLOUR).float()
        parts = {"colour": torch.cat([colour] * 3 + [torch.ones(len(x), 1)], 1) if self.dup else colour,
                 "shape": F.one_hot(f[:, 1], N_SHAPE).float()}
        if self.noise:
            parts["noise"] = torch.randn(len(x), 8, generator=self.gen)
        rest = [F.one_hot(f[:, 2], N_BG).float(), F.one_hot(f[:, 3], N_X).float()]
        if self.colour_in_rest:
            rest.append(colour)
        parts["rest"] = torch.cat(rest, 1)[:, :, None, None]
        return Latent(parts)

    def decode(self, z: Latent) -> torch.Tensor:
        rest = z["rest"].flatten(1)
        colour = rest[:, N_BG + N_X:] if self.decoder_colour_from == "rest" else z["colour"][:, :N_COLOUR]
        factors = {"colour": colour.argmax(1).numpy(), "shape": z["shape"].argmax(1).numpy(),
                   "bg": rest[:, :N_BG].argmax(1).numpy(), "x": rest[:, N_BG:N_BG + N_X].argmax(1).numpy()}
        return to_float_image(torch.from_numpy(render_shapes(factors)).permute(0, 3, 1, 2))


@pytest.fixture(scope="module")
def ds() -> ImageDataset:
    return make_shapes_dataset()


def _encode(model, ds):
    return (encode_split(model, ds, ds.split("train"), batch_size=128),
            encode_split(model, ds, ds.split("test"), batch_size=128))


# --------------------------------------------------------------------------- latents
def test_encode_split_layout_and_training_mode(ds, tmp_path):
    model = ShapesOracle()
    model.train()
    model.frozen.eval()
    idx = ds.split("test")[:50]
    arrays = encode_split(model, ds, idx, batch_size=16)
    assert model.training and not model.frozen.training  # per-module modes restored
    assert parts_of(arrays) == ["colour", "shape", "rest"]
    assert arrays["part/colour"].shape == (50, 4) and arrays["part/colour"].dtype == np.float32
    assert arrays["part/rest"].shape == (50, N_BG + N_X)  # (B, 5, 1, 1) map flattened
    assert set(k for k in arrays if k.startswith("label/")) == {f"label/{a}" for a in ds.labels}
    assert set(k for k in arrays if k.startswith("factor/")) == {f"factor/{c}" for c in ds.factors}
    np.testing.assert_array_equal(arrays["index"], idx)
    np.testing.assert_array_equal(arrays["part/colour"].argmax(1), ds.labels["colour"].numpy()[idx])
    np.testing.assert_array_equal(arrays["factor/x"], ds.factors["x"][idx])

    path = tmp_path / "lat.npz"
    save_latents(path, arrays)
    back = load_latents(path)
    assert set(back) == set(arrays)
    for k in arrays:
        np.testing.assert_array_equal(back[k], arrays[k])
    assert [p.name for p in tmp_path.iterdir()] == ["lat.npz"]  # no temporary left behind


# --------------------------------------------------------------------------- probes
def test_oracle_leakage_known_answers(ds):
    train, test = _encode(ShapesOracle(noise=True), ds)
    leak = leakage_matrix(train, test, ds.attributes, probes=("linear", "mlp"), mlp_hidden=32, seed=0)
    assert set(leak) == {"linear", "mlp"}
    for kind in leak:
        assert set(leak[kind]) == {"colour", "shape", "noise", "rest"}
        # pos is continuous: never probed
        assert all(set(v) == {"colour", "shape", "background"} for v in leak[kind].values())
        for attr in ("colour", "shape"):
            e = leak[kind][attr][attr]
            assert e["accuracy"] == pytest.approx(1.0) and e["normalized"] == pytest.approx(1.0)
        for attr in ("colour", "shape", "background"):  # pure noise holds nothing
            assert abs(leak[kind]["noise"][attr]["normalized"]) < 0.15, (kind, attr)
        assert abs(leak[kind]["colour"]["shape"]["normalized"]) < 0.15  # independent factors
        assert leak[kind]["rest"]["background"]["normalized"] == pytest.approx(1.0)
        for by_attr in leak[kind].values():
            for e in by_attr.values():
                assert set(e) == {"accuracy", "chance", "normalized"}
                assert e["normalized"] == pytest.approx((e["accuracy"] - e["chance"]) / (1 - e["chance"]))


def test_duplicated_dimensions_and_chance(ds):
    train, test = _encode(ShapesOracle(dup=True, colour_in_rest=True), ds)
    assert train["part/colour"].shape[1] == 3 * N_COLOUR + 1  # repeated + constant column
    leak = leakage_matrix(train, test, ds.attributes, probes=("linear",), max_train=300, max_test=150, seed=1)
    colour = leak["linear"]["colour"]["colour"]
    assert colour["accuracy"] == pytest.approx(1.0)
    assert leak["linear"]["rest"]["colour"]["normalized"] == pytest.approx(1.0)  # duplicated into rest: leaks
    # chance = test accuracy of the most frequent train class, on the same subsample
    full = leakage_matrix(train, test, ds.attributes, probes=("linear",), max_train=None, max_test=None)
    ytr, yte = train["label/shape"], test["label/shape"]
    majority = np.bincount(ytr).argmax()
    assert full["linear"]["colour"]["shape"]["chance"] == pytest.approx(np.mean(yte == majority))


def test_single_class_attribute_skipped_and_degenerate_chance(ds):
    train, test = _encode(ShapesOracle(), ds)
    train = dict(train, **{"label/background": np.zeros_like(train["label/background"])})
    leak = leakage_matrix(train, test, ds.attributes, probes=("linear",))
    assert "background" not in leak["linear"]["colour"]
    x = np.random.default_rng(0).normal(size=(40, 3))
    r = probe_score("linear", x, np.arange(40) % 2, x[:10], np.zeros(10, int))
    assert r["chance"] == 1.0 and r["normalized"] == 0.0  # documented: chance 1 -> normalized 0


def test_mlp_probe_tiny_classes_falls_back_without_early_stopping():
    rng = np.random.default_rng(0)
    y = np.array([0] * 20 + [1] * 20 + [2])  # class 2 has one member: no stratified split possible
    x = rng.normal(size=(41, 4)) + y[:, None]
    r = probe_score("mlp", x, y, x, y, hidden=8)
    assert 0.0 <= r["accuracy"] <= 1.0


# --------------------------------------------------------------------------- reconstruction
def test_psnr_capped_for_identical_images():
    x = torch.rand(4, 3, 16, 16)
    m = image_metrics(x, x)
    assert m["mse"] == 0.0 and m["psnr"] == PSNR_CAP and math.isfinite(m["psnr"])
    assert m["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert psnr_from_mse(0.01) == pytest.approx(20.0)
    assert psnr_from_mse(1e-30) == PSNR_CAP


def test_ssim_drops_with_noise_and_handles_tiny_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    s = ssim(noisy, x)
    assert s.shape == (2,) and (s < 0.9).all()
    tiny = torch.rand(1, 1, 6, 6, generator=g)
    assert ssim(tiny, tiny).item() == pytest.approx(1.0, abs=1e-5)


def test_reconstruction_metrics_of_oracle(ds):
    model = ShapesOracle()
    m = reconstruction_metrics(model, ds, ds.split("test")[:40], batch_size=16)
    assert m["mse"] == 0.0 and m["psnr"] == PSNR_CAP and m["n_images"] == 40


# --------------------------------------------------------------------------- counterfactual
def test_sample_pairs_differ_and_are_seeded():
    labels = np.array([0, 0, 0, 1, 1, 2] * 10)
    a, b = sample_pairs(labels, 100, np.random.default_rng(5))
    assert len(a) == 100 and (labels[a] != labels[b]).all()
    a2, b2 = sample_pairs(labels, 100, np.random.default_rng(5))
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    a, b = sample_pairs(np.zeros(10), 5, np.random.default_rng(0))
    assert len(a) == 0  # no differing pairs exist
    a, b = sample_pairs(np.arange(10), 20, np.random.default_rng(0))  # "random pairs" mode
    assert len(a) == 20 and (a != b).all()
    assert safe_ratio(0.0, 0.0) == 0.0 and safe_ratio(1.0, 0.0) is None and safe_ratio(1.0, 2.0) == 0.5


def test_counterfactual_oracle_is_exact(ds):
    metrics, examples = counterfactual_transfer(ShapesOracle(), ds, n_pairs=40, seed=0, batch_size=16,
                                                n_examples=3)
    assert set(metrics) == {"colour", "shape"}  # rest names no attribute
    for part, m in metrics.items():
        assert set(m) == set(METRIC_KEYS)
        assert m["n_pairs"] == 40
        for k in set(METRIC_KEYS) - {"n_pairs"}:
            assert m[k] == pytest.approx(0.0, abs=1e-12), (part, k)
        ex = examples[part]
        assert set(ex) == {"a", "b", "truth", "transfer"}
        assert ex["a"].shape == (3, SIZE, SIZE, 3) and ex["a"].dtype == np.uint8
        np.testing.assert_array_equal(ex["truth"], ex["transfer"])
        assert (ex["a"] != ex["truth"]).any()  # labels differ within pairs, so the truth changed


def test_counterfactual_of_model_ignoring_the_part(ds):
    model = ShapesOracle(decoder_colour_from="rest")
    metrics, _ = counterfactual_transfer(model, ds, n_pairs=40, seed=0, batch_size=64)
    m = metrics["colour"]
    assert m["region_ratio_to_no_change"] == pytest.approx(1.0)
    assert m["ratio_to_no_change"] == pytest.approx(1.0)
    assert m["mse"] > 0 and m["region_mse"] > m["mse"]  # the change is concentrated in the region
    assert m["ratio_to_reconstruction"] is None  # reconstruction is exact: x / 0 has no value
    assert metrics["shape"]["ratio_to_no_change"] == pytest.approx(0.0)
    # the split blames the recipient's other parts (its rest holds the colour), not the donor's part
    assert m["mse_donor_part_only"] == 0.0 and m["ratio_donor_part_only"] == 0.0
    assert m["mse_recipient_others_only"] == pytest.approx(m["mse"])


def test_counterfactual_split_blames_a_part_that_carries_more_than_its_attribute(ds):
    class ColourHoldsBackground(ShapesOracle):
        """The colour part also holds the background, and the decoder reads it from there."""

        def encode(self, x):
            z = super().encode(x)
            bg = z["rest"].flatten(1)[:, :N_BG]
            return Latent({**dict(z.items()), "colour": torch.cat([z["colour"], bg], 1)})

        def decode(self, z):
            rest = z["rest"].flatten(1).clone()
            rest[:, :N_BG] = z["colour"][:, N_COLOUR:]
            return super().decode(Latent({**dict(z.items()), "colour": z["colour"][:, :N_COLOUR],
                                          "rest": rest[:, :, None, None]}))

    m = counterfactual_transfer(ColourHoldsBackground(), ds, n_pairs=40, seed=0)[0]["colour"]
    assert m["mse"] > 0 and m["mse_donor_part_only"] > 0  # the donor's background comes along
    assert m["mse_recipient_others_only"] == 0.0  # the recipient's other parts hold no colour


def test_counterfactual_continuous_part_uses_random_pairs(ds):
    class PosOracle(ShapesOracle):
        """Exposes the position as its own part named after the continuous attribute."""

        @property
        def part_names(self):
            return ["colour", "shape", "pos", "rest"]

        def encode(self, x):
            z = super().encode(x)
            rest = z["rest"].flatten(1)
            return Latent({"colour": z["colour"], "shape": z["shape"], "pos": rest[:, N_BG:],
                           "rest": z["rest"]})

        def decode(self, z):
            rest = z["rest"].flatten(1).clone()
            rest[:, N_BG:] = z["pos"]
            return super().decode(z.replace(rest=rest[:, :, None, None]))

    metrics, _ = counterfactual_transfer(PosOracle(), ds, n_pairs=30, seed=2)
    assert metrics["pos"]["n_pairs"] == 30 and metrics["pos"]["mse"] == pytest.approx(0.0)
    assert metrics["pos"]["ratio_to_no_change"] == pytest.approx(0.0)


class TemplateReader:
    """A stand-in evaluation oracle: reads colour/shape/background labels and the position x back."""

    def __init__(self):
        self.model = ShapesOracle()

    def predict(self, images):
        from facefactors.eval.latents import as_nchw_uint8

        z = self.model.encode(to_float_image(as_nchw_uint8(images)))
        rest = z["rest"].flatten(1)
        return {"colour": z["colour"].argmax(1).numpy(), "shape": z["shape"].argmax(1).numpy(),
                "background": rest[:, :N_BG].argmax(1).numpy(),
                "x": rest[:, N_BG:N_BG + N_X].argmax(1).numpy().astype(float)}


@pytest.mark.parametrize("colour_from, expected", [("colour", 1.0), ("rest", 0.0)])
def test_counterfactual_oracle_readback(ds, colour_from, expected):
    metrics, _ = counterfactual_transfer(ShapesOracle(decoder_colour_from=colour_from), ds, n_pairs=40,
                                         seed=0, batch_size=16, oracle=TemplateReader())
    r = metrics["colour"]["oracle"]
    assert r["label_from_donor"] == pytest.approx(expected)  # pairs differ in colour
    assert r["label_from_donor_truth"] == 1.0
    assert r["labels_kept"] == {"shape": 1.0, "background": 1.0}
    assert r["spearman_kept"]["x"] == pytest.approx(1.0) and r["spearman_donor"] == {}
    assert r["spearman_kept_recon"]["x"] == pytest.approx(1.0)  # the oracle model re-renders exactly


def test_oracle_readback_skips_rows_where_the_factor_does_not_show():
    """A factor hidden for some labels (a neutral face has no intensity) is correlated over the rest."""
    import dataclasses

    from facefactors.eval.counterfactual import oracle_readback, visible_rows

    ds = make_shapes_dataset(n=200, seed=3)
    ia, ib = np.arange(0, 100), np.arange(100, 200)
    x = np.asarray(ds.factors["x"], dtype=float)
    hidden_rows = ds.labels["colour"].numpy()[ia] == 0
    read = np.where(hidden_rows, np.random.default_rng(0).permutation(x[ia]) * -1.0, x[ia])
    transfer = truth = {"x": read}
    plain = oracle_readback(ds, "colour", ia, ib, transfer, truth)
    masked_ds = dataclasses.replace(ds, factor_hidden={"x": {"colour": [0]}})
    np.testing.assert_array_equal(visible_rows(masked_ds, "x", ia), ~hidden_rows)
    masked = oracle_readback(masked_ds, "colour", ia, ib, transfer, truth)
    assert masked["spearman_kept"]["x"] == pytest.approx(1.0)
    assert masked["spearman_kept_truth"]["x"] == pytest.approx(1.0)
    assert plain["spearman_kept"]["x"] < 0.9


def test_synthfaces_declares_neutral_intensity_hidden():
    from facefactors.data.synthfaces import SynthFacesConfig, generate

    ds = generate(SynthFacesConfig(size=32, n=40, n_identities=4, seed=0), workers=1)
    assert ds.factor_hidden == {"expression_intensity": {"expression": [0]}}
    f = {k: np.array(v[:1], copy=True) for k, v in ds.factors.items()}
    f["expression"][:] = 0
    a = ds.renderer({**f, "expression_intensity": np.array([0.3])})
    b = ds.renderer({**f, "expression_intensity": np.array([1.0])})
    np.testing.assert_array_equal(a, b)  # a neutral face's intensity changes no pixel


def test_spearman_text_names_the_ceilings():
    from facefactors.eval.evaluate import spearman_text

    r = {"spearman_donor": {"i": 0.3}, "spearman_donor_recon": {"i": 0.45}, "spearman_donor_truth": {"i": 0.9}}
    assert spearman_text(r, "{:.2f}".format) == "i 0.30 (reconstructions 0.45, true images 0.90)"
    assert spearman_text({"spearman_donor": {"i": 0.3}}, "{:.2f}".format) == "i 0.30"
