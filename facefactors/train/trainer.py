"""The shared training loop: every method trains through it.

Devices and precision, torchrun data parallelism, gradient clipping, progress bar with
losses, images/s and ETA, ``log.jsonl``, periodic previews, atomic checkpoints with exact
resume, and a guard that stops on a non-finite loss naming it. Options: learning-rate schedules,
training augmentation (``train.augment``), a weight average (``train.ema``), and a last phase
that trains the decoder alone on the frozen encoder's codes (``train.polish``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from facefactors.config import RunConfig, dump_config
from facefactors.data import make_dataset
from facefactors.data.augment import Augment
from facefactors.data.specs import ImageDataset
from facefactors.errors import FacefactorsError
from facefactors.io import write_json, write_text
from facefactors.runs import build_model, resolve_device
from facefactors.train import distributed as ddp
from facefactors.train.ema import WeightAverage
from facefactors.train.polish import GROUP as POLISH
from facefactors.train.checkpoint import (checkpoint_path, latest_checkpoint, list_checkpoints, load_checkpoint,
                                          save_checkpoint)
from facefactors.train.sampler import EpochSampler


class TrainingDiverged(FacefactorsError):
    """A loss became NaN or infinite."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    images_per_s: float
    train_seconds: float
    stopped: str  # "steps" | "time_budget"


def _resolve_precision(device: torch.device, precision: str) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("bf16", "fp32"):
        raise FacefactorsError(f"unknown train.precision {precision!r}; use auto, fp32 or bf16")
    return precision


def _autocast(device: torch.device, precision: str):
    if _resolve_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions and matmuls natively (AVX512-BF16 or AMX), where
    bf16 autocast trains faster than fp32; elsewhere oneDNN emulates it, slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_multiplier(step: int, total_steps: int, schedule: str, final: float = 0.0, start: float = 0.0) -> float:
    """Factor on every optimiser group's lr at ``step``: 1 until the ``start`` fraction of
    training, then down to ``final`` at the last step (cosine or linear); 1 throughout for
    "constant". A pure function of the step, so a resumed run continues the same curve."""
    if schedule not in LR_SCHEDULES:
        raise FacefactorsError(f"unknown train.lr_schedule {schedule!r}; use {', '.join(LR_SCHEDULES)}")
    if schedule == "constant":
        return 1.0
    t0 = start * total_steps
    t = min(max((step - t0) / max(total_steps - t0, 1), 0.0), 1.0)
    shape = 0.5 * (1.0 + math.cos(math.pi * t)) if schedule == "cosine" else 1.0 - t
    return final + (1.0 - final) * shape


