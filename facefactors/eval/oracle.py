"""The evaluation oracle: an independent multi-head CNN trained on a dataset's REAL training images.

It is never part of any model. Evaluation uses it to judge generated images: it classifies
every discrete attribute (edit success rates, what a transfer produced), regresses the
continuous columns (attribute intensities after transfer) and gives penultimate features for
the Fréchet distance (``frechet.py``). Because every method is scored by the same oracle, the
numbers compare across methods.

``get_oracle`` trains it once per dataset and config (seeded, deterministic on a given machine)
and caches the weights as a safetensors file in ``<cache>/oracles/`` keyed by a fingerprint of
the dataset and the config; the next call loads the file. A cache file that is unreadable,
truncated or of another dataset is ignored (with a log line) and replaced.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from facefactors.data.specs import AttributeSpec, ImageDataset, to_float_image
from facefactors.errors import FacefactorsError
from facefactors.eval.latents import as_nchw_uint8, inference
from facefactors.io import write_bytes
from facefactors.nn.blocks import n_halvings, stage_widths
from facefactors.nn.classifiers import MultiHeadClassifier

FORMAT = "facefactors-oracle-v1"
ORACLE_VERSION = 1          # bump when the network or the training recipe changes (invalidates caches)
REG_HEAD = "__regressed__"  # the head holding every regressed column (not a valid attribute name clash)


@dataclass
class OracleConfig:
    """Training budget and size of the oracle.

    Measured on SynthFaces-64 (100 identities, 10.8k train images): 600 steps reach test accuracy
    >= 0.99 for every attribute but pose (0.95: yaw bins have soft edges; R^2 0.97 for yaw, 0.54
    for the subtle expression intensity); the default 1000 steps add margin. A step took 75 ms on
    one CPU thread at 64 px (width 16): about 75 s for the default budget. ``max_epochs`` caps the
    steps on small datasets (tiny test sets stop after that many passes instead of overfitting).
    """

    steps: int = 1000
    batch_size: int = 64
    width: int = 16
    lr: float = 1e-3
    seed: int = 0
    feature_dim: int = 256
    max_epochs: float = 30.0
    weight_decay: float = 1e-4
    regress_factors: bool = True   # also regress float factor columns of procedural datasets


def default_cache_dir() -> Path:
    """``$FACEFACTORS_CACHE`` or ``~/.cache/facefactors``."""
    env = os.environ.get("FACEFACTORS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "facefactors"


def _input_size(image_size: int) -> int:
    """Power of two >= max(8, image_size): the conv trunk halves down to 4x4."""
    return max(8, 1 << max(0, math.ceil(math.log2(max(1, image_size)))))


def regressed_columns(ds: ImageDataset, regress_factors: bool = True) -> list[str]:
    """Continuous attributes with labels, then (procedural data) float factor columns owned by an
    attribute's factor group, skipping columns that are constant over the train split."""
    cols = [a for a, s in ds.attributes.items() if s.kind == "continuous" and a in ds.labels]
    if regress_factors and ds.factors is not None:
        owned = [c for group in ds.factor_groups.values() for c in group]
        train = ds.split("train")
        for c in owned:
            v = np.asarray(ds.factors.get(c, np.zeros(0)))
            if c in cols or v.ndim != 1 or len(v) != len(ds) or not np.issubdtype(v.dtype, np.floating):
                continue
            if len(train) and float(np.std(v[train])) > 0:
                cols.append(c)
    return list(dict.fromkeys(cols))


def _targets(ds: ImageDataset, cols: list[str]) -> np.ndarray:
    """(N, len(cols)) float64 regression targets in original units."""
    out = np.zeros((len(ds), len(cols)), np.float64)
    for j, c in enumerate(cols):
        if c in ds.labels:
            out[:, j] = ds.labels[c].double().numpy()
        else:
            out[:, j] = np.asarray(ds.factors[c], np.float64)
    return out


def fingerprint(ds: ImageDataset, cfg: OracleConfig) -> str:
    """Hex digest of what the oracle depends on: dataset name, image shape, length, labels,
    train split, a strided sample of images, the regressed columns and the config."""
    h = hashlib.sha256()

    def add(obj) -> None:
        h.update(json.dumps(obj, sort_keys=True, default=str).encode())

    add({"v": ORACLE_VERSION, "name": ds.name, "shape": list(ds.images.shape), "n": len(ds),
         "cfg": dataclasses.asdict(cfg),
         "attrs": {a: [s.kind, list(s.classes)] for a, s in ds.attributes.items()}})
    for name in sorted(ds.labels):
        h.update(name.encode())
        h.update(np.ascontiguousarray(ds.labels[name].cpu().numpy()).tobytes())
    h.update(np.ascontiguousarray(ds.split("train"), dtype=np.int64).tobytes())
    pick = np.unique(np.linspace(0, len(ds) - 1, num=min(len(ds), 64)).astype(np.int64)) if len(ds) else []
    for i in pick:
        h.update(ds.images[int(i)].contiguous().numpy().tobytes())
    cols = regressed_columns(ds, cfg.regress_factors)
    add(cols)
    if cols:
        h.update(np.ascontiguousarray(_targets(ds, cols)).tobytes())
    return h.hexdigest()


