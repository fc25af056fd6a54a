"""The bundled scikit-learn digits as an ImageDataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facefactors.data import make_dataset
from facefactors.data.digits import load_digits_dataset
from facefactors.errors import FacefactorsError


@pytest.fixture(scope="module")
def ds():
    return load_digits_dataset(size=32, seed=0)


def test_shape_labels_and_attribute(ds):
    assert ds.name == "digits"
    assert ds.images.shape == (1797, 1, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels["digit"].dtype == torch.int64
    assert set(ds.labels["digit"].tolist()) == set(range(10))
    spec = ds.attribute("digit")
    assert spec.kind == "categorical" and spec.classes == tuple(str(d) for d in range(10))
    assert ds.factors is None and ds.renderer is None
    assert int(ds.images.max()) > 200 and int(ds.images.min()) == 0


def test_split_is_stratified_disjoint_and_seeded(ds):
    tr, te = ds.splits["train"], ds.splits["test"]
    assert not set(tr) & set(te) and len(tr) + len(te) == len(ds)
    assert abs(len(te) - 0.2 * len(ds)) <= 1
    y = ds.labels["digit"].numpy()
    full = np.bincount(y, minlength=10) / len(y)
    test_frac = np.bincount(y[te], minlength=10) / len(te)
    assert np.abs(full - test_frac).max() < 0.01
    again = load_digits_dataset(size=16, seed=0)
    assert np.array_equal(again.splits["test"], te)
    other = load_digits_dataset(size=16, seed=1)
    assert not np.array_equal(other.splits["test"], te)


def test_resize_is_smooth_and_channels():
    small = load_digits_dataset(size=8)
    big = load_digits_dataset(size=24, channels=3)
    assert small.images.shape[-1] == 8 and big.images.shape == (1797, 3, 24, 24)
    assert torch.equal(big.images[:, 0], big.images[:, 2])
    # bilinear upsampling creates intermediate grey levels beyond the 17 source levels
    assert len(torch.unique(big.images[:50])) > 40


def test_bad_arguments_and_make_dataset():
    with pytest.raises(FacefactorsError, match="channels"):
        load_digits_dataset(channels=2)
    with pytest.raises(FacefactorsError, match="size"):
        load_digits_dataset(size=4)
    ds = make_dataset({"name": "digits", "size": 16, "n": 100, "n_identities": 3})   # synthfaces keys ignored
    assert ds.images.shape == (1797, 1, 16, 16)
