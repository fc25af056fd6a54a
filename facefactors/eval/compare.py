"""Cross-run comparison: headline figures side by side, best per row, dataset compatibility.

The pure part reads what ``evaluate`` wrote (``metrics.json``, ``train_summary.json``,
``config.yaml``) and turns it into flat figures keyed like ``psnr``, ``leak/mlp``,
``diag/mlp/identity``, ``cf_mean/ratio_to_reconstruction``, ``mig`` or ``dci/disentanglement``;
the comparison, ablation and leaderboard tables are all built from them. Keys a run's
metrics lack (an older run without MIG) are simply absent. ``build_comparison`` at the end
is the driver behind ``facefactors compare``: it loads the runs, draws the same seeded test
images through each of them and writes the self-contained HTML page.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from facefactors.errors import FacefactorsError

CF_KEYS = ("ratio_to_reconstruction", "ratio_to_no_change",
           "region_ratio_to_reconstruction", "region_ratio_to_no_change")
CF_LABELS = {"ratio_to_reconstruction": "ratio to reconstruction",
             "ratio_to_no_change": "ratio to no change",
             "region_ratio_to_reconstruction": "region ratio to reconstruction",
             "region_ratio_to_no_change": "region ratio to no change"}
DCI_KEYS = ("disentanglement", "completeness", "informativeness")
# evaluation settings that decide which test images, probes and pairs a metric saw
SAMPLE_SETTINGS = ("seed", "max_train", "max_test", "n_pairs", "probes", "mlp_hidden")


# ------------------------------------------------------------------------------ figures
@dataclass(frozen=True)
class Figure:
    """How to show and rank one flat figure: ``better`` is "higher", "lower" or None (not ranked)."""

    key: str
    label: str
    better: str | None = None
    fmt: str = "{:.3f}"

    def format(self, value: Any) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, (int, float)):
            return self.fmt.format(value)
        return str(value)

    @property
    def arrow(self) -> str:
        return {"higher": "↑", "lower": "↓"}.get(self.better or "", "")


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    return float(v)


def figures_of(metrics: Mapping[str, Any], train: Mapping[str, Any] | None = None
               ) -> tuple[dict[str, float | None], dict[str, str]]:
    """Flat figures of one run from its metrics.json (and train_summary.json) dicts.

    Returns ``(values, notes)``: ``notes[key]`` says where a maximum was found, e.g. the part
    and attribute of the largest leak. Uses ``evaluate.headline`` for the core figures and
    adds MIG / DCI / SAP and training speed when present.
    """
    from facefactors.eval.evaluate import headline

    h = headline(metrics)
    values: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    for key in ("psnr", "mse", "ssim"):
        if h.get(key) is not None:
            values[key] = _number(h[key])
    for prefix, field in (("leak", "max_offdiag_leakage"), ("leak_unlinked", "max_offdiag_leakage_unlinked")):
        for kind, best in (h.get(field) or {}).items():
            values[f"{prefix}/{kind}"] = _number(best["value"]) if best else None
            if best:
                notes[f"{prefix}/{kind}"] = f"{best['part']} → {best['attribute']}"
    for kind, diag in (h.get("diagonal_accuracy") or {}).items():
        for attr, acc in diag.items():
            values[f"diag/{kind}/{attr}"] = _number(acc)
    cf = h.get("counterfactual") or {}
    for k in CF_KEYS:
        got = [_number(r.get(k)) for r in cf.values()]
        got = [v for v in got if v is not None]
        if cf:
            values[f"cf_mean/{k}"] = float(np.mean(got)) if got else None
    for part, r in cf.items():
        for k in CF_KEYS:
            values[f"cf/{part}/{k}"] = _number(r.get(k))
    for key in ("mig", "sap"):
        if key in metrics:
            values[key] = _number(metrics[key])
    dci = metrics.get("dci")
    if isinstance(dci, Mapping):
        for k in DCI_KEYS:
            if k in dci:
                values[f"dci/{k}"] = _number(dci[k])
    if train:
        if train.get("images_per_s") is not None:
            values["images_per_s"] = _number(train["images_per_s"])
        if train.get("step") is not None:
            values["steps"] = _number(train["step"])
        if train.get("train_seconds") is not None:
            values["train_minutes"] = _number(train["train_seconds"] / 60.0)
    return values, notes


_ORDER = ("psnr", "mse", "ssim", "leak/", "leak_unlinked/", "diag/", "cf_mean/", "mig", "dci/", "sap",
          "images_per_s", "steps", "train_minutes", "cf/")


def figure(key: str) -> Figure:
    """Label, direction and number format of a flat figure key."""
    parts = key.split("/")
    head = parts[0]
    if key == "psnr":
        return Figure(key, "PSNR (dB)", "higher", "{:.2f}")
    if key == "mse":
        return Figure(key, "MSE", "lower", "{:.5f}")
    if key == "ssim":
        return Figure(key, "SSIM", "higher")
    if head == "leak":
        return Figure(key, f"max off-diagonal leakage, {parts[1]} probe", "lower")
    if head == "leak_unlinked":
        return Figure(key, f"max leakage excl. identity-linked, {parts[1]} probe", "lower")
    if head == "diag":
        return Figure(key, f"diagonal accuracy {parts[2]}, {parts[1]} probe", "higher")
    if head == "cf_mean":
        return Figure(key, f"mean counterfactual {CF_LABELS.get(parts[1], parts[1])}", "lower")
    if head == "cf":
        return Figure(key, f"counterfactual {parts[1]}: {CF_LABELS.get(parts[2], parts[2])}", "lower")
    if key in ("mig", "sap"):
        return Figure(key, key.upper(), "higher")
    if head == "dci":
        return Figure(key, f"DCI {parts[1]}", "higher")
    if key == "images_per_s":
        return Figure(key, "training images/s", "higher", "{:.0f}")
    if key == "steps":
        return Figure(key, "training steps", None, "{:.0f}")
    if key == "train_minutes":
        return Figure(key, "training minutes", None, "{:.1f}")
    return Figure(key, key, None)


def ordered_keys(keys: Sequence[str]) -> list[str]:
    """Figure keys in report order (reconstruction, leakage, diagonal, counterfactual, MIG/DCI/SAP,
    speed); within a group, first appearance."""
    def rank(k: str) -> int:
        for i, p in enumerate(_ORDER):
            if k == p or (p.endswith("/") and k.startswith(p)):
                return i
        return len(_ORDER)
    seen = list(dict.fromkeys(keys))
    return sorted(seen, key=lambda k: (rank(k), seen.index(k)))


def best_indices(values: Sequence[float | None], better: str | None, fmt: str | None = None) -> set[int]:
    """Positions of the best value(s): ties all count; nothing is marked when fewer than two
    values are known, when ``better`` is None, or when every known value is the same. With
    ``fmt`` values compare as displayed (``"{:.2f}"``: 1.001 and 1.004 tie)."""
    known = [(i, float(fmt.format(v)) if fmt else v) for i, v in enumerate(values) if v is not None]
    if better not in ("higher", "lower") or len(known) < 2:
        return set()
    target = max(v for _, v in known) if better == "higher" else min(v for _, v in known)
    best = {i for i, v in known if math.isclose(v, target, rel_tol=1e-9, abs_tol=1e-12)}
    return set() if len(best) == len(known) else best


@dataclass
class Row:
    """One figure across runs (compare) or one column across variants (ablation)."""

    figure: Figure
    values: list[float | None]
    notes: list[str | None]
    best: set[int]


def figure_rows(measured: Sequence[tuple[Mapping[str, float | None], Mapping[str, str]]],
                keys: Sequence[str] | None = None, drop_empty: bool = True) -> list[Row]:
    """Rows for ``keys`` (default: every key any run has, in report order) with the best marked."""
    if keys is None:
        keys = ordered_keys([k for values, _ in measured for k in values])
    rows = []
    for key in keys:
        vals = [values.get(key) for values, _ in measured]
        if drop_empty and all(v is None for v in vals):
            continue
        fig = figure(key)
        rows.append(Row(fig, vals, [notes.get(key) for _, notes in measured],
                        best_indices(vals, fig.better, fig.fmt)))
    return rows


def headline_keys(keys: Sequence[str]) -> list[str]:
    """The summary figures of the comparison's main table (per-part counterfactual rows excluded)."""
    return [k for k in ordered_keys(keys) if not k.startswith("cf/")]


