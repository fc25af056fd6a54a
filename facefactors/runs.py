"""Run directories: build a model from a config, and reopen a trained run.

A run directory holds ``config.yaml`` (resolved), ``checkpoints/``, ``log.jsonl``,
``figures/``, ``metrics.json`` and ``report.html``: everything needed to reproduce or
reuse a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from facefactors.config import RunConfig, build_dataclass, load_config
from facefactors.data import make_dataset
from facefactors.data.specs import ImageDataset
from facefactors.errors import FacefactorsError
from facefactors.methods import registry
from facefactors.methods.base import Method, ModelSetup
from facefactors.train.checkpoint import latest_checkpoint, load_checkpoint


def build_model(cfg: RunConfig, ds: ImageDataset) -> Method:
    """Instantiate the configured method for this dataset (checks method, attributes and params)."""
    cls = registry.get(cfg.model.method)
    params = build_dataclass(cls.Params, cfg.method, "method")
    attrs = [ds.attribute(a) for a in cfg.model.attributes]
    setup = ModelSetup(image_size=ds.image_size, channels=ds.channels, attributes=attrs,
                       width=cfg.model.width, part_dims=dict(cfg.model.part_dims), norm=cfg.model.norm,
                       extra_attributes={n: s.num_classes for n, s in ds.attributes.items()
                                         if s.discrete and n not in cfg.model.attributes})
    try:
        return cls(setup, params)
    except ValueError as e:  # network sizing problems are config problems
        raise FacefactorsError(f"cannot build method {cfg.model.method!r}: {e}") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FacefactorsError(f"train.device={name!r} but CUDA is not available on this machine")
    return torch.device(name)


@dataclass
class LoadedRun:
    run_dir: Path
    config: RunConfig
    dataset: ImageDataset
    model: Method
    step: int


def run_config_path(run_dir: str | Path) -> Path:
    """The resolved ``config.yaml`` of a run directory, with a clear error when there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FacefactorsError(f"run directory not found: {run_dir}")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FacefactorsError(f"{run_dir} is not a run directory (no config.yaml)")
    return path


def load_run(run_dir: str | Path, device: str = "cpu", dataset: ImageDataset | None = None,
             weights: str = "auto") -> LoadedRun:
    """Reopen a run: its config, its dataset (regenerated or loaded), and the latest weights (eval
    mode): the averaged ones where the run kept them (``train.ema``), unless ``weights="live"``."""
    run_dir = Path(run_dir)
    cfg = load_config(run_config_path(run_dir))
    ds = dataset if dataset is not None else make_dataset(cfg.data)
    model = build_model(cfg, ds)
    step, _, _ = load_checkpoint(latest_checkpoint(run_dir), model, None, cfg.model.method, weights=weights)
    model.to(torch.device(device)).eval()
    return LoadedRun(run_dir, cfg, ds, model, step)
