"""Where a cycle_vae's unspecified code z keeps the specified attribute: by how active its units are.

    python benchmarks/vae_units.py RUN_DIR [--train 4000] [--test 2000]

Encodes train and test images (a fixed subsample), ranks z's units by how much their posterior
mean varies over the images against their posterior standard deviation, and fits a standardised
logistic probe for the specified attribute on each band of units, and on the units active and
inactive by Burda et al.'s criterion (variance of the mean over the data > 0.01). For each band
it also decodes test images from the means of that band's units only (the others at the prior
mean 0, s unchanged): the PSNR shows how much of the image the decoder draws from them. Prints a
markdown table. The probe reads the raw means of every unit, whatever ``method.active_units`` says.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from facefactors.latent import Latent
from facefactors.runs import load_run


def posterior(model, ds, idx: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """z's means and standard deviations, and s, for images ``idx``."""
    mus, sds, ss = [], [], []
    with torch.no_grad():
        for i in range(0, len(idx), batch):
            mu, logvar, s = model.posterior(ds.batch(idx[i:i + batch]).image)
            mus.append(mu.float())
            sds.append((0.5 * logvar.float()).exp())
            ss.append(s)
    return torch.cat(mus).numpy(), torch.cat(sds).numpy(), torch.cat(ss)


def psnr_keeping(model, ds, idx: np.ndarray, mu: np.ndarray, s: torch.Tensor, keep: np.ndarray,
                 batch: int = 256) -> float:
    """Test PSNR of decodes from z's means with only the units in ``keep`` (others 0) and s."""
    z = torch.from_numpy(mu * keep).to(s.dtype)
    err, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(idx), batch):
            x = ds.batch(idx[i:i + batch]).image
            x_hat = model.decode(Latent({model.attr: s[i:i + batch], "rest": z[i:i + batch]}))
            err += ((x_hat.float() - x.float()) / 2).pow(2).sum().item()
            n += x.numel()
    return 10 * np.log10(1.0 / (err / n))


def unit_bands(run_dir: str, n_train: int = 4000, n_test: int = 2000) -> tuple[str, float, list[tuple]]:
    """(attribute, majority rate, rows of (band, units kept (bool array), probe accuracy or None, PSNR))."""
    torch.manual_seed(0)
    run = load_run(run_dir)
    model, ds = run.model.eval(), run.dataset
    if getattr(model, "name", "") != "cycle_vae":
        raise SystemExit(f"{run_dir}: not a cycle_vae run")
    rng = np.random.default_rng(0)
    train = rng.choice(ds.split("train"), min(n_train, len(ds.split("train"))), replace=False)
    test = rng.choice(ds.split("test"), min(n_test, len(ds.split("test"))), replace=False)
    mu_tr, sd_tr, _ = posterior(model, ds, train)
    mu_te, _, s_te = posterior(model, ds, test)
    y = ds.labels[model.attr].numpy()
    ratio = mu_tr.std(0) / sd_tr.mean(0)
    var = mu_tr.var(0)
    bands = [("all", np.ones_like(ratio, bool)),
             ("means vary by more than 0.5 of the posterior sd", ratio > 0.5),
             ("by 0.1-0.5", (ratio > 0.1) & (ratio <= 0.5)),
             ("by less than 0.1", ratio <= 0.1),
             ("active (variance of the mean > 0.01)", var > 0.01),
             ("inactive", var <= 0.01),
             ("none (z at the prior mean)", np.zeros_like(ratio, bool))]
    rows = []
    for name, keep in bands:
        db = psnr_keeping(model, ds, test, mu_te, s_te, keep.astype(mu_te.dtype))
        acc = None
        if keep.any():
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            acc = float(probe.fit(mu_tr[:, keep], y[train]).score(mu_te[:, keep], y[test]))
        rows.append((name, keep, acc, db))
    return model.attr, float(np.bincount(y[test]).max() / len(test)), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--test", type=int, default=2000)
    args = ap.parse_args()
    attr, majority, rows = unit_bands(args.run, args.train, args.test)
    print(f"| units of z ({len(rows[0][1])}) | count | {attr} probe accuracy (linear; majority {majority:.3f}) "
          "| PSNR decoding only these units |")
    print("|---|---:|---:|---:|")
    for name, keep, acc, db in rows:
        print(f"| {name} | {int(keep.sum())} | {'-' if acc is None else f'{acc:.3f}'} | {db:.2f} dB |")


if __name__ == "__main__":
    main()
