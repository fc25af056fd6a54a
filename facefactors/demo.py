"""``facefactors demo``: procedural faces -> train the best available method -> evaluate -> report."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from facefactors.config import RunConfig, build_dataclass
from facefactors.errors import FacefactorsError

MARKER = ".facefactors-demo"

# The best method available moves here as methods land; sizes fit the time budget on 2 CPU cores.
DEMO = {
    "full": {
        "minutes": 10,
        "config": {
            "seed": 0,
            "data": {"name": "synthfaces", "size": 64, "n": 20000, "n_identities": 100, "seed": 0},
            "model": {"method": "autoencoder", "attributes": ["identity", "expression", "illumination"],
                      "width": 32, "part_dims": {"identity": 64, "expression": 16, "illumination": 16, "rest": 64}},
            "method": {"lr": 1e-3},
            "train": {"steps": 2400, "batch_size": 64, "time_budget_min": 10, "checkpoint_every": 2000,
                      "preview_every": 1000},
            "eval": {"n_pairs": 200, "max_train": 3000, "max_test": 1500, "oracle_steps": 600,
                     "tsne_points": 600, "identity": {"max_verify_images": 4000, "edit_images": 64},
                     "suite": ["mig_dci_sap", "entropy", "hopkins", "tsne", "frechet", "readback", "identity",
                               "attribute_interpolation"]},
        },
    },
    "quick": {
        "minutes": 2,
        "config": {
            "seed": 0,
            "data": {"name": "synthfaces", "size": 32, "n": 5000, "n_identities": 40, "seed": 0},
            "model": {"method": "autoencoder", "attributes": ["identity", "expression", "illumination"],
                      "width": 32, "part_dims": {"identity": 32, "expression": 8, "illumination": 8, "rest": 32}},
            "method": {"lr": 2e-3},
            "train": {"steps": 1200, "batch_size": 64, "time_budget_min": 1.2, "checkpoint_every": 600,
                      "preview_every": 400},
            "eval": {"n_pairs": 100, "max_train": 1500, "max_test": 800, "mlp_hidden": 128, "oracle_steps": 300,
                     "suite": ["mig_dci_sap", "entropy", "frechet", "readback"]},
        },
    },
}


def _prepare(out: Path) -> None:
    if out.exists():
        if not (out / MARKER).exists():
            raise FacefactorsError(f"{out} exists and is not a demo run; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by facefactors demo; the next demo replaces this folder\n")


def run_demo(quick: bool = False, out: Path = Path("runs/demo"), device: str = "auto") -> int:
    from facefactors.cli import _quiet, print_headline
    from facefactors.data import make_dataset
    from facefactors.eval.evaluate import EvalConfig, evaluate
    from facefactors.runs import resolve_device
    from facefactors.train.trainer import Trainer

    plan = DEMO["quick" if quick else "full"]
    cfg: RunConfig = build_dataclass(RunConfig, plan["config"])
    dev = resolve_device(device)
    cfg.train.device = str(dev)
    d = cfg.data
    print(f"facefactors demo{' --quick' if quick else ''}: about {plan['minutes']} minutes on 2 CPU cores "
          f"(less on a GPU).\n  1. generate {d['n']} SynthFaces at {d['size']}px\n  2. train "
          f"'{cfg.model.method}' (at most {cfg.train.steps} steps or {cfg.train.time_budget_min:g} min)\n"
          f"  3. evaluate (leakage probes, reconstruction, counterfactual transfers, "
          f"{', '.join(cfg.eval.get('suite', ['the full suite']))}) and write {out}/report.html",
          flush=True)
    _prepare(out)
    t0 = time.perf_counter()
    ds = make_dataset(cfg.data)
    print(f"[1/3] generated {len(ds)} images in {time.perf_counter() - t0:.1f} s", flush=True)
    Trainer(cfg, out, dataset=ds).fit()
    print("[3/3] evaluating", flush=True)
    from facefactors.runs import load_run

    run = load_run(out, device=str(dev), dataset=ds)
    metrics = evaluate(run.model, ds, out, build_dataclass(EvalConfig, cfg.eval, "eval"), device=str(dev),
                       log=_quiet)
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min. Headline figures:")
    print_headline(metrics)
    print(f"report: {(out / 'report.html').resolve()}")
    return 0
