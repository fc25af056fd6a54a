"""Switch edits (set a value part, decode) and their success rate; the derived SynthFaces `smile`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from facefactors.config import RunConfig, build_dataclass
from facefactors.data import make_dataset
from facefactors.data.specs import AttributeSpec, ImageDataset
from facefactors.errors import FacefactorsError
from facefactors.eval.latents import decode_uint8, encode_images
from facefactors.eval.switch_edits import (parse_switch_values, switch_edit, switch_edit_grid, switch_edit_report,
                                           switch_edit_success, switch_latent)
from facefactors.latent import Latent
from facefactors.runs import build_model


@pytest.fixture(scope="module")
def ds():
    return make_dataset({"name": "synthfaces", "size": 32, "n": 64, "n_identities": 5, "seed": 2,
                         "derived": ["smile"]})


def test_derived_smile_attribute(ds):
    assert ds.attributes["smile"] == AttributeSpec("smile", "binary", ("no", "yes"))
    assert torch.equal(ds.labels["smile"], (ds.labels["expression"] == 1).long())
    assert 0 < int(ds.labels["smile"].sum()) < len(ds)
    assert "smile" not in ds.factor_groups          # no single counterfactual rendering
    plain = make_dataset({"name": "synthfaces", "size": 32, "n": 64, "n_identities": 5, "seed": 2})
    assert "smile" not in plain.attributes and torch.equal(plain.images, ds.images)
    with pytest.raises(FacefactorsError, match="unknown derived"):
        make_dataset({"name": "synthfaces", "size": 32, "n": 8, "derived": ["grin"]})
    with pytest.raises(FacefactorsError, match="synthfaces only"):
        make_dataset({"name": "digits", "size": 16, "derived": ["smile"]})
    with pytest.raises(FacefactorsError, match="list"):
        make_dataset({"name": "synthfaces", "size": 32, "n": 8, "derived": "smile"})


class ToySwitch(nn.Module):
    """Known answers: pixel (0, 0) of a 1-channel image is the binary attribute `flag` (bright =
    1); the other pixels are ``rest``. ``ignore_y`` makes a broken model whose decoder ignores y."""

    name = "toy_switch"

    def __init__(self, ignore_y: bool = False):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.ignore_y = ignore_y
        self.switch_parts = {"flag": AttributeSpec("flag", "binary", ("no", "yes"))}

    @property
    def part_names(self):
        return ["flag", "rest"]

    def switch_code(self, part, value, n=1):
        return torch.full((n, 1), float(value))

    def encode(self, x):
        return Latent({"flag": (x[:, :, 0, 0] > 0).float(), "rest": x.flatten(1)})

    def decode(self, z):
        x = z["rest"].reshape(-1, 1, 8, 8).clone()
        if not self.ignore_y:
            x[:, 0, 0, 0] = z["flag"][:, 0] * 2 - 1
        return x


class ToyOracle:
    def predict(self, images):
        return {"flag": (images[:, 0, 0, 0] > 127).long().numpy()}


def toy_dataset(n=40) -> ImageDataset:
    rng = np.random.default_rng(0)
    flag = np.arange(n) % 2
    img = rng.integers(0, 256, (n, 1, 8, 8)).astype(np.uint8)
    img[:, 0, 0, 0] = flag * 255
    return ImageDataset("toy", torch.from_numpy(img), {"flag": torch.from_numpy(flag)},
                        {"flag": AttributeSpec("flag", "binary", ("no", "yes"))},
                        {"train": np.arange(0, n, 2), "test": np.arange(n)})


def test_success_rate_known_answers():
    data = toy_dataset()
    good = switch_edit_success(ToySwitch(), data, data.split("test"), ToyOracle())
    t = good["attributes"]["flag"]["targets"]
    assert t["no"]["success_rate"] == 1.0 and t["yes"]["success_rate"] == 1.0
    assert t["yes"]["unedited_rate"] == 0.0 and t["yes"]["n"] == 20 and t["yes"]["success_rate_all"] == 1.0
    assert good["attributes"]["flag"]["min_success_rate"] == 1.0
    assert good["reconstruction_mse"] == pytest.approx(0.0, abs=1e-9) and good["n"] == 40
    broken = switch_edit_success(ToySwitch(ignore_y=True), data, data.split("test"), ToyOracle())
    t = broken["attributes"]["flag"]["targets"]
    assert t["no"]["success_rate"] == 0.0 and t["yes"]["success_rate"] == 0.0   # edits do nothing
    assert t["yes"]["success_rate_all"] == 0.5


def test_switch_changes_the_value_part_only(ds):
    cfg = build_dataclass(RunConfig, {"model": {"method": "ifcvae_gan", "attributes": ["glasses", "smile"],
                                                "width": 8, "part_dims": {"rest": 10}}})
    model = build_model(cfg, ds).eval()
    images = ds.images[torch.arange(6)]
    z = encode_images(model, images)
    edited = switch_latent(model, z, {"smile": 1.0, "glasses": 0.25})
    assert torch.equal(edited["rest"], z["rest"])
    assert torch.equal(edited["smile"], torch.ones(6, 1)) and torch.equal(edited["glasses"], torch.full((6, 1), 0.25))
    only = switch_latent(model, z, {"glasses": 0.0})
    assert torch.equal(only["smile"], z["smile"]) and torch.equal(only["rest"], z["rest"])
    out = switch_edit(model, images, {"smile": 1.0, "glasses": 0.25})
    assert out.dtype == torch.uint8 and torch.equal(out, decode_uint8(model, edited))
    grid = switch_edit_grid(model, images[:3], "glasses")
    assert grid.shape == (4 * 32 + 3 * 2, 3 * 32 + 2 * 2, 3)   # originals, reconstructions, 0, 1


def test_parse_switch_values(ds):
    model = ToySwitch()
    assert parse_switch_values(model, "flag=yes") == {"flag": 1.0}
    assert parse_switch_values(model, ["flag=0.3"]) == {"flag": 0.3}
    assert parse_switch_values(model, {"flag": "no"}) == {"flag": 0.0}
    for bad, match in [("flag=2", r"\[0, 1\]"), ("flag=maybe", "no class"), ("glasses=1", "no value part"),
                       ("flag", "attribute=value"), ("", "nothing|no attribute")]:
        with pytest.raises(FacefactorsError, match=match):
            parse_switch_values(model, bad)
    ae = build_model(build_dataclass(RunConfig, {"model": {"method": "autoencoder", "attributes": ["glasses"],
                                                           "width": 8}}), ds)
    with pytest.raises(FacefactorsError, match="SVM"):
        parse_switch_values(ae, "glasses=1")


def test_report_writes_figures(tmp_path):
    data = toy_dataset()
    metrics, figures = switch_edit_report(ToySwitch(), data, tmp_path, ToyOracle(), max_images=10, grid_images=4)
    assert metrics["n"] == 10 and metrics["attributes"]["flag"]["min_success_rate"] == 1.0
    assert figures["switch_flag"].is_file()
