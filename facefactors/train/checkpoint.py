"""Checkpoints: one safetensors file per save holding weights, optimiser state and RNG state.

Everything is tensors plus a JSON metadata header, so loading never unpickles
anything: a checkpoint from an untrusted source cannot run code. Files are written
atomically (temporary file, then rename), so a crash never leaves a broken checkpoint.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from facefactors.errors import FacefactorsError
from facefactors.io import write_bytes

FORMAT = "facefactors-checkpoint-v1"
_NAME = re.compile(r"^step-(\d{8})\.safetensors$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}.safetensors"


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def latest_checkpoint(run_dir: Path) -> Path:
    found = list_checkpoints(run_dir)
    if not found:
        raise FacefactorsError(f"no checkpoint in {Path(run_dir) / 'checkpoints'}")
    return found[-1]


def _optimizer_tensors(name: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    sd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for key, val in state.items():
            if torch.is_tensor(val):
                tensors[f"optim/{name}/{pid}/{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = val
    meta[name] = {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    info = meta[name]
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim/{name}/"
    for key, val in tensors.items():
        if key.startswith(prefix):
            pid, k = key[len(prefix):].split("/", 1)
            state.setdefault(int(pid), {})[k] = val
    for pid, vals in info["scalars"].items():
        state.setdefault(int(pid), {}).update(vals)
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def save_checkpoint(path: Path, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                    step: int, method: str, rng_states: list[torch.Tensor], extra: dict | None = None,
                    ema: dict[str, torch.Tensor] | None = None) -> None:
    """Write model weights, optimiser state and per-process RNG states to ``path`` atomically;
    ``ema``: the averaged weights (``train.ema``), stored beside the live ones."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for k, v in (ema or {}).items():
        tensors[f"ema/{k}"] = v.detach().cpu().contiguous()
    optim_meta: dict[str, Any] = {}
    for name, opt in optimizers.items():
        _optimizer_tensors(name, opt, tensors, optim_meta)
    for rank, state in enumerate(rng_states):
        tensors[f"rng/{rank}"] = state.cpu().contiguous()
    meta = {"format": FORMAT, "method": method, "step": str(step), "optimizers": json.dumps(optim_meta),
            "extra": json.dumps(extra or {})}
    write_bytes(path, st_save(tensors, metadata=meta))


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read and validate a checkpoint file; FacefactorsError names the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FacefactorsError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError, json.JSONDecodeError, Exception) as e:
        raise FacefactorsError(f"{path} is not a facefactors checkpoint (unreadable: {type(e).__name__})") from None
    if meta.get("format") != FORMAT:
        raise FacefactorsError(f"{path} is not a facefactors checkpoint (format {meta.get('format')!r})")
    return tensors, meta


WEIGHTS = ("auto", "live", "ema")


def load_checkpoint(path: Path, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer] | None,
                    method: str, weights: str = "live", ema=None,
                    optional: tuple[str, ...] = ()) -> tuple[int, dict[str, torch.Tensor], dict]:
    """Restore weights (and optimisers); returns (step, rng states by rank, extra).

    ``weights``: which set goes into ``model``: ``live`` (the trained weights, what resume
    needs), ``ema`` (the averaged ones, an error where the run kept none) or ``auto`` (the
    averaged ones where present: what evaluation uses). ``ema``: a ``WeightAverage`` to restore
    (started at the loaded live weights where the checkpoint has no average). ``optional``:
    optimiser groups the checkpoint may lack (they keep their fresh state)."""
    if weights not in WEIGHTS:
        raise FacefactorsError(f"unknown weights {weights!r}; use {', '.join(WEIGHTS)}")
    tensors, meta = read_checkpoint(path)
    if meta.get("method") != method:
        raise FacefactorsError(f"checkpoint {path} was trained with method {meta.get('method')!r}, "
                               f"but the config says {method!r}")
    averaged = {k[len("ema/"):]: v for k, v in tensors.items() if k.startswith("ema/")}
    if weights == "ema" and not averaged:
        raise FacefactorsError(f"checkpoint {path} holds no averaged weights (the run had train.ema off)")
    prefix = "ema/" if averaged and weights in ("ema", "auto") else "model/"
    chosen = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(chosen))
    unexpected = sorted(set(chosen) - set(expected))
    bad_shape = [k for k in expected if k in chosen and chosen[k].shape != expected[k].shape]
    if missing or unexpected or bad_shape:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape mismatch for {bad_shape[:3]}")
        raise FacefactorsError(f"checkpoint {path} does not fit this model ({detail}); "
                               "was it trained with another config (image size, widths, parts)?")
    model.load_state_dict(chosen)
    if ema is not None:
        ema.reset(model)
        if averaged:
            ema.load(averaged)
    if optimizers is not None:
        optim_meta = json.loads(meta["optimizers"])
        for name, opt in optimizers.items():
            if name not in optim_meta:
                if name in optional:
                    continue
                raise FacefactorsError(f"checkpoint {path} has no state for optimiser group {name!r}")
            _restore_optimizer(name, opt, tensors, optim_meta)
    rng = {k: v for k, v in tensors.items() if k.startswith("rng/")}
    return int(meta["step"]), rng, json.loads(meta.get("extra", "{}"))
