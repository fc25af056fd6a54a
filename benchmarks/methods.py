"""Leaderboard: every registered method on SynthFaces-64 at one fixed training budget.

    python benchmarks/methods.py [--budget-min 30] [--methods autoencoder,d2ae] [--out runs/bench/methods] \
        [key=value ...]

Each method trains from its own ``configs/<method>_synthfaces.yaml`` (or the config named in
``HEADLINE_CONFIGS``; methods without one are skipped, and the output says so) with
``train.time_budget_min`` set to the budget (the config's ``train.steps`` stays a cap, so step-based schedules keep their meaning), then goes through the
common evaluation. Finished runs under ``--out`` are reused and unfinished ones resume, so an
interrupted benchmark continues. Writes ``benchmarks/results/leaderboard.json``, a comparison page
``<out>/comparison.html`` of all methods, and prints the markdown leaderboard for BENCHMARKS.md
(method, budget, images/s, PSNR, max normalized leakage linear/MLP, mean counterfactual ratio,
MIG, DCI-D) with the command, machine and date.

``--from-results`` trains nothing: it reads each method's recorded benchmark
(``benchmarks/results/<config name>.json``, written by ``train_and_evaluate.py`` with the
config's own fixed budget), tabulates those, and builds the comparison page from their run
directories, leaving out (and naming) runs whose dataset differs from the first one's.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_and_evaluate import machine  # noqa: E402  (the single-config driver's machine line)

from facefactors.eval.compare import best_indices, figure, figures_of  # noqa: E402

COLUMNS = (("images_per_s", "images/s"), ("psnr", "PSNR (dB)"), ("leak/linear", "max leak linear"),
           ("leak/mlp", "max leak MLP"), ("cf_mean/ratio_to_reconstruction", "mean CF ratio"),
           ("mig", "MIG"), ("dci/disentanglement", "DCI-D"))


# Methods whose SynthFaces-64 headline config is not ``<method>_synthfaces.yaml``, and recorded
# results not named after their config.
HEADLINE_CONFIGS = {
    "compact_embeddings": "compact_embeddings_synthfaces_J.yaml",               # J: the paper's preferred mode
    "adversarial_attributes": "adversarial_attributes_synthfaces_carry.yaml",   # the demo's settings
    "cycle_vae": "cycle_vae_synthfaces_pruned.yaml",                            # z's low-SNR units pruned in training
}
RESULT_NAMES = {"autoencoder_synthfaces": "ae_baseline"}


def method_configs(methods: Sequence[str], configs_dir: str | Path = ROOT / "configs"
                   ) -> tuple[list[tuple[str, Path]], list[str]]:
    """``(method, its SynthFaces-64 headline config)`` for methods that have one; the others."""
    found, skipped = [], []
    for m in methods:
        path = Path(configs_dir) / HEADLINE_CONFIGS.get(m, f"{m}_synthfaces.yaml")
        (found.append((m, path)) if path.is_file() else skipped.append(m))
    return found, skipped


def leaderboard_markdown(entries: Sequence[Mapping[str, Any]], command: str, machine_line: str, date: str,
                         skipped: Sequence[str] = ()) -> str:
    """The leaderboard table for BENCHMARKS.md, best per column in bold.

    ``entries``: dicts with ``method``, ``budget_min`` and ``figures`` (flat figures from
    ``eval.compare.figures_of``; missing ones print as n/a).
    """
    figs = [e.get("figures") or {} for e in entries]
    cols = []
    for key, label in COLUMNS:
        fig = figure(key)
        values = [f.get(key) for f in figs]
        cols.append((label + (f" {fig.arrow}" if fig.arrow else ""), fig, values,
                     best_indices(values, fig.better, fig.fmt)))
    lines = [f"Command: `{command}`  ", f"Machine: {machine_line}  ", f"Date: {date}", "",
             "| method | budget | " + " | ".join(c[0] for c in cols) + " |",
             "|---|---:" + "|---:" * len(cols) + "|"]
    for i, e in enumerate(entries):
        cells = []
        for _, fig, values, best in cols:
            text = fig.format(values[i])
            cells.append(f"**{text}**" if i in best else text)
        budget = e.get("budget_min")
        budget_text = "n/a" if budget is None else f"{budget:g} min" + (f", {e['compute']}" if e.get("compute") else "")
        lines.append(f"| {e['method']} | {budget_text} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Leakage: largest normalized off-diagonal probe accuracy (0 = chance, 1 = fully readable); "
              "mean CF ratio: counterfactual transfer error over reconstruction error, mean over the parts "
              "(1 = as good as reconstruction); best per column in bold."]
    if skipped:
        lines.append(f"Not benchmarked (no configs/<method>_synthfaces.yaml): {', '.join(skipped)}.")
    return "\n".join(lines)


def benchmark_method(method: str, config: Path, budget_min: float, out_dir: Path, overrides: Sequence[str],
                     datasets, device: str) -> dict[str, Any]:
    """Train (or reuse) and evaluate one method; returns its leaderboard entry."""
    from facefactors.config import load_config
    from facefactors.eval.ablation import train_and_evaluate
    from facefactors.eval.evaluate import headline

    cfg = load_config(config, [*overrides, f"train.time_budget_min={budget_min}"])
    run_dir = out_dir / method
    metrics, train, state = train_and_evaluate(cfg, run_dir, datasets.get(cfg.data), device)
    values, notes = figures_of(metrics, train)
    return {"method": method, "config": str(config), "budget_min": budget_min, "run_dir": str(run_dir),
            "state": state, "train": train, "figures": values, "notes": notes, "headline": headline(metrics)}


def recorded_entry(method: str, config: Path, results_dir: Path, name: str | None = None) -> dict[str, Any] | None:
    """The leaderboard entry of a method's recorded benchmark result (``name``, by default the
    config's), or None if there is none."""
    import json
    import re

    path = results_dir / f"{name or RESULT_NAMES.get(config.stem, config.stem)}.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    values, notes = figures_of(result["metrics"], result["train"])
    out = re.search(r"--out\s+(\S+)", result.get("command", ""))
    threads = re.search(r"(\d+) threads?", result.get("machine", ""))

    def shown(p: Path) -> str:
        return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)

    return {"method": method, "config": shown(config),
            "budget_min": round(result["train"]["train_seconds"] / 60), "result": shown(path),
            "compute": f"{threads.group(1)} thr." if threads else None, "run_dir": out.group(1) if out else None,
            "overrides": result.get("overrides") or [], "date": result.get("date"), "figures": values, "notes": notes}


