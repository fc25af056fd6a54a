"""Grids, plots, the HTML report and the whole ``evaluate`` pipeline on the tiny shapes oracle."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facefactors.eval.evaluate import EvalConfig, evaluate, headline, headline_lines
from facefactors.viz.grids import (counterfactual_grid, grid_cell, image_grid, interpolation_strips,
                                   reconstruction_grid, swap_grid, to_hwc)
from facefactors.viz.plots import plot_leakage
from facefactors.viz.report import write_report
from tests.test_eval_metrics import SIZE, ShapesOracle, make_shapes_dataset, render_shapes

GAP = 2
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ds():
    return make_shapes_dataset(n=300, seed=1)


def _expected_swap(ds, src_idx, don_idx, cols):
    """Render src's factors with the donor's values in ``cols`` (what the oracle must decode)."""
    f = {k: v[src_idx].copy() for k, v in ds.factors.items()}
    for c in cols:
        f[c] = ds.factors[c][don_idx].copy()
    return render_shapes(f)[0]


def test_image_grid_layout():
    a = np.full((4, 5, 3), 7, np.uint8)
    g = image_grid([[a, None], [a]], gap=1, background=200)
    assert g.shape == (9, 11, 3)
    assert (grid_cell(g, 0, 0, (4, 5), 1) == 7).all() and (grid_cell(g, 0, 1, (4, 5), 1) == 200).all()
    assert (grid_cell(g, 1, 1, (4, 5), 1) == 200).all() and (g[4] == 200).all()


def test_swap_grid_cells(ds):
    model = ShapesOracle()
    src, don = ds.split("test")[:3], ds.split("test")[3:7]
    g = swap_grid(model, ds.images[src], ds.images[don], "colour", gap=GAP)
    assert g.dtype == np.uint8
    assert g.shape == (4 * SIZE + 3 * GAP, 5 * SIZE + 4 * GAP, 3)
    hwc = to_hwc(ds.images)
    assert (grid_cell(g, 0, 0, (SIZE, SIZE)) == 255).all()  # top-left blank
    for j, d in enumerate(don):
        np.testing.assert_array_equal(grid_cell(g, 0, j + 1, (SIZE, SIZE)), hwc[d])
    for i, s in enumerate(src):
        np.testing.assert_array_equal(grid_cell(g, i + 1, 0, (SIZE, SIZE)), hwc[s])
        for j, d in enumerate(don):
            np.testing.assert_array_equal(grid_cell(g, i + 1, j + 1, (SIZE, SIZE)),
                                          _expected_swap(ds, [s], [d], ["colour"]))
    # map part ("rest" holds background and position): numpy NHWC input works too
    g2 = swap_grid(model, hwc[src], hwc[don], "rest", gap=GAP)
    np.testing.assert_array_equal(grid_cell(g2, 2, 3, (SIZE, SIZE)), _expected_swap(ds, [src[1]], [don[2]], ["bg", "x"]))


def test_interpolation_reconstruction_and_counterfactual_grids(ds):
    model = ShapesOracle()
    a, b = ds.split("test")[:2], ds.split("test")[2:4]
    hwc = to_hwc(ds.images)
    g = interpolation_strips(model, ds.images[a], ds.images[b], "shape", steps=5, gap=GAP)
    assert g.shape == (2 * SIZE + GAP, 7 * SIZE + 6 * GAP, 3)
    for i in range(2):
        np.testing.assert_array_equal(grid_cell(g, i, 0, (SIZE, SIZE)), hwc[a[i]])
        np.testing.assert_array_equal(grid_cell(g, i, 1, (SIZE, SIZE)), hwc[a[i]])  # alpha 0 = reconstruction
        np.testing.assert_array_equal(grid_cell(g, i, 5, (SIZE, SIZE)), _expected_swap(ds, [a[i]], [b[i]], ["shape"]))
        np.testing.assert_array_equal(grid_cell(g, i, 6, (SIZE, SIZE)), hwc[b[i]])
    r = reconstruction_grid(model, ds.images[ds.split("test")[:6]], columns=3, gap=GAP)
    assert r.shape == (4 * SIZE + 3 * GAP, 3 * SIZE + 2 * GAP, 3)
    np.testing.assert_array_equal(grid_cell(r, 2, 1, (SIZE, SIZE)), hwc[ds.split("test")[4]])
    np.testing.assert_array_equal(grid_cell(r, 3, 1, (SIZE, SIZE)), hwc[ds.split("test")[4]])
    x = hwc[:3]
    c = counterfactual_grid(x, x, x, x, gap=GAP)
    assert c.shape == (3 * SIZE + 2 * GAP, 4 * SIZE + 3 * GAP, 3)


def _fake_metrics():
    e = lambda n: {"accuracy": 0.5 + n / 2, "chance": 0.5, "normalized": n}  # noqa: E731
    leak = {"colour": {"colour": e(1.0), "shape": e(0.1)},
            "shape": {"colour": e(0.3), "shape": e(0.9)},
            "rest": {"colour": e(0.7), "shape": e(0.05)}}
    return {"leakage": {"linear": leak, "mlp": leak},
            "reconstruction": {"mse": 0.001, "psnr": 30.0, "ssim": 0.9, "n_images": 10},
            "counterfactual": {"colour": {"mse": 0.01, "ratio_to_reconstruction": 2.0, "ratio_to_no_change": 0.5,
                                          "region_mse": 0.1, "region_ratio_to_reconstruction": None,
                                          "region_ratio_to_no_change": 0.4, "n_pairs": 8}},
            "parts": {"colour": 4, "shape": 3, "rest": 5},
            "dataset": {"name": "<shapes & co>", "size": 10, "n_train": 7, "n_test": 3},
            "eval_config": {"seed": 0}}


def test_headline_off_diagonal_and_rest():
    h = headline(_fake_metrics())
    assert h["psnr"] == 30.0
    best = h["max_offdiag_leakage"]["linear"]
    assert best == {"value": 0.7, "part": "rest", "attribute": "colour"}  # rest is off-diagonal for all
    assert h["diagonal_accuracy"]["mlp"] == {"colour": 1.0, "shape": 0.95}
    assert h["counterfactual"]["colour"]["region_ratio_to_no_change"] == 0.4
    assert any("rest -> colour" in line for line in headline_lines(_fake_metrics()))


def test_leakage_plot_and_self_contained_report(tmp_path):
    m = _fake_metrics()
    plot_leakage(m["leakage"], tmp_path / "figures" / "leakage.png")
    png = (tmp_path / "figures" / "leakage.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    path = write_report(tmp_path, m, {"Leakage <b>heatmap</b>": "figures/leakage.png"}, title="run <x> & y")
    text = path.read_text()
    assert path == tmp_path / "report.html"
    assert "http://" not in text and "https://" not in text and 'src="file' not in text
    assert "<link" not in text and "<script" not in text
    assert text.count("data:image/png;base64,") == 1
    assert "run &lt;x&gt; &amp; y" in text and "<b>heatmap</b>" not in text and "&lt;shapes &amp; co&gt;" in text
    assert "Leakage" in text and "Counterfactual transfer" in text and "Headline" in text
    assert "<table>" in text and "0.700" in text  # leakage table cell
    assert "region_ratio_to_no_change" in text  # counterfactual table header


def test_evaluate_writes_everything(ds, tmp_path):
    lines = []
    cfg = EvalConfig(n_pairs=16, max_train=150, max_test=80, mlp_hidden=32, grid_size=3)
    metrics = evaluate(ShapesOracle(), ds, tmp_path, cfg, log=lines.append)
    assert lines and any("leakage" in s for s in lines)
    on_disk = json.loads((tmp_path / "metrics.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    for key in ("leakage", "reconstruction", "counterfactual", "parts", "dataset", "eval_config"):
        assert key in on_disk
    assert on_disk["parts"] == {"colour": 4, "shape": 3, "rest": 5}
    assert on_disk["dataset"] == {"name": "shapes", "size": 300, "n_train": 200, "n_test": 100}
    assert on_disk["reconstruction"]["psnr"] == 100.0
    assert set(on_disk["leakage"]) == {"linear", "mlp"}
    assert on_disk["leakage"]["linear"]["colour"]["colour"]["accuracy"] == 1.0
    assert set(on_disk["counterfactual"]) == {"colour", "shape"}
    assert on_disk["counterfactual"]["colour"]["mse"] == 0.0
    assert metrics["eval_config"]["n_pairs"] == 16
    figs = tmp_path / "figures"
    expected = {"reconstructions.png", "leakage.png", "counterfactual.png"}
    expected |= {f"{k}_{p}.png" for k in ("swap", "interp") for p in ("colour", "shape", "rest")}
    names = {p.name for p in figs.iterdir()}
    assert expected <= names
    extra = names - expected  # the suite's figures (no identity attribute here: no ROC)
    assert {"identity_adj_r2.png", "interp_attributes.png", "memorisation.png"} <= extra
    assert all(n.startswith(("identity_", "complements", "interp_attributes", "memorisation")) for n in extra), extra
    for name in names:
        assert (figs / name).read_bytes().startswith(PNG_MAGIC)
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(names)
    assert "Verification, attribute recognition and editing" in html
    assert set(on_disk["identity"]) >= {"recognition", "gaussianity"}
    assert "http://" not in html and 'src="file' not in html
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_evaluate_without_factors(tmp_path):
    ds = make_shapes_dataset(n=90, seed=2)
    ds.factors, ds.renderer = None, None
    metrics = evaluate(ShapesOracle(), ds, tmp_path, EvalConfig(probes=("linear",), grid_size=2), log=None)
    assert metrics["counterfactual"] == {}
    assert not (tmp_path / "figures" / "counterfactual.png").exists()
    assert (tmp_path / "report.html").exists()
    assert torch.is_tensor(ds.images)


def test_headline_identity_linked_attributes():
    e = {"accuracy": 0.9, "chance": 0.5, "normalized": 0.8}
    low = {"accuracy": 0.6, "chance": 0.5, "normalized": 0.2}
    m = {"leakage": {"linear": {"identity": {"identity": e, "skin": e}, "rest": {"skin": low}}},
         "attributes": {"identity": {"identity_linked": False}, "skin": {"identity_linked": True}}}
    h = headline(m)
    assert h["max_offdiag_leakage"]["linear"]["part"] == "identity"  # counted by the plain rule
    assert h["max_offdiag_leakage_unlinked"]["linear"] == {"value": 0.2, "part": "rest", "attribute": "skin"}
    assert "max_offdiag_leakage_unlinked" not in headline(_fake_metrics())
