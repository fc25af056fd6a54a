"""How the choice of edit direction decides edit success, on one trained run.

    python benchmarks/edit_directions.py runs/bench/d2ae_synthfaces_cos [--json benchmarks/results/NAME.json]

Edits the same test images towards every class they are not, for each identity-independent
attribute the evaluation oracle reads, under a grid of settings: one-vs-rest or pairwise
(source-to-target) SVM directions, the SVM's C, and the overshoot past the target class's
mean projection (in learned stds; alpha bounded at ``--max-std``). The class-mean direction
is the reference. Reports the oracle's success rate per attribute with the unedited control,
how often the oracle reads the attribute right on plain reconstructions (what the decoder
renders at all, the ceiling of any edit), and the share of edits whose identity part is still
verified as the same person.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from facefactors.config import build_dataclass
from facefactors.eval.editing import edit_success, encode_train_codes, fit_directions
from facefactors.eval.identity import IDENTITY, IdentityEvalConfig, verification_pairs
from facefactors.eval.latents import decode_uint8, encode_images, encode_split
from facefactors.eval.oracle import get_oracle
from facefactors.eval.verification import verify
from facefactors.io import write_json
from facefactors.runs import load_run

# (name, direction kind, C, pairwise, overshoot)
SETTINGS = [
    ("one-vs-rest SVM, C 1e-3, to the class mean", "svm", 1e-3, False, 0.0),
    ("one-vs-rest SVM, C 1e-5, to the class mean", "svm", 1e-5, False, 0.0),
    ("one-vs-rest SVM, C 1e-5, class mean + 1 std", "svm", 1e-5, False, 1.0),
    ("pairwise SVM, C 1e-3, class mean + 1 std", "svm", 1e-3, True, 1.0),
    ("pairwise SVM, C 1e-5, to the class mean", "svm", 1e-5, True, 0.0),
    ("pairwise SVM, C 1e-5, class mean + 1 std (default)", "svm", 1e-5, True, 1.0),
    ("class-mean difference, pairwise, class mean + 1 std", "mean", 1e-5, True, 1.0),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--images", type=int, default=256, help="test images edited (each towards every other class)")
    ap.add_argument("--max-std", type=float, default=3.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)

    run = load_run(args.run, device=args.device)
    model, ds = run.model, run.dataset
    cfg = build_dataclass(IdentityEvalConfig, dict((run.config.eval or {}).get("identity") or {}), "eval.identity")
    oracle = get_oracle(ds, device=args.device)
    train = encode_train_codes(model, ds, cfg.max_train, cfg.seed, cfg.batch_size, args.device)
    test = ds.split("test")
    pick = np.sort(np.random.default_rng([cfg.seed, 31]).choice(test, min(args.images, len(test)), replace=False))
    images = ds.images[torch.as_tensor(pick)]
    threshold = None
    if IDENTITY in model.part_names:  # the verification protocol's threshold for the identity part
        _, idx, _, pairs = verification_pairs(ds, cfg)
        codes = encode_split(model, ds, idx, cfg.batch_size, args.device)[f"part/{IDENTITY}"]
        threshold = float(verify(codes, pairs, cfg.fpr_target)["threshold"])
    predicted = oracle.predict(images[:2])
    attrs = [a for a, s in ds.attributes.items() if s.discrete and not s.identity_linked and a != IDENTITY
             and a in predicted and s.num_classes <= cfg.recognition_max_classes]
    rec = oracle.predict(decode_uint8(model, encode_images(model, images, cfg.batch_size, args.device),
                                      cfg.batch_size, args.device))
    labels = {a: ds.labels[a][torch.as_tensor(pick)].numpy() for a in attrs}
    rendered = {a: float(np.mean(np.asarray(rec[a]) == labels[a])) for a in attrs}
    rows = []
    for name, kind, c, pairwise, overshoot in SETTINGS:
        row = {"setting": name, "kind": kind, "c": c, "pairwise": pairwise, "overshoot": overshoot, "attributes": {}}
        for a in attrs:
            dirs = fit_directions(model, train, a, c=c, seed=cfg.seed, kind=kind, pairwise=pairwise)
            r = edit_success(model, images, labels[a], dirs, oracle, IDENTITY if threshold is not None else None,
                             threshold, args.max_std, overshoot, cfg.batch_size, args.device)
            row["attributes"][a] = {k: r[k] for k in ("success_rate", "unedited_rate", "mean_alpha_std",
                                                      "identity_verified") if k in r}
        rows.append(row)
        print(f"{name}: " + ", ".join(f"{a} {v['success_rate']:.2f}" for a, v in row["attributes"].items()),
              file=sys.stderr, flush=True)

    print(f"Edit success on {len(pick)} test images of `{args.run}` (oracle's share of edits read as the target "
          f"class; alpha at most {args.max_std:g} learned stds):\n")
    print("| setting | " + " | ".join(attrs) + " | identity verified (min) |")
    print("|---" * (len(attrs) + 2) + "|")
    print("| unedited reconstructions (control) | " + " | ".join(
        f"{rows[0]['attributes'][a]['unedited_rate']:.2f}" for a in attrs) + " | |")
    print("| reconstructions read as their own class | " + " | ".join(f"{rendered[a]:.2f}" for a in attrs) + " | |")
    for row in rows:
        ver = [v.get("identity_verified") for v in row["attributes"].values()]
        ver_txt = f"{min(ver):.3f}" if all(v is not None for v in ver) else ""
        print(f"| {row['setting']} | " + " | ".join(f"{row['attributes'][a]['success_rate']:.2f}" for a in attrs)
              + f" | {ver_txt} |")
    if args.json:
        write_json(args.json, {"run": args.run, "images": int(len(pick)), "max_std": args.max_std,
                               "rendered_by_reconstruction": rendered, "identity_threshold": threshold,
                               "settings": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
