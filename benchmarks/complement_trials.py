"""Quick trials of the terms that take an attribute out of the complements f_not_p (compact_embeddings).

    python benchmarks/complement_trials.py --run runs/bench/compact_embeddings_synthfaces_S \
        [--complement-adv 1 --adv-steps 2] [--moments 1] [--kernel 10] [--per-part] [--whiten] [--compactness 1]

The 30-minute S run spends most of its time in stage 1; stage 2 (the factor network) can be
tried on its own. This loads a trained S run, keeps its encoder frozen, encodes the train split
once, and trains a fresh factor network on those codes (L_f and L_rec of Phi, plus the chosen
terms; no L_cyc / L_aug, which would need the decoder; ``--latent-cycle`` is L_cyc's code-space
form) for ``--steps`` steps of batch 64. Then
fresh linear and MLP probes score each part f_p and its complement f_not_p
(``eval.complements.discriminability``), and an MLP probe reads every attribute from every part,
which shows where the complement's leftover information sits, and the counterfactual transfer
ratio of each part's swap through the frozen decoder (``eval.counterfactual``: about 1 when a swap
is as good as a reconstruction, far above when the factor network breaks on mixed parts). Prints
a JSON line with the ratios normalized(f_not_p) / normalized(f_p), the target being at most 0.5.

These are development figures: the factor network sees only the frozen codes and trains for a
few minutes. A configuration that does well here still needs a full run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from facefactors.config import RunConfig, build_dataclass
from facefactors.eval.complements import discriminability
from facefactors.eval.counterfactual import counterfactual_transfer
from facefactors.eval.latents import encode_split
from facefactors.eval.probes import probe_score
from facefactors.runs import build_model, load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/bench/compact_embeddings_synthfaces_S")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--zrec", type=float, default=4.0)
    ap.add_argument("--f", type=float, default=1.0, help="weight of L_f, the parts' own attribute losses")
    ap.add_argument("--rest-dim", type=int, default=0, help="size of the rest part (0: the run's)")
    ap.add_argument("--complement-adv", type=float, default=0.0)
    ap.add_argument("--adv-steps", type=int, default=1)
    ap.add_argument("--adv-hidden", type=int, default=256)
    ap.add_argument("--moments", type=float, default=0.0)
    ap.add_argument("--kernel", type=float, default=0.0)
    ap.add_argument("--per-part", action="store_true")
    ap.add_argument("--whiten", action="store_true", help="the complement terms see whitened codes")
    ap.add_argument("--carry", nargs="*", default=[], metavar="PART=LABEL",
                    help="continuous labels a class part also regresses, e.g. illumination=light_strength")
    ap.add_argument("--compactness", type=float, default=0.0)
    ap.add_argument("--latent-cycle", type=float, default=0.0, help="method.latent_cycle")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe-test", choices=("test", "train"), default="test",
                    help="score the probes on test images, or on train images the probes did not fit "
                         "(what the factor network saw): a gap shows the terms not generalising")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    run = load_run(args.run)
    ds = run.dataset
    cfgd = dataclasses.asdict(run.config)
    cfgd["method"] = dict(cfgd["method"], complement_adv=args.complement_adv, complement_adv_steps=args.adv_steps,
                          complement_adv_hidden=args.adv_hidden, zrec=args.zrec, f=args.f, complement_moments=args.moments,
                          complement_kernel=args.kernel, complement_per_part=args.per_part, complement_whiten=args.whiten,
                          part_compactness=args.compactness, latent_cycle=args.latent_cycle,
                          cyc=0.0, aug=0.0)
    carry: dict[str, list[str]] = {}
    for item in args.carry:
        part, _, label = item.partition("=")
        carry.setdefault(part, []).append(label)
    if carry:
        cfgd["method"]["carry"] = carry
    if args.rest_dim:
        cfgd["model"]["part_dims"] = dict(cfgd["model"]["part_dims"], rest=args.rest_dim)
    model = build_model(build_dataclass(RunConfig, cfgd), ds)
    stage1 = {k: v for k, v in run.model.state_dict().items() if k.startswith(("encoder.", "decoder."))}
    model.load_state_dict(stage1, strict=False)
    model.encoder.eval()
    model.decoder.eval()

    train, test = np.asarray(ds.split("train")), np.asarray(ds.split("test"))
    with torch.no_grad():
        codes = torch.cat([model.encoder(ds.batch(train[i:i + 512]).image) for i in range(0, len(train), 512)])
    labels = {k: v[torch.from_numpy(train)] for k, v in ds.labels.items()}
    opts = {k: s.build() for k, s in model.optimizers().items() if k in ("factor", "complement_adv")}
    model.factor.train()
    model.factor_inv.train()
    g = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for _ in range(args.steps):
        idx = torch.randint(0, len(train), (args.batch_size,), generator=g)
        for group, losses in model.factor_step(codes[idx], {k: v[idx] for k, v in labels.items()}):
            opts[group].zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            opts[group].step()
    train_s = time.time() - start

    model.eval()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train))
    a = encode_split(model, ds, train[order[:4000]])
    b = encode_split(model, ds, train[order[4000:6000]] if args.probe_test == "train"
                     else test[rng.permutation(len(test))[:2000]])
    res = discriminability(a, b, ds.attributes, model.part_names, model.complement_parts, probes=("linear", "mlp"))
    out = {"args": vars(args), "train_seconds": round(train_s, 1),
           "ratio": {p: {k: round(v, 3) for k, v in e["leakage_ratio"].items()} for p, e in res.items()},
           "part": {p: {k: round(e["part"][k]["normalized"], 3) for k in ("linear", "mlp")} for p, e in res.items()}}
    with torch.no_grad():
        zt = model.encoder((ds.images[torch.from_numpy(test[:512])].float() - 127.5) / 127.5)
        out["zrec_mse"] = round(float(((model.phi_inv(model.phi(zt)) - zt) ** 2).mean()), 4)
    out["mlp_leak_by_part"] = {
        attr: {q: round(probe_score("mlp", a[f"part/{q}"], a[f"label/{attr}"], b[f"part/{q}"],
                                    b[f"label/{attr}"])["normalized"], 2) for q in model.part_names}
        for attr in res if f"label/{attr}" in a}
    # the same reading from the direction and from the length of each part: the triplet loss and
    # part_compactness see identity L2-normalised, so its length is free to carry anything
    length = {s: {q: np.linalg.norm(x[f"part/{q}"], axis=1, keepdims=True).clip(1e-8) for q in model.part_names}
              for s, x in (("a", a), ("b", b))}
    for tag, view in (("mlp_leak_by_direction", lambda s, x, q: x[f"part/{q}"] / length[s][q]),
                      ("mlp_leak_by_length", lambda s, x, q: length[s][q])):
        out[tag] = {attr: {q: round(probe_score("mlp", view("a", a, q), a[f"label/{attr}"], view("b", b, q),
                                                b[f"label/{attr}"])["normalized"], 2) for q in model.part_names}
                    for attr in res if f"label/{attr}" in a}
    # swaps decoded through the frozen decoder against the rendered truth (1.0: no better than
    # the reconstruction; a factor network that breaks on mixed parts scores far above)
    cf, _ = counterfactual_transfer(model, ds, n_pairs=256, seed=0)
    out["counterfactual_ratio"] = {q: round(v["ratio_to_reconstruction"], 2) for q, v in cf.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
