"""The demo trains the recorded adversarial_attributes configuration, cut to its time budget."""
from pathlib import Path

import pytest

from facefactors.config import RunConfig, build_dataclass, load_config
from facefactors.demo import DEMO, _prepare
from facefactors.errors import FacefactorsError
from facefactors.methods.adversarial_attributes import AdversarialAttributesParams

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("plan", ["full", "quick"])
def test_demo_trains_the_recorded_settings(plan):
    demo = build_dataclass(RunConfig, DEMO[plan]["config"])
    recorded = load_config(CONFIGS / "adversarial_attributes_synthfaces_carry.yaml")
    ours = vars(build_dataclass(AdversarialAttributesParams, demo.method, "method"))
    theirs = vars(build_dataclass(AdversarialAttributesParams, recorded.method, "method"))
    lr_keys = {"lr", "classifier_lr", "critic_lr"} if plan == "quick" else set()
    assert {k: v for k, v in ours.items() if k not in lr_keys} == \
           {k: v for k, v in theirs.items() if k not in lr_keys}
    assert demo.model.method == recorded.model.method
    assert demo.model.attributes == recorded.model.attributes
    assert demo.train.batch_size == recorded.train.batch_size
    for key in ("lr_schedule", "lr_decay_start", "lr_final"):
        assert getattr(demo.train, key) == getattr(recorded.train, key), key
    assert demo.train.time_budget_min <= DEMO[plan]["minutes"]


def test_demo_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("data")
    with pytest.raises(FacefactorsError, match="not a demo run"):
        _prepare(tmp_path / "mine")
    assert (tmp_path / "mine" / "keep.txt").read_text() == "data"
    _prepare(tmp_path / "demo")
    (tmp_path / "demo" / "old.txt").write_text("x")
    _prepare(tmp_path / "demo")
    assert not (tmp_path / "demo" / "old.txt").exists()
