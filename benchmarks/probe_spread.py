"""How much of a leakage figure is the fresh probe's own chance?

    python benchmarks/probe_spread.py RUN_DIR [RUN_DIR ...] [--pairs identity:illumination ...]
        [--probe mlp] [--seeds 5]

The leakage matrix fits one probe per (part, attribute) with seed ``eval.seed`` on one seeded draw of
train and test codes. Two runs that differ in one figure by 0.2 may differ in the model, or only in
that one fit. For each run this re-encodes the evaluation's own draw (the same weights and subsample
as ``facefactors evaluate``), then scores each pair
- with probe seeds 0..K-1 on those codes (the fit's spread; seed 0 is the matrix's figure), and
- with draw seeds 1..K-1 (another subsample of train and test codes each, probe seed 0). Where a split
  is no larger than ``eval.max_train`` / ``eval.max_test``, every draw is the whole split, so this column does not vary.
Prints a markdown table of normalized leakage: the matrix's figure, then mean, sd, min and max.
"""
from __future__ import annotations

import argparse

import numpy as np

from facefactors.config import build_dataclass
from facefactors.eval.evaluate import EvalConfig, evaluation_draw
from facefactors.eval.latents import encode_split
from facefactors.eval.probes import probe_score
from facefactors.runs import load_run


def evaluation_codes(model, ds, cfg: EvalConfig, draw: int):
    """Train and test codes (with labels) of the evaluation's draw ``draw`` (``cfg.seed``: its own)."""
    train_idx, test_idx = evaluation_draw(ds, cfg, draw)
    return encode_split(model, ds, train_idx, cfg.batch_size), encode_split(model, ds, test_idx, cfg.batch_size)


def spread(run_dir: str, pairs: list[tuple[str, str]], probe: str = "mlp", seeds: int = 5) -> list[dict]:
    """One row per pair: normalized leakage under ``seeds`` probe seeds and ``seeds`` code draws."""
    run = load_run(run_dir)
    cfg = build_dataclass(EvalConfig, dict(run.config.eval), "eval")
    model, ds = run.model.eval(), run.dataset
    draws = [evaluation_codes(model, ds, cfg, cfg.seed + d) for d in range(seeds)]   # draws[0]: the evaluation's own
    train, _ = draws[0]
    for q, a in pairs:
        if f"part/{q}" not in train or f"label/{a}" not in train:
            raise SystemExit(f"{run_dir}: no part {q!r} or no label {a!r}")

    def score(codes, q: str, a: str, seed: int) -> float:
        train, test = codes
        return probe_score(probe, train[f"part/{q}"], train[f"label/{a}"], test[f"part/{q}"], test[f"label/{a}"],
                           hidden=cfg.mlp_hidden, seed=seed)["normalized"]

    rows = []
    for q, a in pairs:
        fits = [score(draws[0], q, a, cfg.seed + s) for s in range(seeds)]
        other = [fits[0]] + [score(codes, q, a, cfg.seed) for codes in draws[1:]]
        rows.append({"run": run_dir, "pair": f"{q} -> {a}", "matrix": fits[0], "probe_seeds": fits, "draws": other})
    return rows


def _cell(values: list[float]) -> str:
    v = np.asarray(values)
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f} ({v.min():.2f}-{v.max():.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--pairs", nargs="+", default=["identity:illumination"], help="part:attribute")
    ap.add_argument("--probe", default="mlp", choices=("linear", "mlp"))
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    pairs = [tuple(p.split(":", 1)) for p in args.pairs]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit("--pairs takes part:attribute")
    print(f"| run | pair | matrix figure | probe seeds (mean ± sd, range) | code draws (mean ± sd, range) |")
    print("|---|---|---:|---|---|")
    for r in args.runs:
        for row in spread(r, pairs, args.probe, args.seeds):
            print(f"| {row['run']} | {row['pair']} | {row['matrix']:.2f} | {_cell(row['probe_seeds'])} | "
                  f"{_cell(row['draws'])} |", flush=True)


if __name__ == "__main__":
    main()
