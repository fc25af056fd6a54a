"""Ablations: expand ``--vary key=a,b`` into config variants, train and evaluate each, and write
one table in the style of the papers' ablation tables (``ablation.md`` and ``ablation.html``).

One-at-a-time (the default) gives the base config plus one variant per varied value that
differs from the base; ``grid`` gives the cartesian product. A variant is named by what it
changes (``dis=0``, ``dis=0, hybrid=0``) and trains into ``<out>/<slug>``. A variant whose run
directory already holds an evaluated run is reused, one with checkpoints but no finished
training resumes, so an interrupted ablation picks up where it stopped.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from facefactors.config import RunConfig, build_dataclass, dump_config, load_config, parse_value
from facefactors.errors import FacefactorsError
from facefactors.eval.compare import (Row, best_indices, dataset_identity, figure, figures_of, read_json,
                                      read_train_summary)
from facefactors.io import write_json, write_text

MODES = ("one-at-a-time", "grid")
MISSING = object()
# settings that change neither the trained weights nor the measurements
NEUTRAL_KEYS = {"train.device", "train.progress", "train.log_every", "train.preview_every",
                "train.checkpoint_every", "train.keep_checkpoints", "train.num_threads"}


# ------------------------------------------------------------------------------ variants
@dataclass(frozen=True)
class Vary:
    """One ``--vary key=v1,v2``: the dotted key and the values as typed (parsed like overrides)."""

    key: str
    texts: tuple[str, ...]

    @property
    def values(self) -> tuple[Any, ...]:
        return tuple(parse_value(t) for t in self.texts)


def split_values(text: str) -> list[str]:
    """Split on commas outside brackets: ``0,[0.5,0.9],1`` -> ``0``, ``[0.5,0.9]``, ``1``."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_vary(item: str) -> Vary:
    """``"method.dis=0,1"`` -> ``Vary("method.dis", ("0", "1"))``; clear errors for malformed items."""
    if "=" not in item:
        raise FacefactorsError(f"--vary {item!r} is not of the form key=value1,value2 (e.g. method.dis=0,1)")
    key, values = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise FacefactorsError(f"--vary {item!r}: {key!r} is not a dotted config key (e.g. method.dis)")
    texts = split_values(values)
    if any(not t for t in texts):
        raise FacefactorsError(f"--vary {item!r}: empty value in {values!r}")
    return Vary(key, tuple(dict.fromkeys(texts)))


@dataclass(frozen=True)
class Variant:
    """A config variant: ``changes`` are the (key, value text) overrides that differ from the base."""

    name: str
    slug: str
    changes: tuple[tuple[str, str], ...] = ()

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={t}" for k, t in self.changes]

    @property
    def is_base(self) -> bool:
        return not self.changes


def same_value(a: Any, b: Any) -> bool:
    """Config values equal as settings (1 == 1.0, tuples == lists); ``MISSING`` equals nothing."""
    if a is MISSING or b is MISSING:
        return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def resolved_values(cfg: RunConfig) -> dict[str, Any]:
    """Every effective setting of a config, defaults filled in: the method's ``Params``, the
    ``EvalConfig`` and the dataset's generator defaults, so ``method.dis`` has a base value even
    when the YAML leaves it out."""
    from facefactors.eval.evaluate import EvalConfig
    from facefactors.methods import registry

    out = cfg.to_dict()
    out["data"] = {**dict(cfg.data), **dataset_identity(cfg.data)}
    try:
        cls = registry.get(cfg.model.method)
        out["method"] = dataclasses.asdict(build_dataclass(cls.Params, cfg.method, "method"))
    except FacefactorsError:
        pass
    try:
        out["eval"] = dataclasses.asdict(build_dataclass(EvalConfig, cfg.eval, "eval"))
    except FacefactorsError:
        pass
    return out


