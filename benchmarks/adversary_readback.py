"""Do an adversarial_attributes run's own MLP adversaries read what a fresh probe reads?

    python benchmarks/adversary_readback.py RUN_DIR [--pairs identity:illumination rest:expression ...]
        [--train 4000] [--test 2000]

Encodes a fixed subsample of train and test images (the evaluation's sizes) and, for each
(part, attribute) pair the run has an adversary for, scores on the test codes:
- the trained adversary as it stands in the checkpoint (with the labels it is given, where the run
  used ``adversary_given``);
- a fresh MLP probe as the leakage matrix fits it (``eval.probes``), on the train codes.

The two readings separate two reasons a leak can survive training. An adversary that reads the
test codes near chance while a fresh probe reads the attribute has been fooled: the encoder hid
the information where that network does not look. An adversary that reads as well as the probe,
or better, sees the leak, and the encoder has not removed it although the uniform-posterior term
pushes against it: the term is outweighed. Prints a markdown table.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from facefactors.eval.latents import encode_split
from facefactors.eval.probes import probe_score
from facefactors.runs import load_run


def readback(run_dir: str, pairs: list[tuple[str, str]] | None = None, n_train: int = 4000,
             n_test: int = 2000, seed: int = 0) -> list[dict]:
    """One row per pair: chance (test share of the train majority), the trained adversary's and a
    fresh MLP probe's test accuracy, and the probe's normalized leakage."""
    run = load_run(run_dir, weights="live")
    model, ds = run.model.eval(), run.dataset
    if getattr(model, "name", "") != "adversarial_attributes" or model.adversaries is None:
        raise SystemExit(f"{run_dir}: not an adversarial_attributes run with MLP adversaries (method.adversary_hidden)")
    known = [tuple(k.split("__")) for k in model.adversaries]
    pairs = known if pairs is None else pairs
    missing = [f"{q}:{a}" for q, a in pairs if (q, a) not in known]
    if missing:
        raise SystemExit(f"no adversary for {missing[0]}; the run has: {', '.join(f'{q}:{a}' for q, a in known)}")
    rng = np.random.default_rng(seed)
    train_split, test_split = ds.split("train"), ds.split("test")
    tr = np.sort(rng.choice(train_split, min(n_train, len(train_split)), replace=False))
    te = np.sort(rng.choice(test_split, min(n_test, len(test_split)), replace=False))
    train, test = encode_split(model, ds, tr), encode_split(model, ds, te)
    l_te = {a: torch.from_numpy(test[f"label/{a}"]) for a in model.confusion_classes}
    rows = []
    for q, a in pairs:
        with torch.no_grad():
            code = torch.from_numpy(test[f"part/{q}"])
            logits = model.adversaries[f"{q}__{a}"](model._adversary_input(q, code, l_te))
        fresh = probe_score("mlp", train[f"part/{q}"], train[f"label/{a}"], test[f"part/{q}"], test[f"label/{a}"],
                            seed=seed)
        rows.append({"part": q, "attribute": a, "chance": fresh["chance"],
                     "adversary": float((logits.argmax(1) == l_te[a]).float().mean()),
                     "probe": fresh["accuracy"], "probe_normalized": fresh["normalized"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--pairs", nargs="*", help="part:attribute (default: every pair the run has an adversary for)")
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--test", type=int, default=2000)
    args = ap.parse_args()
    pairs = None
    if args.pairs:
        bad = [p for p in args.pairs if p.count(":") != 1]
        if bad:
            ap.error(f"--pairs takes part:attribute, got {bad[0]!r}")
        pairs = [tuple(p.split(":")) for p in args.pairs]
    rows = readback(args.run, pairs, args.train, args.test)
    print("| part → attribute | chance | trained adversary | fresh MLP probe (normalized) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['part']} → {r['attribute']} | {r['chance']:.3f} | {r['adversary']:.3f} "
              f"| {r['probe']:.3f} ({r['probe_normalized']:.2f}) |")


if __name__ == "__main__":
    main()