class OracleNet(MultiHeadClassifier):
    """Small multi-head CNN: 3x3 stride-2 conv stages (batch norm, ReLU) down to 4x4, a
    ``feature_dim`` penultimate layer, one linear head per output. 3x3 stages at width 16 are
    ~6x cheaper on a CPU than the 4x4 DCGAN trunk of the methods, at the same test accuracy
    on SynthFaces."""

    def __init__(self, image_size: int, channels: int, heads: dict[str, int], width: int = 16,
                 feature_dim: int = 256):
        widths = stage_widths(width, n_halvings(image_size, 4))
        layers: list[nn.Module] = []
        cin = channels
        for cout in widths:
            layers += [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        super().__init__(nn.Sequential(*layers), cin, heads, feature_dim, nn.ReLU(inplace=True))


class EvalOracle(nn.Module):
    """A trained oracle: ``predict`` / ``predict_proba`` / ``features`` on uint8 images.

    Images are uint8 NCHW tensors or NHWC numpy arrays (the renderer's layout).
    ``attributes`` are the discrete attributes it classifies; ``regressed`` the continuous
    columns it regresses (answers in original units). ``report`` holds its test-split scores
    measured right after training.
    """

    def __init__(self, image_size: int, channels: int, attributes: dict[str, AttributeSpec], regressed: list[str],
                 reg_mean: np.ndarray, reg_std: np.ndarray, width: int = 16, feature_dim: int = 256,
                 fingerprint: str = "", report: dict | None = None):
        super().__init__()
        self.attributes = dict(attributes)
        self.regressed = list(regressed)
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.in_size = _input_size(self.image_size)
        self.width, self.feature_dim = int(width), int(feature_dim)
        self.fingerprint = fingerprint
        self.report = dict(report or {})
        heads = {a: s.num_classes for a, s in self.attributes.items()}
        if self.regressed:
            heads[REG_HEAD] = len(self.regressed)
        self.net = OracleNet(self.in_size, self.channels, heads, width=self.width, feature_dim=self.feature_dim)
        self.register_buffer("reg_mean", torch.as_tensor(np.asarray(reg_mean, np.float32).reshape(-1)))
        self.register_buffer("reg_std", torch.as_tensor(np.asarray(reg_std, np.float32).reshape(-1)))

    # -- networks --------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_size or x.shape[-2] != self.in_size:
            x = F.interpolate(x, size=(self.in_size, self.in_size), mode="bilinear", align_corners=False)
        return x

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Float images in [-1, 1] (B, C, H, W) -> logits per attribute (+ standardized regression)."""
        return self.net(self._prepare(x))

    @property
    def device(self) -> torch.device:
        return self.reg_mean.device

    def _batches(self, images, batch_size: int):
        t = as_nchw_uint8(images)
        if t.shape[1] != self.channels or t.shape[2] != self.image_size or t.shape[3] != self.image_size:
            raise FacefactorsError(f"the evaluation oracle expects {self.channels}x{self.image_size}x"
                                   f"{self.image_size} images, got {tuple(t.shape[1:])}")
        for s in range(0, t.shape[0], batch_size):
            yield to_float_image(t[s:s + batch_size].to(self.device))

    def _run(self, images, batch_size: int, fn) -> list:
        out = []
        with inference(self):
            for x in self._batches(images, batch_size):
                out.append(fn(self._prepare(x)))
        return out

    # -- public API ------------------------------------------------------------------------
    def predict_proba(self, images, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Class probabilities (N, K) per discrete attribute."""
        def fn(x):
            logits = self.net(x)
            return {a: torch.softmax(logits[a].float(), 1).cpu() for a in self.attributes}
        chunks = self._run(images, batch_size, fn)
        return {a: (torch.cat([c[a] for c in chunks]).numpy() if chunks
                    else np.zeros((0, s.num_classes), np.float32)) for a, s in self.attributes.items()}

    def predict(self, images, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Class index (int64) per discrete attribute, value (float64, original units) per regressed column."""
        def fn(x):
            logits = self.net(x)
            out = {a: logits[a].argmax(1).cpu() for a in self.attributes}
            if self.regressed:
                out[REG_HEAD] = (logits[REG_HEAD].float() * self.reg_std + self.reg_mean).cpu()
            return out
        chunks = self._run(images, batch_size, fn)
        res: dict[str, np.ndarray] = {}
        for a in self.attributes:
            res[a] = torch.cat([c[a] for c in chunks]).numpy().astype(np.int64) if chunks else np.zeros(0, np.int64)
        if self.regressed:
            reg = torch.cat([c[REG_HEAD] for c in chunks]).double().numpy() if chunks \
                else np.zeros((0, len(self.regressed)))
            for j, c in enumerate(self.regressed):
                res[c] = reg[:, j]
        return res

    def features(self, images, batch_size: int = 256) -> np.ndarray:
        """(N, feature_dim) penultimate features (float64), e.g. for Fréchet distances."""
        chunks = self._run(images, batch_size, lambda x: self.net.features(x).float().cpu())
        return torch.cat(chunks).double().numpy() if chunks else np.zeros((0, self.feature_dim))

    def evaluate(self, ds: ImageDataset, split: str = "test", max_images: int | None = None,
                 batch_size: int = 256) -> dict:
        """Accuracy per discrete attribute and R^2 per regressed column on ``split``."""
        idx = np.asarray(ds.split(split), np.int64)
        if max_images is not None and len(idx) > max_images:
            idx = np.sort(np.random.default_rng(0).choice(idx, max_images, replace=False))
        if len(idx) == 0:
            return {"split": split, "n": 0, "accuracy": {}, "r2": {}}
        pred = self.predict(ds.images[torch.from_numpy(idx)], batch_size)
        acc = {a: float(np.mean(pred[a] == ds.labels[a].numpy()[idx])) for a in self.attributes if a in ds.labels}
        r2 = {}
        if self.regressed:
            truth = _targets(ds, self.regressed)[idx]
            for j, c in enumerate(self.regressed):
                var = float(np.var(truth[:, j]))
                r2[c] = float(1.0 - np.mean((pred[c] - truth[:, j]) ** 2) / var) if var > 0 else None
        return {"split": split, "n": int(len(idx)), "accuracy": acc, "r2": r2}


# --------------------------------------------------------------------------------- training
def _train(ds: ImageDataset, cfg: OracleConfig, fp: str, device, log: Callable[[str], None]) -> EvalOracle:
    attrs = {a: s for a, s in ds.attributes.items() if s.discrete and a in ds.labels and s.num_classes >= 1}
    cols = regressed_columns(ds, cfg.regress_factors)
    train = np.asarray(ds.split("train"), np.int64)
    if len(train) < 2:
        raise FacefactorsError(f"dataset {ds.name!r}: the evaluation oracle needs at least 2 train images, "
                               f"the train split has {len(train)}")
    if not attrs and not cols:
        raise FacefactorsError(f"dataset {ds.name!r} has no labelled attribute for the evaluation oracle to learn")
    targets = _targets(ds, cols)
    mean = targets[train].mean(0) if cols else np.zeros(0)
    std = targets[train].std(0) if cols else np.zeros(0)
    std = np.where(std > 0, std, 1.0)
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        oracle = EvalOracle(ds.image_size, ds.channels, attrs, cols, mean, std, cfg.width, cfg.feature_dim, fp)
    oracle.to(dev)
    labels = {a: ds.labels[a].long().to(dev) for a in attrs}
    reg = torch.as_tensor((targets - mean) / std, dtype=torch.float32).to(dev) if cols else None
    images = ds.images  # uint8 on the CPU; batches are gathered by index tensors
    steps = max(1, min(int(cfg.steps), math.ceil(cfg.max_epochs * len(train) / cfg.batch_size)))
    opt = torch.optim.AdamW(oracle.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_t = torch.from_numpy(train)
    bs = min(cfg.batch_size, len(train))
    order, pos = torch.randperm(len(train), generator=gen), 0
    log(f"oracle: training on {len(train)} real train images of {ds.name!r} ({len(attrs)} classified "
        f"attributes, {len(cols)} regressed columns, {steps} steps)")
    t0 = time.perf_counter()
    oracle.train()
    for step in range(steps):
        if pos + bs > len(order):
            order, pos = torch.randperm(len(train), generator=gen), 0
        idx = train_t[order[pos:pos + bs]]
        pos += bs
        x = to_float_image(images[idx].to(dev, non_blocking=True))
        out = oracle(x)
        idx_d = idx.to(dev)
        loss = sum(F.cross_entropy(out[a], labels[a][idx_d]) for a in attrs) if attrs else 0.0
        if cols:
            loss = loss + F.mse_loss(out[REG_HEAD].float(), reg[idx_d], reduction="sum") / len(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if not torch.isfinite(loss.detach()):
            raise FacefactorsError(f"evaluation oracle training diverged at step {step} (loss {float(loss)})")
        if (step + 1) % max(1, steps // 5) == 0 and step + 1 < steps:
            log(f"oracle: step {step + 1}/{steps}, loss {float(loss.detach()):.3f}, {time.perf_counter() - t0:.0f}s")
    oracle.eval()
    oracle.report = oracle.evaluate(ds, "test", max_images=5000) if len(ds.split("test")) else {}
    oracle.report["train_steps"] = steps
    oracle.report["train_seconds"] = round(time.perf_counter() - t0, 1)
    acc = ", ".join(f"{a} {v:.3f}" for a, v in oracle.report.get("accuracy", {}).items())
    r2 = ", ".join(f"{c} {v:.3f}" for c, v in oracle.report.get("r2", {}).items() if v is not None)
    log(f"oracle: trained in {time.perf_counter() - t0:.1f}s; test accuracy: {acc or 'n/a'}"
        + (f"; R^2: {r2}" if r2 else ""))
    return oracle


# --------------------------------------------------------------------------------- cache
def oracle_path(ds: ImageDataset, cfg: OracleConfig, cache_dir: Path | str | None = None) -> Path:
    """Where ``get_oracle`` caches the oracle of ``ds`` under ``cfg``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", ds.name) or "dataset"
    return root / "oracles" / f"{safe}-{ds.image_size}px-{fingerprint(ds, cfg)[:20]}.safetensors"


def save_oracle(path: Path | str, oracle: EvalOracle) -> None:
    """Write the oracle's weights and description as one safetensors file, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in oracle.state_dict().items()}
    spec = {"image_size": oracle.image_size, "channels": oracle.channels, "width": oracle.width,
            "feature_dim": oracle.feature_dim, "regressed": oracle.regressed,
            "attributes": {a: {"kind": s.kind, "classes": list(s.classes), "identity_linked": s.identity_linked}
                           for a, s in oracle.attributes.items()}}
    meta = {"format": FORMAT, "fingerprint": oracle.fingerprint, "spec": json.dumps(spec),
            "report": json.dumps(oracle.report)}
    write_bytes(path, st_save(tensors, metadata=meta))


def load_oracle(path: Path | str, expected_fingerprint: str | None = None, device="cpu") -> EvalOracle:
    """Read an oracle written by ``save_oracle``; FacefactorsError names the file when it is not one
    (or belongs to another dataset/config when ``expected_fingerprint`` is given)."""
    path = Path(path)
    if not path.is_file():
        raise FacefactorsError(f"oracle file not found: {path}")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        spec = json.loads(meta["spec"])
        report = json.loads(meta.get("report") or "{}")
        attrs = {a: AttributeSpec(a, d["kind"], tuple(d["classes"]), bool(d.get("identity_linked")))
                 for a, d in spec["attributes"].items()}
        n_reg = len(spec["regressed"])
        oracle = EvalOracle(spec["image_size"], spec["channels"], attrs, spec["regressed"], np.zeros(n_reg),
                            np.ones(n_reg), spec["width"], spec["feature_dim"], meta.get("fingerprint", ""), report)
        oracle.load_state_dict(tensors, strict=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise FacefactorsError(f"{path} is not a facefactors evaluation oracle "
                               f"(unreadable: {type(e).__name__}: {str(e)[:120]})") from None
    if expected_fingerprint is not None and oracle.fingerprint != expected_fingerprint:
        raise FacefactorsError(f"{path} is an evaluation oracle of another dataset or config")
    return oracle.to(torch.device(device)).eval()


def get_oracle(ds: ImageDataset, cfg: OracleConfig | None = None, cache_dir: Path | str | None = None,
               device="cpu", log: Callable[[str], None] | None = print) -> EvalOracle:
    """The oracle of ``ds``: loaded from the cache when present and intact, else trained and cached.

    ``cache_dir`` defaults to ``$FACEFACTORS_CACHE`` or ``~/.cache/facefactors``; the file is
    ``<cache_dir>/oracles/<name>-<size>px-<fingerprint>.safetensors``.
    """
    cfg = cfg or OracleConfig()
    log = log or (lambda s: None)
    fp = fingerprint(ds, cfg)
    path = oracle_path(ds, cfg, cache_dir)
    if path.exists():
        try:
            oracle = load_oracle(path, fp, device)
            log(f"oracle: loaded {path}")
            return oracle
        except FacefactorsError as e:
            log(f"oracle: ignoring the cached file ({e}); retraining")
    oracle = _train(ds, cfg, fp, device, log)
    try:
        save_oracle(path, oracle)
        log(f"oracle: cached at {path}")
    except OSError as e:
        log(f"oracle: could not write the cache file {path} ({e}); continuing without caching")
    return oracle