def comparable_runs(entries: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """Run directories (that exist) on the first one's dataset, and notes on the ones left out."""
    from facefactors.eval.compare import dataset_differences, read_data_spec

    keep, notes, ref = [], [], None
    for e in entries:
        run = e.get("run_dir")
        if not run or not (Path(run) / "metrics.json").is_file():
            notes.append(f"{e['method']}: run directory {run} not on this machine")
            continue
        spec = read_data_spec(Path(run))
        if ref is None:
            ref = spec
        diff = dataset_differences(ref, spec)
        if diff:
            notes.append(f"{e['method']}: other data ({', '.join(f'data.{k} {b!r} vs {a!r}' for k, a, b in diff)})")
            continue
        keep.append(run)
    return keep, notes


def main(argv: list[str] | None = None) -> int:
    from facefactors.config import load_config
    from facefactors.eval.ablation import DatasetCache
    from facefactors.eval.compare import build_comparison
    from facefactors.io import write_json
    from facefactors.methods import registry
    from facefactors.runs import resolve_device

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to every method's config")
    ap.add_argument("--budget-min", type=float, default=30.0, help="training minutes per method")
    ap.add_argument("--methods", help="comma-separated methods (default: every registered one)")
    ap.add_argument("--out", default="runs/bench/methods", help="folder for the runs")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "leaderboard.json"))
    ap.add_argument("--device", default="auto", help="evaluation device (training uses train.device)")
    ap.add_argument("--from-results", action="store_true",
                    help="tabulate the recorded benchmark results instead of training")
    ap.add_argument("--result", action="append", default=[], metavar="METHOD=NAME",
                    help="with --from-results: use benchmarks/results/NAME.json for METHOD")
    args = ap.parse_intermixed_args(argv)
    available = registry.available()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else list(available)
    unknown = [m for m in methods if m not in available]
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(available)}")
    todo, skipped = method_configs(methods)
    for m in skipped:
        print(f"skipping {m}: no configs/{HEADLINE_CONFIGS.get(m, f'{m}_synthfaces.yaml')}", flush=True)
    device = str(resolve_device(args.device))
    out_dir = Path(args.out)
    command = "python " + " ".join([sys.argv[0] if argv is None else "benchmarks/methods.py",
                                    *(sys.argv[1:] if argv is None else argv)])
    if args.from_results:
        names = dict(item.split("=", 1) for item in args.result)
        return from_results(todo, skipped, command, out_dir, device, Path(args.results), names)
    datasets = DatasetCache()
    entries = []
    for method, config in todo:
        print(f"== {method} ({config}, {args.budget_min:g} min)", flush=True)
        entries.append(benchmark_method(method, config, args.budget_min, out_dir, args.overrides, datasets, device))
    result = {"command": command, "machine": machine(), "date": dt.date.today().isoformat(),
              "budget_min": args.budget_min, "entries": entries, "skipped": skipped}
    write_json(args.results, result)
    if len(entries) > 1:
        page = build_comparison([e["run_dir"] for e in entries], out_dir / "comparison.html", device=device,
                                dataset=datasets.get(load_config(todo[0][1], args.overrides).data))
        print(f"comparison: {page}")
    print(leaderboard_markdown(entries, command, result["machine"], result["date"], skipped))
    return 0


def from_results(todo, skipped, command: str, out_dir: Path, device: str, results_path: Path,
                 names: Mapping[str, str]) -> int:
    """The leaderboard of the recorded benchmarks, and the comparison page of those on one dataset."""
    from facefactors.eval.compare import build_comparison
    from facefactors.io import write_json

    entries, missing = [], []
    for method, config in todo:
        entry = recorded_entry(method, config, ROOT / "benchmarks" / "results", names.get(method))
        (entries.append(entry) if entry else missing.append(method))
    for m in missing:
        print(f"skipping {m}: no recorded result benchmarks/results/<its config>.json", flush=True)
    runs, notes = comparable_runs(entries)
    page = None
    if len(runs) > 1:
        page = build_comparison(runs, out_dir / "comparison.html", device=device)
        print(f"comparison: {page}")
    dates = sorted({e["date"] for e in entries if e.get("date")})
    machine_line = "as recorded per result (2-core CPU; thr. = torch threads: 1 where two runs shared the machine)"
    md = leaderboard_markdown(entries, command, machine_line, ", ".join(dates), skipped)
    if missing:
        md += f"\nNo recorded benchmark yet: {', '.join(missing)}."
    md += "".join(f"\nNot on the comparison page: {n}." for n in notes)
    write_json(results_path, {"command": command, "from_results": True, "entries": entries, "skipped": skipped,
                              "missing": missing, "comparison": str(page) if page else None, "left_out": notes})
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
