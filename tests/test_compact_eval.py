"""Part / complement discriminability, the memorisation check and the attribute interpolation
figure, on constructed cases with known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from facefactors.data.specs import AttributeSpec, ImageDataset
from facefactors.errors import FacefactorsError
from facefactors.eval.complements import (ComplementConfig, complement_evaluation, complement_of, discriminability,
                                          verification_discriminability)
from facefactors.eval.memorisation import (MemorisationConfig, memorisation_check, memorisation_evaluation,
                                           nearest_by_ssim, reconstruction_rmse)
from facefactors.latent import Latent
from facefactors.viz.attribute_interpolation import (attribute_interpolation_grid, interpolation_rows,
                                                     plot_attribute_interpolation)
from facefactors.viz.grids import grid_cell

ATTRS = {"colour": AttributeSpec("colour", "categorical", ("r", "g", "b")),
         "place": AttributeSpec("place", "binary", ("top", "bottom")),
         "identity": AttributeSpec("identity", "categorical", tuple(f"id{i}" for i in range(12))),
         "size": AttributeSpec("size", "continuous")}


def arrays(n, seed, leak=False):
    """Codes with known content: part ``colour`` holds the colour, ``place`` the place, ``identity``
    a per-identity centre, ``size`` the size; ``rest`` is noise (or, with ``leak``, also the colour)."""
    rng = np.random.default_rng(seed)
    colour, place, ident = rng.integers(0, 3, n), rng.integers(0, 2, n), rng.integers(0, 12, n)
    size = rng.normal(size=n)
    centres = np.random.default_rng(99).normal(size=(12, 8))
    noise = lambda d: rng.normal(size=(n, d)).astype(np.float32)  # noqa: E731
    rest = noise(4)
    if leak:
        rest[:, :3] += 4.0 * np.eye(3)[colour]
    return {"part/colour": (4.0 * np.eye(3)[colour] + 0.3 * noise(3)).astype(np.float32),
            "part/place": (4.0 * place[:, None] + 0.3 * noise(2)).astype(np.float32),
            "part/identity": (centres[ident] + 0.1 * noise(8)).astype(np.float32),
            "part/size": (size[:, None] + 0.05 * noise(1)).astype(np.float32),
            "part/rest": rest, "label/colour": colour, "label/place": place, "label/identity": ident,
            "label/size": size.astype(np.float32)}


PARTS = ["colour", "place", "identity", "size", "rest"]


def test_parts_carry_their_attribute_and_complements_do_not():
    train, test = arrays(600, 0), arrays(300, 1)
    out = discriminability(train, test, ATTRS, PARTS, probes=("linear",), auc_max_classes=10)
    assert set(out) == {"colour", "place", "identity", "size"}      # rest names no attribute
    for p in ("colour", "place"):
        e = out[p]
        assert e["complement_parts"] == [q for q in PARTS if q != p]
        assert e["part"]["linear"]["normalized"] > 0.95 and e["part"]["auc"] > 0.99
        assert abs(e["complement"]["linear"]["normalized"]) < 0.2 and abs(e["complement"]["auc"] - 0.5) < 0.1
        assert e["leakage_ratio"]["linear"] < 0.25
    assert "auc" not in out["identity"]["part"]      # 12 classes > auc_max_classes: verification instead
    assert out["size"]["part"]["r2"] > 0.99 and out["size"]["complement"]["r2"] < 0.1
    assert out["size"]["leakage_ratio"]["r2"] < 0.1


def test_a_leaky_complement_is_caught():
    train, test = arrays(600, 0, leak=True), arrays(300, 1, leak=True)
    e = discriminability(train, test, ATTRS, PARTS, probes=("linear",))["colour"]
    assert e["complement"]["linear"]["normalized"] > 0.9 and e["leakage_ratio"]["linear"] > 0.9


def test_method_complements_are_used():
    class Model:
        part_names = PARTS

        def complement_parts(self, part):
            return ["rest"]

    assert complement_of(Model(), "colour") == ["rest"]
    assert complement_of(PARTS, "colour") == ["place", "identity", "size", "rest"]
    with pytest.raises(FacefactorsError, match="unknown latent part"):
        complement_of(PARTS, "glasses")
    train, test = arrays(400, 0, leak=True), arrays(200, 1, leak=True)
    e = discriminability(train, test, ATTRS, PARTS, complement=Model().complement_parts, probes=("linear",))
    assert e["place"]["complement_parts"] == ["rest"] and e["place"]["complement"]["linear"]["normalized"] < 0.2


def test_identity_verification_of_part_and_complement():
    a = arrays(400, 2)
    v = verification_discriminability(a, "identity", ["colour", "place", "rest"], n_folds=4, per_fold=40)
    assert v["part"]["accuracy"] > 0.97
    assert abs(v["complement"]["accuracy"] - 0.5) < 0.15
    assert "roc" not in v["part"] and v["n_folds"] == 4


# ---------------------------------------------------------------------------- memorisation

class PassThrough(nn.Module):
    """encode = the image's pixels, split into a left and a right half; decode puts them back."""

    name = "pass_through"
    part_names = ["left", "right"]

    def encode(self, x):
        half = x.shape[-1] // 2
        return Latent({"left": x[..., :half].flatten(1), "right": x[..., half:].flatten(1)})

    def decode(self, z):
        n, c, s = z.batch_size, 3, self.size
        return torch.cat([z["left"].view(n, c, s, s // 2), z["right"].view(n, c, s, s // 2)], -1)

    def __init__(self, size):
        super().__init__()
        self.size = size


def noise_dataset(n=120, size=16, duplicates=((100, 7), (101, 42))):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    for test_i, train_i in duplicates:
        images[test_i] = images[train_i]
    ident = np.arange(n) % 6
    return ImageDataset("noise", torch.from_numpy(images), {"identity": torch.from_numpy(ident)},
                        {"identity": AttributeSpec("identity", "categorical", tuple("abcdef"))},
                        {"train": np.arange(100), "test": np.arange(100, n)})


def test_nearest_by_ssim_finds_exact_duplicates():
    ds = noise_dataset()
    queries = ds.images[[100, 101]]
    idx, val = nearest_by_ssim(queries, ds.images[:100], k=3, shortlist=8, pool=4)
    assert idx[:, 0].tolist() == [7, 42]
    np.testing.assert_allclose(val[:, 0], 1.0, atol=1e-6)
    assert (val[:, 1] < 0.5).all() and (np.diff(val, axis=1) <= 0).all()   # best first
    idx_all, _ = nearest_by_ssim(queries, ds.images[:100], k=1, shortlist=1000, pool=1)
    assert idx_all[:, 0].tolist() == [7, 42]


def test_memorisation_check_and_rmse(tmp_path):
    ds = noise_dataset()
    model = PassThrough(16)
    res = memorisation_check(model, ds, [100, 101, 102], np.arange(100), k=2, shortlist=16)
    q = res["queries"]
    assert q[0]["train_indices"][0] == 7 and q[1]["train_indices"][0] == 42
    assert q[0]["ssim_to_input"] == pytest.approx(1.0) and q[0]["ssim_to_train"][0] == pytest.approx(1.0)
    assert q[2]["ssim_to_train"][0] < 0.5 and not q[2]["closer_to_train"]
    assert res["summary"]["n_queries"] == 3 and res["images"]["neighbours"].shape == (3, 2, 3, 16, 16)
    rmse = reconstruction_rmse(model, ds, np.arange(10), np.arange(100, 110))
    assert rmse["train"]["rmse"] == 0.0 and rmse["test"]["rmse"] == 0.0 and rmse["gap"] == 0.0
    metrics, figures = memorisation_evaluation(model, ds, tmp_path, MemorisationConfig(n_queries=4, k=2))
    assert metrics["summary"]["n_queries"] == 4 and all(p.is_file() for p in figures.values())


# ---------------------------------------------------------------------------- interpolation figure

def test_attribute_interpolation_rows_and_endpoints(tmp_path):
    model = PassThrough(16)
    ds = noise_dataset()
    a, b = ds.images[:2], ds.images[2:4]
    rows = interpolation_rows(model)
    assert rows == [("left", ["left"]), ("right", ["right"]), ("all but left", ["right"]),
                    ("all but right", ["left"]), ("all", ["left", "right"])]
    grid, labels = attribute_interpolation_grid(model, a, b, steps=4)
    assert labels[:5] == [r[0] for r in rows] and labels[5] == "" and len(labels) == 11
    assert grid.shape == (11 * 18 - 2, 6 * 18 - 2, 3)
    hw = (16, 16)
    a_hwc, b_hwc = a.permute(0, 2, 3, 1).numpy(), b.permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(grid_cell(grid, 0, 0, hw), a_hwc[0])
    np.testing.assert_array_equal(grid_cell(grid, 0, 5, hw), b_hwc[0])
    np.testing.assert_array_equal(grid_cell(grid, 0, 1, hw), a_hwc[0])       # alpha 0: a itself
    left_moved = grid_cell(grid, 0, 4, hw)                                   # row "left", alpha 1
    np.testing.assert_array_equal(left_moved[:, :8], b_hwc[0][:, :8])
    np.testing.assert_array_equal(left_moved[:, 8:], a_hwc[0][:, 8:])
    but_left = grid_cell(grid, 2, 4, hw)                                     # row "all but left", alpha 1
    np.testing.assert_array_equal(but_left[:, :8], a_hwc[0][:, :8])
    np.testing.assert_array_equal(but_left[:, 8:], b_hwc[0][:, 8:])
    np.testing.assert_array_equal(grid_cell(grid, 4, 4, hw), b_hwc[0])       # whole vector, alpha 1
    np.testing.assert_array_equal(grid_cell(grid, 6, 0, hw), a_hwc[1])       # second pair's block
    path = plot_attribute_interpolation(model, a, b, tmp_path / "interp.png", steps=4)
    assert path.is_file()


def test_complement_evaluation_end_to_end(tmp_path):
    from facefactors.config import build_dataclass, RunConfig
    from facefactors.data.synthfaces import SynthFacesConfig, generate
    from facefactors.runs import build_model

    ds = generate(SynthFacesConfig(n=160, size=32, n_identities=8, seed=3))
    cfg = build_dataclass(RunConfig, {
        "data": {"name": "synthfaces", "size": 32},
        "model": {"method": "compact_embeddings", "attributes": ["identity", "expression"], "width": 8,
                  "part_dims": {"identity": 6, "expression": 4, "rest": 10}},
        "method": {"z_dim": 20, "dis_width": 8}})
    model = build_model(cfg, ds).eval()
    metrics, figures = complement_evaluation(model, ds, tmp_path, ComplementConfig(probes=("linear",), n_folds=4,
                                                                                     pairs_per_fold=10),
                                             log=lambda m: None)
    assert set(metrics["probes"]) == {"identity", "expression"}
    assert metrics["probes"]["identity"]["complement_parts"] == ["expression", "rest"]
    ver = metrics["verification"]["identity"]
    assert ver["split"] == "test" and 0.0 <= ver["complement"]["accuracy"] <= 1.0
    assert all(p.is_file() for p in figures.values()) and figures
