"""Fréchet distances of generated images for finished runs, side by side.

    python benchmarks/sample_frechet.py runs/bench/ae_baseline runs/bench/compact_embeddings_synthfaces_J ...

For each run: reconstructions, samples from the method's own prior (where it has one), samples
from a Gaussian fitted to its training codes (every method; ex-post density estimation), and real
training images as the floor, all against the same real test images with the run's evaluation
extractor (the cached evaluation oracle, or Inception when its weights are installed). Prints a
markdown table; runs on one dataset share the oracle, so their numbers compare.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from facefactors.config import build_dataclass
from facefactors.eval.evaluate import EvalConfig, _frechet, _oracle
from facefactors.runs import load_run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    rows = []
    for run_dir in args.runs:
        run = load_run(run_dir, device=args.device)
        cfg = build_dataclass(EvalConfig, {**run.config.eval, "suite": ["frechet"]}, "eval")
        ds = run.dataset
        oracle = _oracle(ds, cfg, args.device, print, run.model)
        fd, _ = _frechet(run.model, ds, np.asarray(ds.split("test"), np.int64), np.asarray(ds.split("train"), np.int64),
                         cfg, args.device, print, oracle)
        cell = {k: (f"{fd[k]['value']:.1f}" if fd.get(k) else "n/a") for k in
                ("reconstructions", "samples", "samples_fitted", "real_train")}
        rows.append((run_dir, cell, fd["reconstructions"]["extractor"]))
    print("Command: `python benchmarks/sample_frechet.py " + " ".join(sys.argv[1:] if argv is None else argv) + "`\n")
    print("| run | reconstructions | prior samples | fitted-Gaussian samples | real train (floor) | extractor |")
    print("|---|---:|---:|---:|---:|---|")
    for run_dir, c, ext in rows:
        print(f"| {run_dir} | {c['reconstructions']} | {c['samples']} | {c['samples_fitted']} | {c['real_train']} | {ext} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
