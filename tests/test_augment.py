"""Training augmentation: what each warp does, its config checks, and how the trainer applies it."""
import numpy as np
import pytest
import torch

from facefactors.config import RunConfig, build_dataclass
from facefactors.data import make_dataset
from facefactors.data.augment import Augment, AugmentConfig
from facefactors.errors import FacefactorsError
from facefactors.train.trainer import Trainer
from tests.helpers import blobs_dataset, tiny_config
from tests.test_trainer import quiet, weights


def bar_image(size=16, col=8) -> torch.Tensor:
    """One bright vertical bar on black, (1, 1, size, size) in [-1, 1]."""
    x = -torch.ones(1, 1, size, size)
    x[..., 2:size - 2, col - 1:col + 1] = 1.0
    return x


def augment_config(**values) -> AugmentConfig:
    return build_dataclass(AugmentConfig, values, "train.augment")


def test_config_checks_name_the_key():
    assert not augment_config().active
    assert augment_config(shear=0.2).active
    with pytest.raises(FacefactorsError, match="unknown config key.*rotation.*valid"):
        augment_config(rotation=10)
    with pytest.raises(FacefactorsError, match="shear=-0.1"):
        augment_config(shear=-0.1)
    with pytest.raises(FacefactorsError, match="scale=1.0"):
        augment_config(scale=1)
    with pytest.raises(FacefactorsError, match="padding='grey'"):
        augment_config(padding="grey")
    with pytest.raises(FacefactorsError, match="must be a number"):
        augment_config(rotate="lots")


def test_inactive_augment_returns_the_images_unchanged():
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    assert Augment(AugmentConfig()).__call__(x) is x