class Trainer:
    """Train ``cfg`` into ``run_dir``; ``resume=True`` continues from its latest checkpoint."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False,
                 dataset: ImageDataset | None = None, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self._dataset = dataset
        self._log = log

    def log(self, msg: str) -> None:
        if self.info.is_main:
            self._log(msg)

    # ------------------------------------------------------------------ set-up
    def _prepare_run_dir(self) -> None:
        if not self.resume and list_checkpoints(self.run_dir):
            raise FacefactorsError(f"{self.run_dir} already holds a trained run; use --resume {self.run_dir} "
                                   "to continue it, or choose another --out")
        if self.info.is_main:
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (self.run_dir / "figures").mkdir(exist_ok=True)
            write_text(self.run_dir / "config.yaml", dump_config(self.cfg))

    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.info.local_rank if self.info.enabled else
                                       (self.device.index or 0))
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        lr_multiplier(0, cfg.train.steps, cfg.train.lr_schedule)  # reject an unknown schedule before any work
        if cfg.train.batch_size % self.info.world_size:
            raise FacefactorsError(f"train.batch_size={cfg.train.batch_size} does not split evenly over "
                                   f"{self.info.world_size} processes")
        self.ds = self._dataset if self._dataset is not None else make_dataset(cfg.data)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, self.ds).to(self.device)
        self.model.bind_dataset(self.ds, cfg.seed)
        if cfg.train.augment.active:
            self.model.train_augment = Augment(cfg.train.augment)
        self._prepare_run_dir()  # only once data and model are known to be good
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        ddp.broadcast_module(self.model, self.info)
        specs = self.model.optimizers()
        self.groups = {name: spec.params for name, spec in specs.items()}
        self.optimizers = {name: spec.build() for name, spec in specs.items()}
        self.base_lrs = {name: [g["lr"] for g in opt.param_groups] for name, opt in self.optimizers.items()}
        if cfg.train.polish.active:
            self._add_polish_group()
        self.sampler = EpochSampler(self.ds.split("train"), cfg.train.batch_size, cfg.seed)
        self.ema = WeightAverage(self.model, cfg.train.ema) if cfg.train.ema else None
        self.start_step = 0
        # Training randomness (noise, shuffles) differs per process but is seeded.
        torch.manual_seed(cfg.seed * 7919 + 1 + self.info.rank)
        if self.resume:
            path = latest_checkpoint(self.run_dir)
            self.start_step, rng, _ = load_checkpoint(path, self.model, self.optimizers, cfg.model.method,
                                                      ema=self.ema, optional=(POLISH,))
            key = f"rng/{self.info.rank}"
            if key in rng:
                torch.set_rng_state(rng[key])
            self.log(f"resumed {self.run_dir} from {path.name} (step {self.start_step})")
        test_idx = self.ds.split("test")
        self.preview_index = test_idx[:8] if len(test_idx) else self.ds.split("train")[:8]

    def _add_polish_group(self) -> None:
        """The polish phase's optimiser (``train.polish``) over ``model.polish_modules()``."""
        name = self.cfg.model.method
        if POLISH in self.optimizers:
            raise FacefactorsError(f"method {name!r} has an optimiser group named {POLISH!r}, which train.polish needs")
        params = [p for m in self.model.polish_modules() for p in m.parameters()]
        if not params:
            raise FacefactorsError(f"method {name!r} has nothing for train.polish to train (no decoder); "
                                   "set train.polish.steps=0")
        self.groups[POLISH] = params
        self.optimizers[POLISH] = torch.optim.Adam(params, lr=self.cfg.train.polish.lr)

    def _enter_polish(self) -> None:
        """Freeze everything but the polished modules, in eval mode (encoder norm statistics as
        evaluation sees them)."""
        self.model.eval()
        for m in self.model.polish_modules():
            m.train()

    # ------------------------------------------------------------------ helpers
    def _save(self, step: int) -> Path:
        rng = ddp.gather_rng_states(self.info)
        path = checkpoint_path(self.run_dir, step)
        if self.info.is_main:
            save_checkpoint(path, self.model, self.optimizers, step, self.cfg.model.method, rng,
                            ema=self.ema.tensors() if self.ema is not None else None)
            for old in list_checkpoints(self.run_dir)[:-max(1, self.cfg.train.keep_checkpoints)]:
                old.unlink()
        ddp.barrier(self.info)
        return path

    def _set_lr(self, step: int, total_steps: int) -> None:
        tc = self.cfg.train
        if step >= tc.steps and tc.polish.active:
            for group in self.optimizers[POLISH].param_groups:
                group["lr"] = tc.polish.rate(step - tc.steps)
            return
        if tc.lr_schedule == "constant":
            return
        mult = lr_multiplier(step, total_steps, tc.lr_schedule, tc.lr_final, tc.lr_decay_start)
        for name, opt in self.optimizers.items():
            if name == POLISH:
                continue
            for group, base in zip(opt.param_groups, self.base_lrs[name]):
                group["lr"] = base * mult

    def _preview(self, step: int) -> None:
        if not self.info.is_main:
            return
        from facefactors.viz.grids import reconstruction_grid
        from facefactors.io import save_png

        images = self.ds.images[torch.as_tensor(self.preview_index)]
        grid = reconstruction_grid(self.model, images, device=self.device)  # eval mode inside, restored after
        save_png(self.run_dir / "figures" / "preview.png", grid)

    def _append_log(self, record: dict) -> None:
        if self.info.is_main:
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _check_finite(self, group: str, losses: dict[str, torch.Tensor], total: torch.Tensor, step: int) -> None:
        if torch.isfinite(total.detach()).item():
            return
        bad = next((k for k, v in losses.items() if not torch.isfinite(v.detach()).all()), "total")
        value = float(losses[bad].detach().float().mean()) if bad in losses else float(total)
        try:
            last = latest_checkpoint(self.run_dir).name
        except FacefactorsError:
            last = "none yet"
        raise TrainingDiverged(f"loss {group}/{bad} became {value} at step {step}; training stopped "
                               f"(last good checkpoint: {last})")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        self.device = resolve_device(self.cfg.train.device)
        self.info = ddp.init_from_env(self.device.type)
        try:
            return self._fit()
        finally:
            ddp.shutdown(self.info)

    def _polish_losses(self, batch, step: int):
        """The polish phase's one update per step, as a group generator like ``train_step``."""
        yield POLISH, self.model.polish_step(batch, step)

    def _fit(self) -> TrainResult:
        self._setup()
        cfg, tc = self.cfg, self.cfg.train
        model, device = self.model, self.device
        main_steps, total_steps = tc.steps, tc.steps + tc.polish.steps
        step = self.start_step
        precision = _resolve_precision(device, tc.precision)
        if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
            self.log("warning: train.precision=bf16 on a CPU without native bf16 (AVX512-BF16 or AMX); "
                     "it is emulated there and slower than fp32")
        if step >= total_steps:
            self.log(f"nothing to do: the run is at step {step} of {total_steps}")
            return TrainResult(self.run_dir, step, 0.0, 0.0, "steps")
        self.log(f"training {cfg.model.method} on {self.ds.name} ({self.ds.image_size}px, "
                 f"{len(self.ds.split('train'))} train images) for steps {step}..{total_steps}, "
                 f"batch {tc.batch_size}, device {device}, {precision}"
                 + (f", the last {tc.polish.steps} polishing the decoder" if tc.polish.active else "")
                 + (f", {self.info.world_size} processes" if self.info.enabled else ""))
        model.train()
        interactive = sys.stderr.isatty()
        bar = tqdm(total=total_steps, initial=step, disable=not (self.info.is_main and tc.progress),
                   dynamic_ncols=True, unit="step", mininterval=0.5 if interactive else 30.0)
        sums: dict[str, torch.Tensor] = {}
        n_sum = 0
        train_seconds = 0.0
        images = 0
        window_t, window_images = 0.0, 0
        stopped = "steps"
        budget = tc.time_budget_min * 60 if tc.time_budget_min else None
        polishing = False
        while step < total_steps:
            t0 = time.perf_counter()
            if step >= main_steps and not polishing:
                self._enter_polish()
                polishing = True
            idx = self.sampler.local_batch(step, self.info.rank, self.info.world_size)
            batch = self.ds.batch(idx).to(device, channels_last=tc.channels_last)
            if model.train_augment is not None:  # a no-op while polishing (the model is in eval mode)
                batch = dataclasses.replace(batch, image=model.augment_images(batch.image))
            self._set_lr(step, main_steps)
            gen = self._polish_losses(batch, step) if polishing else model.train_step(batch, step, main_steps)
            while True:
                with _autocast(device, precision):  # resolved (and checked) once, above
                    try:
                        group, losses = next(gen)
                    except StopIteration:
                        break
                total = sum(losses.values())
                self._check_finite(group, losses, total, step)
                opt = self.optimizers[group]
                opt.zero_grad(set_to_none=True)
                total.backward()
                params = self.groups[group]
                ddp.average_gradients(params, self.info)
                if tc.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
                opt.step()
                for k, v in losses.items():
                    key = f"{group}/{k}"
                    sums[key] = sums.get(key, 0.0) + v.detach().float()
            if self.ema is not None:
                self.ema.update(step)
            step += 1
            n_sum += 1
            dt = time.perf_counter() - t0
            train_seconds += dt
            window_t += dt
            images += tc.batch_size
            window_images += tc.batch_size
            bar.update(1)
            if budget is not None:
                over = torch.tensor(float(train_seconds >= budget))
                if self.info.enabled:
                    torch.distributed.all_reduce(over, op=torch.distributed.ReduceOp.MAX)
                if over.item() and step < total_steps:
                    stopped = "time_budget"
            if step % tc.log_every == 0 or step == total_steps or stopped != "steps":
                means = ddp.all_reduce_mean({k: float(v) / n_sum for k, v in sums.items()}, self.info)
                ips = window_images / max(window_t, 1e-9)
                self._append_log({"step": step, **{k: round(v, 6) for k, v in means.items()},
                                  "images_per_s": round(ips, 1), "train_seconds": round(train_seconds, 2)})
                postfix = {**{k.split("/")[-1]: f"{v:.4g}" for k, v in means.items()}, "img/s": f"{ips:.0f}"}
                if budget is not None:
                    postfix["budget left"] = f"{max(0.0, budget - train_seconds) / 60:.1f} min"
                bar.set_postfix(postfix, refresh=False)
                sums, n_sum, window_t, window_images = {}, 0, 0.0, 0
            if tc.preview_every and (step % tc.preview_every == 0 or step == total_steps or stopped != "steps"):
                self._preview(step)
            if stopped != "steps":
                break
            if step % tc.checkpoint_every == 0 and step != total_steps:
                self._save(step)
        bar.close()
        path = self._save(step)
        ips = images / max(train_seconds, 1e-9)
        result = TrainResult(self.run_dir, step, ips, train_seconds, stopped)
        if self.info.is_main:
            summary = {"step": step, "steps": total_steps, "polish_steps": tc.polish.steps, "stopped": stopped,
                       "images_per_s": round(ips, 1),
                       "train_seconds": round(train_seconds, 1), "processes": self.info.world_size,
                       "device": str(device), "checkpoint": path.name,
                       "n_parameters": sum(p.numel() for p in model.parameters())}
            write_json(self.run_dir / "train_summary.json", summary)
        note = " (time budget reached)" if stopped == "time_budget" else ""
        self.log(f"trained to step {step}{note}: {ips:.0f} images/s over {train_seconds:.0f} s; "
                 f"checkpoint {path}")
        return result
