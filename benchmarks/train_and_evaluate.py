"""Benchmark one config: train it (with its fixed budget), evaluate it, and write the figures.

    python benchmarks/train_and_evaluate.py configs/autoencoder_synthfaces.yaml --out runs/bench/ae [key=value ...]

Writes ``benchmarks/results/<run name>.json`` (headline metrics, training speed, machine,
date, command) and prints a markdown block ready for BENCHMARKS.md;
``python benchmarks/train_and_evaluate.py --markdown RESULT.json`` prints it again;
``--reevaluate`` skips training and evaluates the trained run in ``--out`` again with the
current evaluation code (its training summary is kept).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from facefactors.config import build_dataclass, load_config
from facefactors.eval.evaluate import EvalConfig, evaluate, headline, spearman_text
from facefactors.io import write_json
from facefactors.runs import load_run
from facefactors.train.trainer import Trainer


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} cores ({cpu}){gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def leakage_table(metrics: dict, kind: str) -> str:
    leak = metrics["leakage"][kind]
    attrs = list(next(iter(leak.values())))
    lines = ["| part \\ attribute | " + " | ".join(attrs) + " |", "|---" * (len(attrs) + 1) + "|"]
    for part, row in leak.items():
        cells = []
        for a in attrs:
            v = row.get(a)
            txt = "" if v is None else f"{v['normalized']:.2f}"
            cells.append(f"**{txt}**" if a == part else txt)
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    m, h = result["metrics"], result["headline"]
    t = result["train"]
    out = [f"Command: `{result['command']}`  ", f"Machine: {result['machine']}  ", f"Date: {result['date']}", "",
           f"- training: {t['step']} steps ({t['stopped']}), {t['images_per_s']:.0f} images/s, "
           f"{t['train_seconds'] / 60:.1f} min",
           f"- reconstruction (test): PSNR {h['psnr']:.2f} dB, MSE {h['mse']:.5f}, SSIM {h['ssim']:.3f}"]
    for kind, best in h["max_offdiag_leakage"].items():
        diag = ", ".join(f"{a} {v:.3f}" for a, v in h["diagonal_accuracy"][kind].items())
        out.append(f"- {kind} probe: diagonal accuracy {diag}; max off-diagonal normalized leakage "
                   f"{best['value']:.2f} ({best['part']} -> {best['attribute']})")
    if h["counterfactual"]:
        out += ["", "| counterfactual part | ratio to rec. | ratio to no change | region ratio to rec. | "
                "region ratio to no change |", "|---|---|---|---|---|"]
        for part, r in h["counterfactual"].items():
            out.append(f"| {part} | {r['ratio_to_reconstruction']:.2f} | {r['ratio_to_no_change']:.2f} | "
                       f"{r['region_ratio_to_reconstruction']:.2f} | {r['region_ratio_to_no_change']:.2f} |")
    readback = [(p, r) for p, r in h["counterfactual"].items() if r.get("label_from_donor") is not None
                or r.get("spearman_donor")]
    if readback:
        out.append("")
        for part, r in readback:
            rho = spearman_text(r, lambda v: "n/a" if v is None else f"{v:.2f}")
            lfd = r.get("label_from_donor")
            out.append(f"- {part} transfers read back by the oracle: donor's label "
                       f"{'n/a' if lfd is None else f'{lfd:.2f}'}" + (f"; Spearman with the donor's {rho}" if rho else ""))
    if h.get("mig") is not None or h.get("dci_disentanglement") is not None:
        dci = m.get("dci") or {}
        out.append(f"- MIG {h.get('mig') or 0:.3f}; DCI disentanglement {dci.get('disentanglement') or 0:.3f}, "
                   f"completeness {dci.get('completeness') or 0:.3f}, informativeness "
                   f"{dci.get('informativeness') or 0:.3f}; SAP {m.get('sap') or 0:.3f}")
    switch = (m.get("switch_edits") or {}).get("attributes") or {}
    for attr, r in switch.items():
        targets = ", ".join(f"-> {v} {t['success_rate']:.2f} (n {t['n']}, unedited {t['unedited_rate']:.2f})"
                            for v, t in r["targets"].items())
        out.append(f"- switch edit {attr}: success {targets}; mean {r['mean_success_rate']:.2f}")
    if m.get("identity"):
        from facefactors.eval.identity import identity_headline_lines

        out += ["- " + line for line in identity_headline_lines(m["identity"])]
    for kind in m["leakage"]:
        out += ["", f"Normalized leakage, {kind} probe (rows: latent parts; diagonal in bold):", "",
                leakage_table(m, kind)]
    return "\n".join(out)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--markdown":  # re-render a result file
        print(markdown(json.loads(Path(sys.argv[2]).read_text())))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reevaluate", action="store_true",
                    help="do not train: evaluate the run trained in --out by this same command again")
    ap.add_argument("--weights", choices=("auto", "live", "ema"), default="auto",
                    help="which weights to evaluate where the run kept an average (train.ema): auto = the "
                         "average; a choice other than auto names the result file NAME_WEIGHTS.json")
    args = ap.parse_intermixed_args()
    t0 = time.perf_counter()
    cfg = load_config(args.config, args.overrides)
    if args.reevaluate:
        if load_config(Path(args.out) / "config.yaml").to_dict() != cfg.to_dict():
            ap.error(f"{args.config} with {args.overrides} does not resolve to {args.out}/config.yaml: "
                     "pass the command that trained the run")
    else:
        Trainer(cfg, args.out).fit()
    run = load_run(args.out, weights=args.weights)
    metrics = evaluate(run.model, run.dataset, run.run_dir, build_dataclass(EvalConfig, cfg.eval, "eval"))
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "date": dt.date.today().isoformat(),
        "config": args.config,
        "overrides": args.overrides,
        "train": json.loads((Path(args.out) / "train_summary.json").read_text()),
        "wall_minutes": round((time.perf_counter() - t0) / 60, 1),
        "reevaluated": args.reevaluate,  # wall_minutes is then the evaluation's alone
        "weights": args.weights,
        "headline": headline(metrics),
        "metrics": metrics,
    }
    name = Path(args.out).name + ("" if args.weights == "auto" else f"_{args.weights}")
    write_json(Path(__file__).parent / "results" / f"{name}.json", result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
