"""Loading and saving single image files for the command line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facefactors.data.images import load_image, save_image
from facefactors.errors import FacefactorsError


def _rgb(h=32, w=32):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_round_trip_chw_and_hwc(tmp_path):
    arr = _rgb()
    save_image(tmp_path / "a.png", torch.from_numpy(arr).permute(2, 0, 1))
    save_image(tmp_path / "b.png", arr)
    for name in ("a.png", "b.png"):
        img = load_image(tmp_path / name, 32, 3)
        assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
        assert np.array_equal(img.permute(1, 2, 0).numpy(), arr)
    assert not list(tmp_path.glob(".*.tmp"))          # atomic: no temporaries left behind


def test_channel_conversion_and_jpeg(tmp_path):
    arr = _rgb()
    Image.fromarray(arr[:, :, 0]).save(tmp_path / "grey.png")
    grey3 = load_image(tmp_path / "grey.png", 32, 3)
    assert grey3.shape == (3, 32, 32) and torch.equal(grey3[0], grey3[2])
    rgb1 = load_image(tmp_path / "grey.png", 32, 1)
    assert rgb1.shape == (1, 32, 32) and np.array_equal(rgb1[0].numpy(), arr[:, :, 0])
    Image.fromarray(arr).save(tmp_path / "c.png")
    assert load_image(tmp_path / "c.png", (32, 32), 1).shape == (1, 32, 32)
    save_image(tmp_path / "d.jpg", arr)
    assert load_image(tmp_path / "d.jpg", 32, 3).shape == (3, 32, 32)
    Image.fromarray(np.dstack([arr, np.full((32, 32, 1), 128, np.uint8)])).save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "rgba.png", 32, 3).shape == (3, 32, 32)
    save_image(tmp_path / "e.png", torch.zeros(1, 8, 8, dtype=torch.uint8))
    assert load_image(tmp_path / "e.png", 8, 1).shape == (1, 8, 8)


def test_errors_name_the_path(tmp_path):
    with pytest.raises(FacefactorsError, match="not found.*missing.png"):
        load_image(tmp_path / "missing.png", 32, 3)
    (tmp_path / "notes.png").write_text("this is not an image")
    with pytest.raises(FacefactorsError, match="notes.png.*not a readable image"):
        load_image(tmp_path / "notes.png", 32, 3)
    Image.fromarray(_rgb()).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(FacefactorsError, match="cut.png"):
        load_image(tmp_path / "cut.png", 32, 3)
    Image.fromarray(_rgb(48, 40)).save(tmp_path / "big.png")
    with pytest.raises(FacefactorsError, match=r"big.png.*40x48.*expects 64x64"):
        load_image(tmp_path / "big.png", 64, 3)
    with pytest.raises(FacefactorsError, match="uint8"):
        save_image(tmp_path / "f.png", np.zeros((8, 8, 3), np.float32))
    with pytest.raises(FacefactorsError, match="channels"):
        save_image(tmp_path / "g.png", np.zeros((8, 8, 4), np.uint8))