def test_shear_slants_a_vertical_bar_and_keeps_its_mass():
    x = bar_image(32, 16).expand(64, 1, 32, 32)
    torch.manual_seed(0)
    out = Augment(AugmentConfig(shear=0.5, padding="black"))(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    bright = (out + 1) / 2
    cols = torch.arange(32.0)
    centre_top = (bright[:, 0, 4:8] * cols).sum((1, 2)) / bright[:, 0, 4:8].sum((1, 2))
    centre_bottom = (bright[:, 0, -8:-4] * cols).sum((1, 2)) / bright[:, 0, -8:-4].sum((1, 2))
    slant = centre_bottom - centre_top
    assert slant.abs().max() > 4, "a shear of up to 0.5 should move the bar's ends apart by pixels"
    assert (slant > 1).any() and (slant < -1).any(), "shear should slant both ways"
    mass = bright.sum((1, 2, 3))
    assert torch.allclose(mass, mass.new_full(mass.shape, float(((x[0] + 1) / 2).sum())), rtol=0.1)


def test_rotation_by_a_right_angle_turns_the_bar():
    x = bar_image(16, 8)
    torch.manual_seed(1)
    aug = Augment(AugmentConfig(rotate=90, padding="black"))
    # draw until one rotation is close to +-90 degrees: the bar then lies horizontally
    for _ in range(200):
        out = aug(x)
        bright = (out[0, 0] + 1) / 2
        if bright.sum(1).max() > 0.6 * 12 and bright.sum(0).max() < 0.5 * 12:
            break
    else:
        pytest.fail("no draw of rotate=90 turned the vertical bar horizontal")


def test_padding_fills_what_a_shift_uncovers():
    x = torch.ones(8, 1, 16, 16) * 0.2
    torch.manual_seed(0)
    black = Augment(AugmentConfig(translate=0.25, padding="black"))(x)
    white = Augment(AugmentConfig(translate=0.25, padding="white"))(x)
    border = Augment(AugmentConfig(translate=0.25, padding="border"))(x)
    assert black.min() < -0.9 and white.max() > 0.9
    assert torch.allclose(border, x, atol=1e-5), "border padding continues a flat image unchanged"


def test_thickness_dilates_or_erodes_each_image():
    x = bar_image(16, 8).expand(200, 1, 16, 16)
    torch.manual_seed(0)
    out = Augment(AugmentConfig(thickness=0.5))(x)
    width = ((out[:, 0, 8] + 1) / 2).sum(1)            # bar width on the middle row: 2 -> 4 or 0
    assert set(width.round().tolist()) == {0.0, 4.0}
    torch.manual_seed(0)
    some = Augment(AugmentConfig(thickness=0.25))(x)
    widths = ((some[:, 0, 8] + 1) / 2).sum(1).round()
    assert 0.35 < float((widths == 2).float().mean()) < 0.65, "about half the images stay as they were"


def test_channels_last_and_determinism():
    x = (torch.rand(6, 3, 16, 16) * 2 - 1).contiguous(memory_format=torch.channels_last)
    cfg = AugmentConfig(rotate=10, shear=0.2, scale=0.1, translate=0.05, thickness=0.2)
    torch.manual_seed(5)
    a = Augment(cfg)(x)
    torch.manual_seed(5)
    b = Augment(cfg)(x)
    assert torch.equal(a, b)
    assert a.is_contiguous(memory_format=torch.channels_last)
    assert a.min() >= -1 and a.max() <= 1 and not torch.equal(a, x)


AUG = {"rotate": 10, "shear": 0.2, "translate": 0.05, "thickness": 0.2, "padding": "black"}


def test_trainer_augments_batches_and_resumes_exactly(tmp_path):
    ds = blobs_dataset()
    straight = Trainer(tiny_config(augment=AUG), tmp_path / "straight", dataset=ds, log=quiet)
    straight.fit()
    assert straight.model.train_augment is not None
    Trainer(tiny_config(), tmp_path / "plain", dataset=ds, log=quiet).fit()
    wa, wp = weights(tmp_path / "straight"), weights(tmp_path / "plain")
    assert not all(torch.equal(wa[k], wp[k]) for k in wa), "augmentation changed nothing"
    Trainer(tiny_config(steps=3, augment=AUG), tmp_path / "stopped", dataset=ds, log=quiet).fit()
    Trainer(tiny_config(augment=AUG), tmp_path / "stopped", resume=True, dataset=ds, log=quiet).fit()
    wb = weights(tmp_path / "stopped")
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "a resumed augmented run diverged"
    assert "thickness: 0.2" in (tmp_path / "straight" / "config.yaml").read_text()


def test_a_bad_augment_key_is_rejected_before_a_run_is_created(tmp_path):
    with pytest.raises(FacefactorsError, match="unknown config key.*flip"):
        Trainer(tiny_config(augment={"flip": 1}), tmp_path / "r", dataset=blobs_dataset(), log=quiet).fit()
    assert not (tmp_path / "r").exists()


def test_partners_are_augmented_only_while_training(tmp_path):
    digits = make_dataset({"name": "digits", "size": 28})
    cfg = build_dataclass(RunConfig, {
        "seed": 0, "data": {"name": "digits", "size": 28},
        "model": {"method": "cycle_vae", "attributes": ["digit"], "width": 8, "part_dims": {"digit": 6, "rest": 5}},
        "train": {"steps": 2, "batch_size": 16, "log_every": 1, "checkpoint_every": 100, "preview_every": 0,
                  "progress": False, "augment": AUG}})
    trainer = Trainer(cfg, tmp_path / "cv", dataset=digits, log=quiet)
    trainer.fit()
    model = trainer.model
    idx = np.arange(8)
    model.train()
    torch.manual_seed(0)
    fetched = model._fetch(idx, torch.zeros(1, 1, 28, 28))
    stored = digits.batch(idx).image
    assert not torch.equal(fetched, stored), "partners drawn while training should be augmented"
    model.eval()
    assert torch.equal(model._fetch(idx, torch.zeros(1, 1, 28, 28)), stored)
    assert torch.equal(model.augment_images(stored), stored)
