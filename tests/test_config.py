import pytest

from facefactors.config import apply_overrides, build_dataclass, dump_config, load_config
from facefactors.errors import FacefactorsError


def test_overrides_parse_yaml_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  steps: 10\nmodel:\n  method: autoencoder\n")
    cfg = load_config(p, ["train.steps=2000", "train.grad_clip=1.5", "model.attributes=[identity]",
                          "train.channels_last=false", "method.lr=1e-4", "train.time_budget_min=null"])
    assert cfg.train.steps == 2000 and cfg.train.grad_clip == 1.5
    assert cfg.model.attributes == ["identity"] and cfg.train.channels_last is False
    assert cfg.method == {"lr": 1e-4} and cfg.train.time_budget_min is None


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(FacefactorsError, match=r"unknown config key train.'stpes'.*steps"):
        load_config(None, ["train.stpes=5"])
    with pytest.raises(FacefactorsError, match="unknown config key 'trian'"):
        load_config(None, ["trian.steps=5"])


def test_bad_types_are_named():
    with pytest.raises(FacefactorsError, match="train.steps.*integer"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(FacefactorsError, match="train.channels_last.*true or false"):
        load_config(None, ["train.channels_last=3"])
    with pytest.raises(FacefactorsError, match="not of the form key=value"):
        apply_overrides({}, ["train.steps"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(FacefactorsError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(FacefactorsError, match="not valid YAML"):
        load_config(bad)


def test_round_trip(tmp_path):
    cfg = load_config(None, ["train.steps=7", "model.part_dims={identity: 4, rest: 2}"])
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_config(cfg))
    again = load_config(p)
    assert again == cfg


def test_method_params_are_checked():
    from facefactors.methods.autoencoder import AutoencoderParams

    params = build_dataclass(AutoencoderParams, {"rec": 2, "betas": [0.5, 0.9]}, "method")
    assert params.rec == 2.0 and params.betas == (0.5, 0.9)
    with pytest.raises(FacefactorsError, match="unknown config key method.'dis'"):
        build_dataclass(AutoencoderParams, {"dis": 1.0}, "method")


def test_extends_merges_over_the_base_and_names_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 5\ntrain: {steps: 100, batch_size: 16}\nmodel: {width: 8}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ntrain: {steps: 7}\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.batch_size=4"])
    assert (cfg.seed, cfg.train.steps, cfg.train.batch_size, cfg.model.width) == (5, 7, 4, 8)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(FacefactorsError, match="extends itself"):
        load_config(tmp_path / "a.yaml")
