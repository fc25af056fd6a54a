"""How much of a part's leak is left/right? Refit the leakage probes on mirror-averaged codes.

    python benchmarks/mirror_probe.py RUN_DIR [--part identity] [--attributes illumination pose ...]
        [--probe mlp] [--confusion illumination]

For a trained run this encodes the evaluation's own draw of train and test images twice: as the
model does, and with ``--part`` replaced by the mean of its codes for the image and its left-right
mirror (the other parts as they are). It fits the leakage matrix's fresh probe (seed ``eval.seed``)
on each and prints the normalized leakage of the part for every attribute, side by side; the first
column is the matrix's own figure. A part averaged this way cannot tell a face from its mirror, so
what it loses is the share of a leak that a mirror flips: light from the left against light from the
right, a head turned one way against the other. ``--confusion`` prints the test confusion matrix of
the named attributes' probes for both encodings. This is what ``method.flip_invariant`` builds into
the encoder during training (adversarial_attributes); here it is read off a model trained without it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import confusion_matrix

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_spread import evaluation_codes  # noqa: E402  (the evaluation's draw, encoded)

from facefactors.config import build_dataclass  # noqa: E402
from facefactors.eval.evaluate import EvalConfig  # noqa: E402
from facefactors.eval.probes import fit_probe, predict_quietly, score_predictions  # noqa: E402
from facefactors.latent import Latent  # noqa: E402
from facefactors.runs import load_run  # noqa: E402


class MirrorAveraged(torch.nn.Module):
    """A model whose ``encode`` gives ``parts`` as the mean over the image and its mirror."""

    def __init__(self, model, parts: list[str]):
        super().__init__()
        self.model, self.parts = model, set(parts)

    def encode(self, x: torch.Tensor) -> Latent:
        z, z_mirror = self.model.encode(x), self.model.encode(x.flip(3))
        return Latent((n, 0.5 * (z[n] + z_mirror[n]) if n in self.parts else z[n]) for n in z)


def mirror_table(run_dir: str, part: str = "identity", attributes: list[str] | None = None, probe: str = "mlp",
                 confusion: list[str] = ()) -> dict:
    """``{"rows": [{"attribute", "plain", "mirrored"}], "confusion": {attribute: (class names, plain, mirrored)}}``."""
    run = load_run(run_dir)
    cfg = build_dataclass(EvalConfig, dict(run.config.eval), "eval")
    model, ds = run.model.eval(), run.dataset
    codes = {"plain": evaluation_codes(model, ds, cfg, cfg.seed),
             "mirrored": evaluation_codes(MirrorAveraged(model, [part]).eval(), ds, cfg, cfg.seed)}
    train = codes["plain"][0]
    if f"part/{part}" not in train:
        raise SystemExit(f"{run_dir}: no part {part!r}; parts: {', '.join(k[5:] for k in train if k.startswith('part/'))}")
    if attributes is None:
        attributes = [a for a, spec in ds.attributes.items() if spec.discrete and f"label/{a}" in train]
    missing = [a for a in list(attributes) + list(confusion) if f"label/{a}" not in train]
    if missing:
        raise SystemExit(f"{run_dir}: no labels for attribute {missing[0]!r}")
    rows = {a: {"attribute": a} for a in attributes}
    out = {"rows": list(rows.values()), "confusion": {}}
    for a in dict.fromkeys([*attributes, *confusion]):          # one probe per attribute and encoding
        classes = np.unique(train[f"label/{a}"])
        mats = []
        for name, (tr, te) in codes.items():
            fitted = fit_probe(probe, tr[f"part/{part}"], tr[f"label/{a}"], hidden=cfg.mlp_hidden, seed=cfg.seed)
            predicted = predict_quietly(fitted, te[f"part/{part}"])
            if a in rows:
                rows[a][name] = score_predictions(tr[f"label/{a}"], te[f"label/{a}"], predicted)["normalized"]
            mats.append(confusion_matrix(te[f"label/{a}"], predicted, labels=classes))
        if a in confusion:
            names = ds.attributes[a].classes if a in ds.attributes else ()
            out["confusion"][a] = ([names[int(c)] if int(c) < len(names) else str(int(c)) for c in classes], *mats)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--part", default="identity")
    ap.add_argument("--attributes", nargs="+", default=None, help="default: every discrete attribute")
    ap.add_argument("--probe", default="mlp", choices=("linear", "mlp"))
    ap.add_argument("--confusion", nargs="*", default=[], help="attributes whose confusion matrices to print")
    args = ap.parse_args()
    res = mirror_table(args.run, args.part, args.attributes, args.probe, args.confusion)
    print(f"| {args.part} part -> attribute ({args.probe}, normalized) | as encoded | mirror-averaged |")
    print("|---|---:|---:|")
    for row in res["rows"]:
        print(f"| {row['attribute']} | {row['plain']:.2f} | {row['mirrored']:.2f} |")
    for a, (classes, plain, mirrored) in res["confusion"].items():
        print(f"\n{a}: test confusion (rows: true class {', '.join(classes)}; columns: predicted, same order)")
        print("as encoded:\n" + str(plain) + "\nmirror-averaged:\n" + str(mirrored))


if __name__ == "__main__":
    main()