def lookup(tree: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted key, or ``MISSING``."""
    node: Any = tree
    for p in key.split("."):
        if not isinstance(node, Mapping) or p not in node:
            return MISSING
        node = node[p]
    return node


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", text) or "variant"


def _labels(keys: Sequence[str]) -> dict[str, str]:
    """Short key names for variant names: the last component unless two keys share it."""
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _variant(changes: Sequence[tuple[str, str]], labels: Mapping[str, str]) -> Variant:
    if not changes:
        return Variant("base", "base")
    parts = [f"{labels[k]}={t}" for k, t in changes]
    return Variant(", ".join(parts), _slug("_".join(parts)), tuple(changes))


def expand_variants(varies: Sequence[Vary], base: Mapping[str, Any], mode: str = "one-at-a-time"
                    ) -> list[Variant]:
    """The variants to train. ``base`` maps each varied key to its value in the base config
    (``MISSING`` if unknown, which counts as different from every value).

    one-at-a-time: the base, then for each key each value that differs from the base;
    grid: every combination of the values, named by the keys whose value differs from the base
    (the combination equal to the base is named ``base`` and listed first).
    """
    if mode not in MODES:
        raise FacefactorsError(f"unknown ablation mode {mode!r}; use {' or '.join(MODES)}")
    keys = [v.key for v in varies]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise FacefactorsError(f"--vary names {dup[0]!r} twice; give all its values in one --vary")
    labels = _labels(keys)
    if mode == "one-at-a-time":
        out = [_variant((), labels)]
        for v in varies:
            for text, value in zip(v.texts, v.values):
                if not same_value(value, base.get(v.key, MISSING)):
                    out.append(_variant([(v.key, text)], labels))
    else:
        out = []
        for combo in itertools.product(*[list(zip(v.texts, v.values)) for v in varies]):
            changes = [(v.key, text) for v, (text, value) in zip(varies, combo)
                       if not same_value(value, base.get(v.key, MISSING))]
            out.append(_variant(changes, labels))
        out.sort(key=lambda v: not v.is_base)
    unique: dict[str, Variant] = {}
    for v in out:
        unique.setdefault(v.slug, v)
    return list(unique.values())


# ------------------------------------------------------------------------------ one run
def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def config_differences(saved: Mapping[str, Any], cfg: RunConfig) -> list[tuple[str, Any, Any]]:
    """Settings (outside ``eval`` and the neutral train keys) where a run's saved config.yaml
    differs from ``cfg``: ``(dotted key, saved value, wanted value)``."""
    want = _flatten(yaml.safe_load(dump_config(cfg)))
    have = _flatten(saved)
    keys = list(dict.fromkeys([*want, *have]))
    return [(k, have.get(k, MISSING), want.get(k, MISSING)) for k in keys
            if k != "eval" and not k.startswith("eval.") and k not in NEUTRAL_KEYS
            and not same_value(have.get(k, MISSING), want.get(k, MISSING))]


def check_run_config(run_dir: str | Path, cfg: RunConfig) -> None:
    """Refuse to reuse a run directory whose config.yaml is another config (naming the first
    differing key); a directory without config.yaml is fine."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise FacefactorsError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    diff = config_differences(saved if isinstance(saved, dict) else {}, cfg)
    if diff:
        k, a, b = diff[0]
        show = (lambda v: "unset" if v is MISSING else repr(v))
        raise FacefactorsError(f"{run_dir} holds a run of another config ({k}: {show(a)} there, {show(b)} "
                               "wanted); delete it or choose another --out")


def _same_eval(metrics: Mapping[str, Any], cfg: RunConfig) -> bool:
    from facefactors.eval.evaluate import EvalConfig

    want = dataclasses.asdict(build_dataclass(EvalConfig, cfg.eval, "eval"))
    have = metrics.get("eval_config") or {}
    return all(same_value(have.get(k, MISSING), v) for k, v in want.items())


def train_and_evaluate(cfg: RunConfig, run_dir: str | Path, dataset=None, device: str = "cpu",
                       log: Callable[[str], None] = print, eval_log: Callable[[str], None] | None = None
                       ) -> tuple[dict, dict | None, str]:
    """Make sure ``run_dir`` holds ``cfg`` trained and evaluated; returns (metrics, train summary, state).

    state: "reused" (finished and evaluated with the same evaluation settings), "evaluated"
    (finished, evaluated now), "resumed" (checkpoints but unfinished: training continues) or
    "trained". A run directory holding another config is an error naming the first difference.
    """
    from facefactors.eval.evaluate import EvalConfig, evaluate
    from facefactors.runs import load_run
    from facefactors.train.checkpoint import list_checkpoints
    from facefactors.train.trainer import Trainer

    run_dir = Path(run_dir)
    saved_path = run_dir / "config.yaml"
    check_run_config(run_dir, cfg)
    finished = (run_dir / "train_summary.json").is_file()
    if finished and (run_dir / "metrics.json").is_file():
        metrics = read_json(run_dir / "metrics.json")
        if _same_eval(metrics, cfg):
            return metrics, read_train_summary(run_dir), "reused"
    if finished and list_checkpoints(run_dir):
        state = "evaluated"
        write_text(saved_path, dump_config(cfg))  # record the evaluation settings now used
    elif list_checkpoints(run_dir):
        state = "resumed"
        Trainer(cfg, run_dir, resume=True, dataset=dataset, log=log).fit()
    else:
        state = "trained"
        Trainer(cfg, run_dir, dataset=dataset, log=log).fit()
    run = load_run(run_dir, device=device, dataset=dataset)
    metrics = evaluate(run.model, run.dataset, run_dir, build_dataclass(EvalConfig, cfg.eval, "eval"),
                       device=device, log=eval_log if eval_log is not None else log)
    return metrics, read_train_summary(run_dir), state


class DatasetCache:
    """One dataset per distinct data setting, shared by the runs that use it."""

    def __init__(self):
        self._cache: dict[str, Any] = {}

    def get(self, spec: Mapping[str, Any]):
        from facefactors.data import make_dataset

        key = json.dumps(dataset_identity(spec), sort_keys=True, default=str)
        if key not in self._cache:
            self._cache[key] = make_dataset(spec)
        return self._cache[key]


# ------------------------------------------------------------------------------ the table
SHORT = {"psnr": "PSNR", "leak/linear": "max leak linear", "leak/mlp": "max leak MLP",
         "cf_mean/ratio_to_reconstruction": "CF ratio", "cf_mean/region_ratio_to_no_change": "CF region / no change",
         "mig": "MIG", "dci/disentanglement": "DCI-D"}


def short_label(key: str) -> str:
    if key in SHORT:
        return SHORT[key]
    parts = key.split("/")
    if parts[0] == "diag":
        return f"acc {parts[2]} ({parts[1]})"
    if parts[0] == "leak":
        return f"max leak {parts[1]}"
    return figure(key).label


def ablation_keys(measured: Sequence[Mapping[str, Any]]) -> list[str]:
    """Columns present in at least one result: PSNR, max leakage per probe, diagonal accuracies,
    mean counterfactual ratio, mean region ratio to no change, MIG, DCI-D."""
    present = list(dict.fromkeys(k for m in measured for k, v in m.items() if v is not None))
    probes = list(dict.fromkeys(k.split("/")[1] for k in present if k.startswith(("leak/", "diag/"))))
    probes.sort(key=lambda p: (p != "linear", p != "mlp", p))
    keys = ["psnr"] + [f"leak/{p}" for p in probes]
    keys += [k for p in probes for k in present if k.startswith(f"diag/{p}/")]
    keys += ["cf_mean/ratio_to_reconstruction", "cf_mean/region_ratio_to_no_change", "mig", "dci/disentanglement"]
    return [k for k in keys if k in present]


def ablation_columns(measured: Sequence[Mapping[str, Any]]) -> list[Row]:
    """One ``Row`` per column (values across variants, best marked), short labels."""
    cols = []
    for key in ablation_keys(measured):
        fig = dataclasses.replace(figure(key), label=short_label(key))
        values = [m.get(key) for m in measured]
        cols.append(Row(fig, values, [None] * len(values), best_indices(values, fig.better, fig.fmt)))
    return cols


def legend(columns: Sequence[Row]) -> list[tuple[str, str]]:
    out = []
    for c in columns:
        meaning = figure(c.figure.key).label
        if c.figure.key.startswith("leak/"):
            meaning += " (normalized, largest cell off the diagonal)"
        if c.figure.key.startswith("cf_mean/"):
            meaning += " (mean over the parts; 0 is perfect)"
        out.append((f"{c.figure.label} {c.figure.arrow}".strip(), meaning))
    return out


def markdown_table(names: Sequence[str], columns: Sequence[Row], status: Sequence[str | None] = ()) -> str:
    """Rows = variants, columns = figures, best per column in bold."""
    head = "| variant | " + " | ".join(f"{c.figure.label} {c.figure.arrow}".strip() for c in columns) + " |"
    lines = [head, "|---" + "|---:" * len(columns) + "|"]
    for i, name in enumerate(names):
        st = status[i] if i < len(status) else None
        cells = []
        for c in columns:
            text = st if st else c.figure.format(c.values[i])
            cells.append(f"**{text}**" if i in c.best and not st else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class VariantResult:
    variant: Variant
    run_dir: Path
    state: str = "pending"           # pending | reused | evaluated | resumed | trained | diverged
    metrics: dict | None = None
    train: dict | None = None
    note: str = ""                   # why a variant has no result (the divergence message)


@dataclass
class AblationResult:
    out_dir: Path
    results: list[VariantResult]
    markdown: Path
    html: Path
    table: str
    meta: list[tuple[str, str]] = field(default_factory=list)


def write_tables(out_dir: Path, results: Sequence[VariantResult], meta: Sequence[tuple[str, str]],
                 title: str) -> tuple[Path, Path, str]:
    """Write ``ablation.md``, ``ablation.html`` and ``ablation.json`` (unfinished variants: "pending");
    returns the two paths and the markdown table."""
    from facefactors.viz.compare_report import write_ablation_html

    measured = [figures_of(r.metrics, r.train)[0] if r.metrics else {} for r in results]
    columns = ablation_columns(measured)
    names = [r.variant.name for r in results]
    status = [None if r.metrics else r.state for r in results]
    table = markdown_table(names, columns, status)
    md = [f"# {title}", ""] + [f"- {k}: {v}" for k, v in meta] + ["", table, "",
                                                                   "Columns (best per column in bold):", ""]
    md += [f"- {label}: {meaning}" for label, meaning in legend(columns)]
    md += ["", "Variants:", ""] + [f"- {r.variant.name}: `{' '.join(r.variant.overrides) or '(base config)'}` "
                                   f"-> {r.run_dir}" + (f" ({r.note})" if r.note else "") for r in results]
    md_path, html_path = out_dir / "ablation.md", out_dir / "ablation.html"
    write_text(md_path, "\n".join(md) + "\n")
    details = [[r.variant.name, " ".join(r.variant.overrides) or "(base config)", str(r.run_dir),
                r.state + (f": {r.note}" if r.note else "")] for r in results]
    write_ablation_html(html_path, title, names, columns, status, details, legend(columns), meta)
    write_json(out_dir / "ablation.json", {
        "meta": dict(meta),
        "variants": [{"name": r.variant.name, "overrides": r.variant.overrides, "run_dir": str(r.run_dir),
                      "state": r.state, "note": r.note, "figures": m} for r, m in zip(results, measured)]})
    return md_path, html_path, table


def plan_ablation(config_path: str | Path, varies: Sequence[Vary], mode: str = "one-at-a-time",
                  overrides: Sequence[str] = ()) -> list[tuple[Variant, RunConfig]]:
    """Variants with their configs, every one checked (keys, types, method parameters,
    evaluation settings) before anything trains."""
    from facefactors.eval.evaluate import EvalConfig
    from facefactors.methods import registry

    base_cfg = load_config(config_path, list(overrides))
    base = resolved_values(base_cfg)
    variants = expand_variants(varies, {v.key: lookup(base, v.key) for v in varies}, mode)
    planned = []
    for v in variants:
        try:
            cfg = load_config(config_path, [*overrides, *v.overrides])
            build_dataclass(registry.get(cfg.model.method).Params, cfg.method, "method")
            build_dataclass(EvalConfig, cfg.eval, "eval")
        except FacefactorsError as e:
            raise FacefactorsError(f"variant {v.name}: {e}") from None
        planned.append((v, cfg))
    return planned


def run_ablation(config_path: str | Path, varies: Sequence[Vary], mode: str = "one-at-a-time",
                 out_dir: str | Path | None = None, overrides: Sequence[str] = (), device: str = "cpu",
                 command: str | None = None, log: Callable[[str], None] = print,
                 eval_log: Callable[[str], None] | None = None) -> AblationResult:
    """Train and evaluate every variant (reusing finished runs), writing the tables after each.
    A variant whose training diverges is recorded as such and the others still run."""
    from facefactors.train.trainer import TrainingDiverged

    if not varies:
        raise FacefactorsError("ablate needs at least one --vary key=value1,value2")
    planned = plan_ablation(config_path, varies, mode, overrides)
    out_dir = Path(out_dir) if out_dir else Path("runs") / f"ablate_{Path(config_path).stem}"
    results = [VariantResult(v, out_dir / v.slug) for v, _ in planned]
    meta = [("base config", str(config_path)), ("overrides", " ".join(overrides) or "none"), ("mode", mode),
            ("varied", "; ".join(f"{v.key} in {{{', '.join(v.texts)}}}" for v in varies)),
            ("date", dt.date.today().isoformat())]
    if command:
        meta.insert(0, ("command", command))
    title = f"Ablation of {Path(config_path).name}"
    for res, (_, cfg) in zip(results, planned):   # before anything is written or trained
        check_run_config(res.run_dir, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tables(out_dir, results, meta, title)
    datasets = DatasetCache()
    for i, (res, (variant, cfg)) in enumerate(zip(results, planned)):
        log(f"ablate: variant {i + 1}/{len(results)} {variant.name!r} -> {res.run_dir}")
        try:
            res.metrics, res.train, res.state = train_and_evaluate(cfg, res.run_dir, datasets.get(cfg.data),
                                                                   device, log, eval_log)
        except TrainingDiverged as e:
            res.state, res.note = "diverged", str(e)
        log(f"ablate: {variant.name!r} {res.state}" + (f" ({res.note})" if res.note else ""))
        write_tables(out_dir, results, meta, title)
    md, html, table = write_tables(out_dir, results, meta, title)
    return AblationResult(out_dir, results, md, html, table, meta)
