"""Training throughput of configs: images/s of the real training step on this machine.

    python benchmarks/throughput.py configs/d2ae_synthfaces.yaml configs/cycle_vae_digits.yaml \
        [--steps 60] [--warmup 20] [--device auto] [--json out.json] [key=value ...]

Each config trains ``--warmup`` + ``--steps`` steps in a scratch run directory (its data, networks,
batch size and precision as configured; no checkpoints, previews or time budget), and the
images/s of the timed steps (after the warm-up, which absorbs cuDNN autotuning and allocator
growth) is reported. The same command runs on the CPU and on a GPU (``--device cuda``); the
output names the machine. Prints a markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_and_evaluate import machine  # noqa: E402

from facefactors.config import load_config  # noqa: E402
from facefactors.io import write_json  # noqa: E402
from facefactors.train.trainer import Trainer  # noqa: E402


def measure(config: str, steps: int, warmup: int, device: str, overrides: list[str]) -> dict:
    """Train ``warmup + steps`` steps and return images/s over the last ``steps``."""
    log_every = max(1, min(warmup, steps))
    cfg = load_config(config, [*overrides, f"train.steps={warmup + steps}", "train.time_budget_min=null",
                               f"train.checkpoint_every={10 ** 9}", "train.preview_every=0",
                               f"train.log_every={log_every}", f"train.device={device}", "train.progress=false"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        trainer.fit()
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()]
        n_params = json.loads((Path(tmp) / "run" / "train_summary.json").read_text())["n_parameters"]
    timed = [r for r in rows if r["step"] > warmup]
    seconds = sum(log_every * cfg.train.batch_size / r["images_per_s"] for r in timed)
    images = len(timed) * log_every * cfg.train.batch_size
    return {"config": config, "method": cfg.model.method, "image_size": cfg.data.get("size"),
            "batch_size": cfg.train.batch_size, "precision": cfg.train.precision, "steps_timed": len(timed) * log_every,
            "images_per_s": round(images / seconds, 1), "n_parameters": n_params}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+", help="config files, then key=value overrides for all of them")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_intermixed_args(argv)
    configs = [c for c in args.configs if "=" not in c]
    overrides = [c for c in args.configs if "=" in c]
    rows = []
    for config in configs:
        print(f"== {config}", flush=True)
        rows.append(measure(config, args.steps, args.warmup, args.device, overrides))
        print(json.dumps(rows[-1]), flush=True)
    result = {"command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine(), "date": dt.date.today().isoformat(), "rows": rows}
    if args.json:
        write_json(args.json, result)
    lines = [f"Command: `{result['command']}`  ", f"Machine: {result['machine']}  ", f"Date: {result['date']}", "",
             "| config | method | px | batch | parameters | images/s |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {Path(r['config']).name} | {r['method']} | {r['image_size']} | {r['batch_size']} | "
              f"{r['n_parameters'] / 1e6:.2f} M | {r['images_per_s']:.0f} |" for r in rows]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
