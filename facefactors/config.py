"""Run configuration: YAML files with dotted command-line overrides, checked against typed sections.

A config has sections ``data`` (dataset spec), ``model`` (method and network sizes),
``method`` (the method's own hyper-parameters: loss weights, learning rates), ``train``
and ``eval``. Every key is checked: a typo is an error naming the key and listing the
valid ones, never a silently ignored setting.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from facefactors.data.augment import AugmentConfig
from facefactors.errors import FacefactorsError
from facefactors.train.polish import PolishConfig


@dataclass
class ModelConfig:
    method: str = "autoencoder"
    attributes: list[str] = field(default_factory=lambda: ["identity", "expression", "illumination"])
    width: int = 32
    part_dims: dict[str, int] = field(default_factory=dict)
    norm: str = "batch"


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 64             # global batch: split across processes under torchrun
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    precision: str = "auto"          # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 (on a CPU: fast only with native bf16, AMX or AVX512-BF16)
    channels_last: bool = True
    grad_clip: float | None = None   # max global grad norm per optimiser group
    log_every: int = 25
    preview_every: int = 500
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    time_budget_min: float | None = None   # stop (with a checkpoint) after this much training time
    # learning-rate schedule, a pure function of step / steps (so resume needs no state):
    # constant | cosine | linear, from every group's lr down to lr_final x it, starting at the
    # lr_decay_start fraction of training. With a time budget, size ``steps`` to fit it.
    lr_schedule: str = "constant"
    lr_final: float = 0.0
    lr_decay_start: float = 0.0
    num_threads: int | None = None
    progress: bool = True
    # label-preserving augmentation of training images (facefactors/data/augment.py): rotate,
    # shear, scale, translate, thickness, padding; all 0 = off
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # exponential moving average of the weights (facefactors/train/ema.py), kept beside the live
    # ones and used for evaluation; its decay per step, e.g. 0.998; 0 = off. Training is unchanged.
    ema: float = 0.0
    # a last phase that trains the decoder alone on the frozen encoder's deterministic codes
    # (facefactors/train/polish.py): steps after ``steps``, lr, lr_final; steps 0 = off
    polish: PolishConfig = field(default_factory=PolishConfig)


@dataclass
class RunConfig:
    seed: int = 0
    data: dict[str, Any] = field(default_factory=lambda: {"name": "synthfaces", "size": 64})
    model: ModelConfig = field(default_factory=ModelConfig)
    method: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_value(text: str) -> Any:
    """Parse an override value as YAML (numbers, booleans, lists, null)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return _maybe_number(value)


def _maybe_number(value: Any) -> Any:
    """YAML 1.1 reads '1e-4' as a string; accept it as the number it is."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (returns a new dict)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise FacefactorsError(f"override {item!r} is not of the form key=value (e.g. train.steps=2000)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise FacefactorsError(f"override {key!r}: {p!r} is a value, not a section")
            node = child
        node[parts[-1]] = parse_value(value)
    return out


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise FacefactorsError(f"config key {where!r} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or (args[-1] is not Ellipsis and len(value) != len(args)):
            raise FacefactorsError(f"config key {where!r} must be a list of {len(args)} values, got {value!r}")
        if args[-1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise FacefactorsError(f"config key {where!r} must be a mapping, got {value!r}")
        return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise FacefactorsError(f"config key {where!r} must be true or false, got {value!r}")
        return value
    if tp is float:
        value = _maybe_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FacefactorsError(f"config key {where!r} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise FacefactorsError(f"config key {where!r} must be an integer, got {value!r}")
        return int(value)
    if tp is str:
        if not isinstance(value, str):
            raise FacefactorsError(f"config key {where!r} must be a string, got {value!r}")
        return value
    return value


def build_dataclass(cls: type, values: dict[str, Any] | None, where: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a mapping, checking every key and value type."""
    values = values or {}
    if not isinstance(values, dict):
        raise FacefactorsError(f"config section {where or cls.__name__!r} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in values if k not in fields]
    if unknown:
        prefix = f"{where}." if where else ""
        raise FacefactorsError(f"unknown config key {prefix}{unknown[0]!r}; valid keys"
                               f"{' under ' + where if where else ''}: {', '.join(fields)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config mapping. ``extends: base.yaml`` (relative to this file) merges this file
    over the base, so an ablation config states only what it changes."""
    path = Path(path)
    if path.resolve() in _chain:
        raise FacefactorsError(f"config {path} extends itself through "
                               + " -> ".join(str(p) for p in (*_chain, path.resolve())))
    if not path.is_file():
        raise FacefactorsError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise FacefactorsError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise FacefactorsError(f"config file {path} must hold a mapping of sections at the top level")
    base = raw.pop("extends", None)
    if base is not None:
        if not isinstance(base, str):
            raise FacefactorsError(f"config file {path}: 'extends' must be a file name, got {base!r}")
        raw = deep_merge(load_yaml(path.parent / base, (*_chain, path.resolve())), raw)
    return raw


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    raw = load_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, list(overrides))
    return build_dataclass(RunConfig, raw)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
