"""SynthFaces: determinism, bit-exact re-rendering, save/load, splits, counterfactual locality, legibility."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facefactors.data import make_dataset
from facefactors.data import synthfaces as sf
from facefactors.errors import FacefactorsError

CFG = sf.SynthFacesConfig(n=240, size=32, n_identities=20, seed=3, test_fraction=0.25, heldout_identities=2)


@pytest.fixture(scope="module")
def ds():
    return sf.generate(CFG)


@pytest.fixture(scope="module")
def saved(ds, tmp_path_factory):
    return sf.save(ds, tmp_path_factory.mktemp("sf") / "data")


def rows(factors, idx):
    return {k: np.asarray(v)[np.asarray(idx)] for k, v in factors.items()}


def nhwc(ds):
    return ds.images.permute(0, 2, 3, 1).numpy()


def window_mask(names, size):
    m = np.zeros((size, size), bool)
    for name in names:
        rs, cs = sf._window(name, size, False)
        m[rs, cs] = True
    return m


def base_faces(n=16, seed=11, **fixed):
    f = sf.sample_factors(sf.SynthFacesConfig(n=n, seed=seed))
    for k, v in fixed.items():
        f[k] = np.full(n, v, dtype=sf.FACTOR_COLUMNS[k])
    return f


# ----------------------------------------------------------------------------- structure

def test_attributes_labels_and_groups(ds):
    assert list(ds.attributes) == ["identity", "expression", "illumination", "pose", "glasses", "background",
                                   "skin_tone", "hair_colour", "expression_intensity", "light_strength", "yaw",
                                   "roll"]
    assert ds.attributes["identity"].classes[:2] == ("id0000", "id0001")
    assert ds.attributes["identity"].num_classes == CFG.n_identities
    assert ds.attributes["expression"].classes == ("neutral", "smile", "surprise", "frown")
    assert ds.attributes["illumination"].classes == ("left", "right", "top", "bottom")
    assert ds.attributes["pose"].classes == ("left", "centre", "right")
    assert ds.attributes["glasses"].kind == "binary" and ds.attributes["glasses"].classes == ("no", "yes")
    assert ds.attributes["background"].num_classes == 4
    assert ds.attributes["skin_tone"].identity_linked and ds.attributes["skin_tone"].num_classes == 4
    assert ds.attributes["hair_colour"].identity_linked and ds.attributes["hair_colour"].num_classes == 5
    assert not ds.attributes["expression"].identity_linked
    for name, spec in ds.attributes.items():
        lab = ds.labels[name]
        assert lab.shape == (CFG.n,)
        if spec.kind == "continuous":
            assert lab.dtype == torch.float32
        else:
            assert lab.dtype == torch.int64 and 0 <= int(lab.min()) and int(lab.max()) < spec.num_classes
    assert ds.images.shape == (CFG.n, 3, 32, 32) and ds.images.dtype == torch.uint8
    for cols in ds.factor_groups.values():
        assert set(cols) <= set(ds.factors)
    assert {c for c in ds.factors if c.startswith("id_")} <= set(ds.factor_groups["identity"])
    assert ds.factor_groups["expression"] == ["expression", "expression_intensity"]
    assert set(ds.factor_groups["skin_tone"]) <= set(ds.factor_groups["identity"])
    assert set(ds.factor_groups["hair_colour"]) <= set(ds.factor_groups["identity"])
    assert ds.meta["config"]["seed"] == CFG.seed


def test_labels_balanced_and_in_range():
    f = sf.sample_factors(sf.SynthFacesConfig(n=4000, seed=1))
    for name, k in (("expression", 4), ("illumination", 4), ("pose", 3), ("glasses", 2), ("background", 4)):
        frac = np.bincount(f[name], minlength=k) / len(f[name])
        assert np.all(np.abs(frac - 1 / k) < 0.2 / k), (name, frac)
    assert np.all((f["expression_intensity"] >= 0.3) & (f["expression_intensity"] <= 1.0))
    assert np.all((f["light_strength"] >= 0.3) & (f["light_strength"] <= 1.0))
    assert np.abs(f["yaw"]).max() <= sf.YAW_MAX and np.abs(f["roll"]).max() <= sf.ROLL_MAX
    assert np.array_equal(f["pose"], sf.pose_bin(f["yaw"]))
    # identity-linked classes are a fixed function of the identity
    for col in sf.IDENTITY_COLUMNS:
        for i in np.unique(f["identity"])[:10]:
            assert len(np.unique(f[col][f["identity"] == i])) == 1


# ----------------------------------------------------------------------------- determinism

def test_deterministic_from_seed(ds):
    again = sf.generate(CFG)
    assert torch.equal(again.images, ds.images)
    for k in ds.factors:
        assert np.array_equal(again.factors[k], ds.factors[k])
    other = sf.generate(sf.SynthFacesConfig(**{**CFG.__dict__, "seed": 4}))
    assert not torch.equal(other.images, ds.images)


def test_rows_depend_only_on_seed_and_index(ds):
    idx = [0, 7, 199]
    part = sf.sample_factors(CFG, idx)
    for k in ds.factors:
        assert np.array_equal(part[k], ds.factors[k][idx]), k
    bigger = sf.sample_factors(sf.SynthFacesConfig(**{**CFG.__dict__, "n": 400}), idx)
    assert all(np.array_equal(bigger[k], part[k]) for k in part)


def test_render_bit_exact_for_subsets_rows_and_threads(ds):
    imgs = nhwc(ds)
    assert np.array_equal(ds.renderer(ds.factors), imgs)
    rng = np.random.default_rng(0)
    sub = rng.choice(CFG.n, 37, replace=False)
    assert np.array_equal(sf.render(rows(ds.factors, sub), 32), imgs[sub])
    for i in (0, 5, 123):
        assert np.array_equal(sf.render(rows(ds.factors, [i]), 32), imgs[i:i + 1])
    assert np.array_equal(sf.render(ds.factors, 32, workers=2), imgs)
    rev = np.arange(CFG.n)[::-1]
    assert np.array_equal(sf.render(rows(ds.factors, rev), 32), imgs[rev])


def test_layer_windows_bound_every_shape():
    """Per-layer windows are a speed-up only: rendering on the full canvas gives the same bytes."""
    rng = np.random.default_rng(5)
    n = 60
    f = sf.sample_factors(sf.SynthFacesConfig(n=n, seed=2))
    for k, (lo, hi) in sf._ID_FLOAT.items():
        f[k] = np.where(rng.random(n) < 0.5, lo, hi)
    f["yaw"] = np.where(rng.random(n) < 0.5, -sf.YAW_MAX, sf.YAW_MAX)
    f["pose"] = sf.pose_bin(f["yaw"])
    f["roll"] = np.where(rng.random(n) < 0.5, -sf.ROLL_MAX, sf.ROLL_MAX)
    f["expression_intensity"][:] = 1.0
    f["expression"] = np.arange(n) % 4
    f["id_hair_style"] = np.arange(n) % 5
    f["glasses"][:] = 1
    for size in (24, 32):
        assert np.array_equal(sf.render(f, size), sf.render(f, size, _full_windows=True))


# ----------------------------------------------------------------------------- save / load

def test_csv_float_round_trip_is_exact(ds):
    back = sf.factors_from_csv(sf.factors_to_csv(ds.factors))
    for k, v in ds.factors.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k


def test_save_load_round_trip(ds, saved):
    for name in ("images.npy", "factors.csv", "meta.json", "preview.png"):
        assert (saved / name).is_file()
    back = sf.load(saved)
    assert torch.equal(back.images, ds.images)
    assert set(back.splits) == set(ds.splits)
    for k in ds.splits:
        assert np.array_equal(back.splits[k], ds.splits[k])
    for k in ds.labels:
        assert torch.equal(back.labels[k], ds.labels[k])
    idx = [3, 50, 51, 200]
    assert np.array_equal(back.renderer(back.factor_rows(np.array(idx))), nhwc(ds)[idx])
    assert back.factor_groups == ds.factor_groups
    assert back.attributes == ds.attributes
    arr = np.load(saved / "images.npy")
    assert arr.shape == (CFG.n, 32, 32, 3) and arr.dtype == np.uint8


def test_same_seed_saves_byte_identical_files(saved, tmp_path):
    other = sf.save(sf.generate(CFG), tmp_path / "again")
    for name in ("images.npy", "factors.csv", "meta.json", "preview.png"):
        assert (other / name).read_bytes() == (saved / name).read_bytes(), name


def _copy(saved, dst):
    dst.mkdir()
    for p in saved.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_load_errors_name_the_file(saved, tmp_path):
    with pytest.raises(FacefactorsError, match="not found"):
        sf.load(tmp_path / "nope")
    for name in ("images.npy", "factors.csv", "meta.json"):
        d = _copy(saved, tmp_path / f"missing_{name}")
        (d / name).unlink()
        with pytest.raises(FacefactorsError, match=name.replace(".", r"\.")):
            sf.load(d)
    d = _copy(saved, tmp_path / "bad_npy")
    (d / "images.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(FacefactorsError, match="images.npy"):
        sf.load(d)
    d = _copy(saved, tmp_path / "bad_json")
    (d / "meta.json").write_text("{not json")
    with pytest.raises(FacefactorsError, match="meta.json"):
        sf.load(d)
    d = _copy(saved, tmp_path / "bad_csv")
    lines = (d / "factors.csv").read_text().splitlines()
    lines[5] = lines[5].replace(",", ",x", 1)
    (d / "factors.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(FacefactorsError, match=r"factors.csv.*line 6"):
        sf.load(d)
    d = _copy(saved, tmp_path / "short_csv")
    (d / "factors.csv").write_text("\n".join(lines[:-3]).replace(",x", ",", 1) + "\n")
    with pytest.raises(FacefactorsError, match=r"factors.csv has 237 rows"):
        sf.load(d)
    d = _copy(saved, tmp_path / "short_npy")
    np.save(d / "images.npy", np.load(saved / "images.npy")[:10])
    with pytest.raises(FacefactorsError, match="images.npy"):
        sf.load(d)
    d = _copy(saved, tmp_path / "meta_fields")
    meta = json.loads((d / "meta.json").read_text())
    del meta["config"]
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FacefactorsError, match="meta.json"):
        sf.load(d)


# ----------------------------------------------------------------------------- splits

def test_splits_disjoint_and_heldout_identities(ds):
    tr, te, un = ds.splits["train"], ds.splits["test"], ds.splits["unseen"]
    assert not set(tr) & set(te) and not set(tr) & set(un) and not set(te) & set(un)
    assert len(tr) + len(te) + len(un) == CFG.n
    held = sf.heldout_identity_ids(CFG)
    assert len(held) == 2
    ident = ds.labels["identity"].numpy()
    assert set(ident[un]) == set(held)
    assert not set(ident[np.concatenate([tr, te])]) & set(held)
    assert abs(len(te) - CFG.test_fraction * (len(tr) + len(te))) <= 1
    plain = sf.generate(sf.SynthFacesConfig(n=50, size=16, n_identities=5, seed=3))
    assert set(plain.splits) == {"train", "test"}


def test_config_validation():
    with pytest.raises(FacefactorsError, match="heldout_identities"):
        sf.generate(sf.SynthFacesConfig(n=10, size=16, n_identities=3, heldout_identities=3))
    with pytest.raises(FacefactorsError, match="size"):
        sf.generate(sf.SynthFacesConfig(n=10, size=4))
    with pytest.raises(FacefactorsError, match="lacks column"):
        sf.render({"identity": np.zeros(2, np.int64)}, 32)
    f = sf.sample_factors(sf.SynthFacesConfig(n=3))
    f["expression"][1] = 7
    with pytest.raises(FacefactorsError, match=r"'expression' must lie in \[0, 3\]"):
        sf.render(f, 32)
    f = sf.sample_factors(sf.SynthFacesConfig(n=3))
    f["yaw"] = f["yaw"].astype(np.float32)            # other dtypes are accepted and converted
    f["glasses"] = f["glasses"].astype(np.float64)
    assert sf.render(f, 16).shape == (3, 16, 16, 3)


# ----------------------------------------------------------------------------- counterfactuals

def _swap(fa, fb, group):
    out = {k: v.copy() for k, v in fa.items()}
    for c in sf.FACTOR_GROUPS[group]:
        out[c] = fb[c].copy()
    return out


def test_expression_swap_changes_only_the_expression_region():
    size = 64
    a = base_faces(12, seed=21, expression=0)
    b = base_faces(12, seed=22, expression=1, expression_intensity=1.0)
    ra, rs = sf.render(a, size), sf.render(_swap(a, b, "expression"), size)
    diff = np.abs(ra.astype(int) - rs.astype(int)).max(-1)
    outside = ~window_mask(["eyes", "brows", "mouth"], size)
    assert diff[:, outside].max() == 0
    mrs, mcs = sf._window("mouth", size, False)
    assert diff[:, mrs, mcs].mean() > 5


@pytest.mark.parametrize("group,region", [("glasses", ["glasses"]), ("background", None),
                                          ("illumination", None), ("identity", None), ("pose", None)])
def test_group_swap_locality(group, region):
    size = 32
    a = base_faces(10, seed=31, glasses=0)
    b = base_faces(10, seed=32, glasses=1)
    for col, k in (("background", 4), ("illumination", 4), ("identity", 100)):
        b[col] = (a[col] + 1) % k
    b.update(sf.identity_params(11, b["identity"]))
    ra, rs = sf.render(a, size), sf.render(_swap(a, b, group), size)
    diff = np.abs(ra.astype(int) - rs.astype(int)).max(-1)
    assert diff.mean() > 0.5, "the swap must change pixels"
    if region is not None:
        assert diff[:, ~window_mask(region, size)].max() == 0
    corner = diff[:, :3, :3]          # background only: pure background colour + A's noise
    if group == "background":
        assert corner.min() > 0
        assert diff[:, size // 2 - 2:size // 2 + 2, size // 2 - 2:size // 2 + 2].max() == 0   # mid-face
    else:
        assert corner.max() == 0


def test_noise_seed_is_kept_by_swaps():
    a = base_faces(4, seed=41)
    b = base_faces(4, seed=42)
    clean = sf.render(a, 32, noise=0.0)
    noisy = sf.render(a, 32)
    assert 0 < np.abs(clean.astype(int) - noisy.astype(int)).mean() < 8
    assert np.array_equal(sf.render(_swap(a, b, "glasses"), 32)[:, :3, :3], noisy[:, :3, :3])


# ----------------------------------------------------------------------------- legibility

def _mouth_window_diffs(size, intensity):
    faces = base_faces(24, seed=51, expression_intensity=intensity, noise=0.0)
    rs, cs = sf._window("mouth", size, False)
    crops = []
    for e in range(4):
        f = {k: v.copy() for k, v in faces.items()}
        f["expression"][:] = e
        crops.append(sf.render(f, size)[:, rs, cs].astype(float))
    return {(i, j): np.abs(crops[i] - crops[j]).mean(axis=(1, 2, 3)) for i in range(4) for j in range(i + 1, 4)}


def test_each_expression_is_readable_at_32px():
    """Mean abs difference (0-255) over the mouth window between classes, per face (24 faces)."""
    strong = _mouth_window_diffs(32, 1.0)
    for pair, d in strong.items():
        assert d.min() > 1.5 and d.mean() > 4.0, (pair, d.min(), d.mean())
    weak = _mouth_window_diffs(32, 0.3)
    for pair, d in weak.items():
        assert d.min() > 0.8 and d.mean() > 2.5, (pair, d.min(), d.mean())
    for j in (1, 2, 3):                        # intensity scales the effect
        assert strong[(0, j)].mean() > 1.4 * weak[(0, j)].mean()


def test_glasses_visible_at_32px():
    f = base_faces(16, seed=61, glasses=0, noise=0.0)
    g = {k: v.copy() for k, v in f.items()}
    g["glasses"][:] = 1
    off, on = sf.render(f, 32).astype(float), sf.render(g, 32).astype(float)
    rs, cs = sf._window("glasses", 32, False)
    assert np.abs(on - off)[:, rs, cs].mean(axis=(1, 2, 3)).min() > 4
    darker = ((off - on).mean(-1) > 30).sum(axis=(1, 2))        # rim pixels, per face
    assert darker.min() >= 12, darker


def test_identities_and_lighting_distinguishable():
    f = base_faces(1, seed=71, expression=0, glasses=0, noise=0.0)
    ids = np.arange(12)
    g = {k: np.repeat(v, len(ids)) for k, v in f.items()}
    g.update(sf.identity_params(0, ids), identity=ids)
    img = sf.render(g, 64).astype(float)
    d = np.abs(img[:, None] - img[None]).mean(axis=(2, 3, 4))
    assert d[~np.eye(len(ids), dtype=bool)].min() > 2.0
    h = {k: np.repeat(v, 4) for k, v in f.items()}
    h["illumination"] = np.arange(4)
    h["light_strength"][:] = 1.0
    lit = sf.render(h, 64).astype(float).mean(-1)
    left, right = lit[:, 20:44, 14:28].mean(axis=(1, 2)), lit[:, 20:44, 36:50].mean(axis=(1, 2))
    assert left[0] > right[0] + 40 and right[1] > left[1] + 40


def test_render_sizes_and_preview():
    f = base_faces(4, seed=81)
    for size in (16, 48, 128):
        assert sf.render(f, size).shape == (4, size, size, 3)
    grid = sf.preview_grid(sf.render(f, 32), 2, 2)
    assert grid.shape == (2 * 34 + 2, 2 * 34 + 2, 3) and grid.dtype == np.uint8
    sheet = sf.factor_sheet(24)
    assert sheet.dtype == np.uint8 and sheet.ndim == 3


# ----------------------------------------------------------------------------- make_dataset

def test_make_dataset_synthfaces(saved):
    ds = make_dataset({"name": "synthfaces", "size": 16, "n": 30, "n_identities": 4, "seed": 1, "noise": 0.0})
    assert ds.name == "synthfaces" and ds.images.shape == (30, 3, 16, 16)
    back = make_dataset({"name": "synthfaces", "path": str(saved), "size": 32})
    assert len(back) == CFG.n
    with pytest.raises(FacefactorsError, match="size=64"):
        make_dataset({"name": "synthfaces", "path": str(saved), "size": 64})
    with pytest.raises(FacefactorsError, match="unknown dataset key.*'colour'.*valid keys"):
        make_dataset({"name": "synthfaces", "colour": 1})
    with pytest.raises(FacefactorsError, match="unknown dataset 'celebz'.*synthfaces, digits"):
        make_dataset({"name": "celebz"})
