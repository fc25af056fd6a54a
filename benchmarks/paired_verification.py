"""Which of two runs leaves more identity in a latent part, with its uncertainty.

    python benchmarks/paired_verification.py runs/bench/d2ae_synthfaces runs/bench/d2ae_synthfaces_no_lh \
        --part rest [--json benchmarks/results/NAME.json]

Both runs must be on the same data: their parts are scored on the same verification pairs
(the evaluation's protocol: held-out identities, 10 folds, cosine similarity), so the
difference B - A is a paired comparison. Prints the AUC and 10-fold accuracy of each, the
per-fold differences, and a bootstrap interval over pairs for the AUC difference
(``facefactors.eval.verification.paired_difference``).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from facefactors.config import build_dataclass
from facefactors.eval.identity import IdentityEvalConfig, verification_pairs
from facefactors.data.pairs import Pairs
from facefactors.eval.latents import encode_split, parts_of
from facefactors.eval.verification import cosine_scores, paired_difference
from facefactors.errors import FacefactorsError
from facefactors.io import write_json
from facefactors.runs import load_run


def part_scores(run_dir: str, part: str, device: str) -> tuple[np.ndarray, Pairs, tuple]:
    """Cosine scores of ``part`` on the run's verification pairs, the pairs, and what fixes them (data, split)."""
    run = load_run(run_dir, device=device)
    cfg = build_dataclass(IdentityEvalConfig, dict((run.config.eval or {}).get("identity") or {}), "eval.identity")
    split, idx, _, pairs = verification_pairs(run.dataset, cfg)
    arrays = encode_split(run.model, run.dataset, idx, cfg.batch_size, device)
    if f"part/{part}" not in arrays:
        raise FacefactorsError(f"{run_dir} has no latent part {part!r}; parts: {', '.join(parts_of(arrays))}")
    return cosine_scores(arrays[f"part/{part}"], pairs.a, pairs.b), pairs, (run.config.data, split)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--part", default="rest")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    sa, pairs, key_a = part_scores(args.run_a, args.part, args.device)
    sb, pairs_b, key_b = part_scores(args.run_b, args.part, args.device)
    if key_a != key_b or not all(np.array_equal(getattr(pairs, k), getattr(pairs_b, k)) for k in ("a", "b", "same", "fold")):
        raise FacefactorsError(f"{args.run_a} and {args.run_b} are not on the same data and pairs; "
                               "a paired comparison needs both")
    res = paired_difference(sa, sb, pairs, args.boot)
    cmd = "python benchmarks/paired_verification.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lo, hi = res["auc_difference_ci95"]
    fd = ", ".join(f"{d:+.3f}" for d in res["fold_accuracy_difference"])
    print(f"Command: `{cmd}`\n")
    print(f"| part `{args.part}` on {res['n_pairs']} pairs | A: {args.run_a} | B: {args.run_b} | B - A |")
    print("|---|---|---|---|")
    print(f"| ROC AUC | {res['auc_a']:.4f} | {res['auc_b']:.4f} | {res['auc_difference']:+.4f} "
          f"(95% bootstrap {lo:+.4f} .. {hi:+.4f}; p(B <= A) = {res['p_auc_not_greater']:.4f}) |")
    print(f"| 10-fold accuracy | {res['accuracy_a']:.4f} | {res['accuracy_b']:.4f} | "
          f"{res['accuracy_difference']:+.4f} ({res['folds_favouring_b']} folds favour B, "
          f"{res['folds_favouring_a']} favour A) |")
    print(f"\nper-fold accuracy differences: {fd}")
    if args.json:
        write_json(args.json, {"command": cmd, "part": args.part, "run_a": args.run_a, "run_b": args.run_b, **res})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