def counterfactual_keys(keys: Sequence[str]) -> list[str]:
    return [k for k in ordered_keys(keys) if k.startswith("cf/")]


# ------------------------------------------------------------------------------ runs on disk
def run_names(run_dirs: Sequence[str | Path]) -> list[str]:
    """Short display names: the folder names, or the paths as given where folder names repeat."""
    names = [Path(r).name or str(r) for r in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [str(r) for r in run_dirs]


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FacefactorsError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise FacefactorsError(f"{path} does not hold a JSON object")
    return data


def read_metrics(run_dir: str | Path) -> dict:
    """A run's metrics.json; a clear error naming the run when it was never evaluated."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise FacefactorsError(f"run {run_dir} has not been evaluated (no metrics.json); run "
                               f"`facefactors evaluate {run_dir}` first, or pass --evaluate")
    return read_json(path)


def read_train_summary(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / "train_summary.json"
    return read_json(path) if path.is_file() else None


def read_data_spec(run_dir: str | Path) -> dict:
    """The ``data`` section of a run's resolved config.yaml."""
    from facefactors.config import load_yaml
    from facefactors.runs import run_config_path

    path = run_config_path(run_dir)
    data = load_yaml(path).get("data")
    if not isinstance(data, dict):
        raise FacefactorsError(f"{path} has no data section")
    return data


def _typed(value: Any, default: Any) -> Any:
    """``value`` in the type of its default (YAML may give 64 or 64.0 or '1e-4')."""
    if value is None:
        return default
    try:
        if isinstance(default, bool):
            return bool(value)
        if isinstance(default, int):
            return int(float(value))
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        pass
    return value


def dataset_identity(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that decide a dataset's images, labels and splits, defaults filled in.

    Keys that do not change the data are dropped (identity counts for digits, ``channels``
    for SynthFaces, which is always RGB); a saved SynthFaces directory (``path``) stands for the
    generator settings in its meta.json, so it matches a run that generated the same faces.
    """
    spec = dict(spec)
    name = spec.get("name")
    if name == "digits":
        from facefactors.data.digits import load_digits_dataset

        defaults = {k: p.default for k, p in inspect.signature(load_digits_dataset).parameters.items()}
        return {"name": "digits", **{k: _typed(spec.get(k), d) for k, d in defaults.items()}}
    if name == "synthfaces":
        from facefactors.data.synthfaces import SynthFacesConfig

        defaults = dataclasses.asdict(SynthFacesConfig())
        if spec.get("path"):
            meta_path = Path(spec["path"]) / "meta.json"
            try:
                saved = json.loads(meta_path.read_text(encoding="utf-8"))["config"]
                spec = {**{k: v for k, v in saved.items() if k in defaults}, "size": spec.get("size")
                        or saved.get("size")}
            except (OSError, KeyError, TypeError, ValueError):
                return {"name": "synthfaces", "path": str(Path(spec["path"]).resolve()), "size": spec.get("size")}
        return {"name": "synthfaces", **{k: _typed(spec.get(k), d) for k, d in defaults.items()}}
    return spec


def dataset_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, a's value, b's value)`` for every data setting that differs (after normalising)."""
    ia, ib = dataset_identity(a), dataset_identity(b)
    keys = list(dict.fromkeys([*ia, *ib]))
    if ia.get("name") != ib.get("name"):
        keys = ["name"]
    return [(k, ia.get(k), ib.get(k)) for k in keys if ia.get(k) != ib.get(k)]


def check_same_dataset(specs: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse runs trained on different data: the error names both runs and the differing keys."""
    items = list(specs.items())
    if not items:
        return
    first, ref = items[0]
    for name, spec in items[1:]:
        diff = dataset_differences(ref, spec)
        if diff:
            what = ", ".join(f"data.{k}: {va!r} vs {vb!r}" for k, va, vb in diff)
            raise FacefactorsError(f"cannot compare {first} and {name}: they use different datasets ({what}); "
                                   "a comparison needs the same test images for every run")


def eval_setting_warnings(metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Evaluation settings that differ between runs (their metrics saw different samples)."""
    items = list(metrics.items())
    out = []
    for key in SAMPLE_SETTINGS:
        seen = {}
        for name, m in items:
            cfg = m.get("eval_config") or {}
            if key in cfg:
                v = cfg[key]
                seen[name] = tuple(v) if isinstance(v, list) else v
        if len(set(seen.values())) > 1:
            out.append(f"evaluation setting {key!r} differs: "
                       + ", ".join(f"{n} {v!r}" for n, v in seen.items())
                       + "; re-evaluate with the same settings for a like-for-like comparison")
    return out


def common_parts(metrics: Sequence[Mapping[str, Any]]) -> list[str]:
    """Latent parts every run has (in the first run's order), ``rest`` last."""
    if not metrics:
        return []
    parts = [p for p in (metrics[0].get("parts") or {}) if all(p in (m.get("parts") or {}) for m in metrics)]
    return [p for p in parts if p != "rest"] + [p for p in parts if p == "rest"]


# ------------------------------------------------------------------------------ the driver
def pick_images(test_indices: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded sources and donors from the test split: every run sees the same ones."""
    test_indices = np.asarray(test_indices, dtype=np.int64)
    if len(test_indices) == 0:
        raise FacefactorsError("the dataset has no test images to draw swap grids from")
    k = max(1, min(k, len(test_indices) // 2 or 1))
    rng = np.random.default_rng([seed, 2])
    sel = rng.choice(test_indices, size=min(2 * k, len(test_indices)), replace=False)
    return sel[:k], (sel[k:2 * k] if len(sel) >= 2 * k else sel[:k])


def _evaluate_run(run_dir: Path, dataset, device: str, log: Callable[[str], None]) -> dict:
    from facefactors.config import build_dataclass
    from facefactors.eval.evaluate import EvalConfig, evaluate
    from facefactors.runs import load_run

    run = load_run(run_dir, device=device, dataset=dataset)
    cfg = build_dataclass(EvalConfig, dict(run.config.eval), "eval")
    return evaluate(run.model, run.dataset, run.run_dir, cfg, device=device, log=log)


def build_comparison(run_dirs: Sequence[str | Path], output: str | Path, evaluate_missing: bool = False,
                     parts: Sequence[str] | None = None, grid_size: int = 4, seed: int = 0, device: str = "cpu",
                     log: Callable[[str], None] = print, dataset=None) -> Path:
    """Compare runs on one page: headline table (best per row marked), counterfactual table,
    one leakage heatmap per run and the same swap grid (same test images and donors) per run.

    Refuses runs on different datasets; runs without metrics.json are an error unless
    ``evaluate_missing``. ``dataset`` skips rebuilding the (shared) dataset. Writes ``output``
    (self-contained HTML) atomically and returns it.
    """
    from facefactors.data import make_dataset
    from facefactors.runs import load_run
    from facefactors.viz.compare_report import array_png, leakage_png, write_comparison
    from facefactors.viz.grids import swap_grid

    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise FacefactorsError("compare needs at least one run directory")
    if len({r.resolve() for r in run_dirs}) != len(run_dirs):
        raise FacefactorsError("the same run directory is given twice")
    names = run_names(run_dirs)
    specs = {str(r): read_data_spec(r) for r in run_dirs}
    check_same_dataset(specs)
    missing = [r for r in run_dirs if not (r / "metrics.json").is_file()]
    if missing and not evaluate_missing:
        read_metrics(missing[0])  # raises the error naming the run
    # Derived labels (ifcvae_gan's smile) change no image: the shared dataset carries every run's.
    derived = list(dict.fromkeys(d for spec in specs.values() for d in (spec.get("derived") or [])))
    if dataset is not None and any(d not in dataset.attributes for d in derived):
        dataset = None
    if dataset is None:
        log(f"compare: building the dataset of {names[0]}")
        dataset = make_dataset({**specs[str(run_dirs[0])], **({"derived": derived} if derived else {})})
    for r in missing:
        log(f"compare: evaluating {r}")
        _evaluate_run(r, dataset, device, log)
    metrics = [read_metrics(r) for r in run_dirs]
    trains = [read_train_summary(r) for r in run_dirs]
    measured = [figures_of(m, t) for m, t in zip(metrics, trains)]
    all_keys = [k for values, _ in measured for k in values]
    headline_rows = figure_rows(measured, headline_keys(all_keys))
    cf_rows = figure_rows(measured, counterfactual_keys(all_keys))
    warnings = eval_setting_warnings(dict(zip(names, metrics)))

    shared = common_parts(metrics)
    known = list(dict.fromkeys(p for m in metrics for p in (m.get("parts") or {})))
    unknown = [p for p in (parts or ()) if p not in known]
    if unknown:
        raise FacefactorsError(f"unknown latent part {unknown[0]!r}; the runs' parts: {', '.join(known)}")
    parts = list(parts) if parts else shared
    src, don = pick_images(dataset.split("test"), grid_size, seed)
    swaps: dict[str, dict[str, bytes | None]] = {p: {} for p in parts}
    leak: dict[str, bytes | None] = {}
    for name, r, m in zip(names, run_dirs, metrics):
        leak[name] = leakage_png(m["leakage"], title=name) if m.get("leakage") else None
        log(f"compare: swap grids of {name}")
        run = load_run(r, device=device, dataset=dataset)
        for p in parts:
            if p not in run.model.part_names:
                swaps[p][name] = None
                continue
            grid = swap_grid(run.model, dataset.images[src], dataset.images[don], p, device=device)
            swaps[p][name] = array_png(grid, dataset.image_size)
        del run
    info = [{"run": name, "path": str(r), "method": m.get("method", ""),
             "parts": ", ".join(f"{p} ({d})" for p, d in (m.get("parts") or {}).items()),
             "steps": "n/a" if not t else str(t.get("step")),
             "eval": ", ".join(f"{k}={(m.get('eval_config') or {}).get(k)}" for k in SAMPLE_SETTINGS
                               if k in (m.get("eval_config") or {}))}
            for name, r, m, t in zip(names, run_dirs, metrics, trains)]
    ds_desc = metrics[0].get("dataset") or {"name": dataset.name}
    return write_comparison(output, names, info, ds_desc, headline_rows, cf_rows, leak, swaps, warnings,
                            n_images=(len(src), len(don)))
