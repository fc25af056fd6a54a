"""The evaluation protocol every method goes through: one call, one metrics.json, one report.

``evaluate`` encodes (subsampled) train and test splits, fits the leakage probes, measures
reconstruction and, on procedural data, counterfactual transfer; then the evaluation suite
(``EvalConfig.suite``): MIG/DCI/SAP, posterior entropy per part, Hopkins statistics within
clusters, t-SNE per part, few-shot recognition of unseen identities and Fréchet distances with
the evaluation oracle's features. It writes ``metrics.json``, the figures under ``figures/``
and a self-contained ``report.html``.
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from facefactors.data.specs import ImageDataset
from facefactors.errors import FacefactorsError
from facefactors.eval.counterfactual import counterfactual_transfer
from facefactors.eval.latents import encode_split, parts_of
from facefactors.eval.probes import leakage_matrix
from facefactors.eval.reconstruction import reconstruction_metrics
from facefactors.io import save_png, write_json
from facefactors.latent import Latent

SUITE = ("mig_dci_sap", "entropy", "hopkins", "tsne", "fewshot", "frechet", "readback", "identity", "complements",
         "memorisation", "attribute_interpolation", "switch_edits", "sampling")
CF_RATIO_KEYS = ("ratio_to_reconstruction", "ratio_to_no_change",
                 "region_ratio_to_reconstruction", "region_ratio_to_no_change",
                 "ratio_donor_part_only", "ratio_recipient_others_only")


@dataclass
class EvalConfig:
    """Evaluation settings (stored in metrics.json as ``eval_config``)."""

    n_pairs: int = 256            # counterfactual pairs per part
    max_train: int = 4000         # train latents the probes see (subsampled, seeded)
    max_test: int = 2000          # test latents for probes and reconstruction
    mlp_hidden: int = 256         # hidden units of the MLP probe
    probes: tuple[str, ...] = ("linear", "mlp")
    batch_size: int = 256
    seed: int = 0
    grid_size: int = 6            # images per side of swap grids, rows of the other figures
    # -- the evaluation suite (any subset of SUITE); "readback": the oracle reads counterfactual
    # transfers back (donor label carried, continuous factors' Spearman correlation); "identity":
    # verification, SVM attribute recognition, Gaussianity and SVM-direction editing (eval/identity.py,
    # settings under ``identity``: IdentityEvalConfig) -------------------------------------------
    # "complements": each part against everything but it (eval/complements.py, ComplementConfig under
    # ``complements``); "memorisation": train/test RMSE and nearest training images of reconstructions
    # (eval/memorisation.py, MemorisationConfig under ``memorisation``); "switch_edits": methods whose
    # parts hold attribute values (ifcvae_gan) set them and the oracle scores the edits; "sampling":
    # methods with a prior for ``rest`` decode random rest codes with fixed attribute parts, and
    # transfer attribute parts of unseen classes (eval/sampling.py)
    suite: tuple[str, ...] = SUITE
    identity: dict[str, Any] = field(default_factory=dict)
    complements: dict[str, Any] = field(default_factory=dict)
    memorisation: dict[str, Any] = field(default_factory=dict)
    n_bins: int = 20              # equal-width bins for continuous factors (MIG/DCI/SAP) and MIG codes
    dci_max_train: int = 500      # GBT cost grows with samples x dims x classes: see disentanglement.py
    dci_max_test: int = 500
    dci_estimators: int = 10      # disentanglement_lib: 100
    dci_max_features: int | None = 256   # candidate dims per split for wider codes (None: all)
    dci_chance: bool = False      # also fit DCI on shuffled codes: the chance floor of D (doubles DCI time)
    sap_max_train: int = 2000
    sap_max_test: int = 1000
    hopkins_points: int = 2000    # test codes per part for the Hopkins statistics
    tsne_points: int = 1000       # test codes per part in each t-SNE figure
    fewshot_shots: tuple[int, ...] = (1, 5, 10)
    fewshot_draws: int = 5
    fewshot_max: int = 4000       # unseen-split images encoded for few-shot
    frechet_images: int = 1000    # reconstructed / sampled images per Fréchet distance
    oracle_cache: str | None = None      # folder for cached oracles (default $FACEFACTORS_CACHE or ~/.cache/facefactors)
    oracle_steps: int | None = None      # training steps of the oracle (None: OracleConfig's default)
    inception_weights: str | None = None  # pytorch-fid Inception weights file, if installed (never downloaded)

    def __post_init__(self):
        bad = [s for s in self.suite if s not in SUITE]
        if bad:
            raise FacefactorsError(f"unknown evaluation suite entry {bad[0]!r}; choose from {', '.join(SUITE)}")


def _subsample(indices: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) <= n:
        return indices
    return np.sort(rng.choice(indices, size=n, replace=False))


def evaluation_draw(ds: ImageDataset, cfg: EvalConfig, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The train and test images whose codes the probes see: seeded subsamples of at most
    ``cfg.max_train`` / ``cfg.max_test`` (seed ``cfg.seed`` unless given, which is the evaluation's own)."""
    rng = np.random.default_rng(cfg.seed if seed is None else seed)
    train_all = np.asarray(ds.split("train"), dtype=np.int64)
    test_all = np.asarray(ds.split("test"), dtype=np.int64)
    if len(train_all) == 0 or len(test_all) == 0:
        raise FacefactorsError(f"dataset {ds.name!r} needs non-empty train and test splits to evaluate")
    return _subsample(train_all, cfg.max_train, rng), _subsample(test_all, cfg.max_test, rng)


def _safe_name(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", part)


def _upscale(grid: np.ndarray, cell: int, min_cell: int = 48) -> np.ndarray:
    """Nearest-neighbour enlarge grids of tiny images so figures stay legible."""
    k = max(1, -(-min_cell // max(cell, 1)))
    return grid if k == 1 else np.repeat(np.repeat(grid, k, axis=0), k, axis=1)


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The figures to judge a run by, from a metrics dict.

    ``max_offdiag_leakage[probe]`` = the largest normalized leakage where part != attribute
    (the ``rest`` part is off-diagonal for every attribute), with its part and attribute;
    ``diagonal_accuracy[probe][attribute]`` = probe accuracy of the attribute's own part;
    when ``metrics["attributes"]`` marks some attributes identity-linked,
    ``max_offdiag_leakage_unlinked`` also leaves out those read from the ``identity`` part
    (skin tone in the identity code is no leak).
    """
    out: dict[str, Any] = {}
    rec = metrics.get("reconstruction") or {}
    for key in ("psnr", "mse", "ssim"):
        out[key] = rec.get(key)
    linked = {a for a, s in (metrics.get("attributes") or {}).items() if s.get("identity_linked")}
    leak = metrics.get("leakage") or {}
    out["max_offdiag_leakage"], out["diagonal_accuracy"] = {}, {}
    if linked:
        out["max_offdiag_leakage_unlinked"] = {}
    for kind, by_part in leak.items():
        best = None
        best_unlinked = None
        diag: dict[str, float] = {}
        for part, by_attr in by_part.items():
            for attr, entry in by_attr.items():
                value = entry.get("normalized")
                if part != "rest" and part == attr:
                    diag[attr] = entry.get("accuracy")
                    continue
                if value is None:
                    continue
                if best is None or value > best["value"]:
                    best = {"value": value, "part": part, "attribute": attr}
                if not (part == "identity" and attr in linked):
                    if best_unlinked is None or value > best_unlinked["value"]:
                        best_unlinked = {"value": value, "part": part, "attribute": attr}
        out["max_offdiag_leakage"][kind] = best
        out["diagonal_accuracy"][kind] = diag
        if "max_offdiag_leakage_unlinked" in out:
            out["max_offdiag_leakage_unlinked"][kind] = best_unlinked
    out["counterfactual"] = {p: {k: m.get(k) for k in CF_RATIO_KEYS}
                             for p, m in (metrics.get("counterfactual") or {}).items()}
    for p, m in (metrics.get("counterfactual") or {}).items():
        r = m.get("oracle")
        if r:
            out["counterfactual"][p]["label_from_donor"] = r.get("label_from_donor")
            for key in ("spearman_donor", "spearman_donor_recon", "spearman_donor_truth"):
                out["counterfactual"][p][key] = r.get(key)
    out["mig"] = metrics.get("mig")
    out["dci_disentanglement"] = (metrics.get("dci") or {}).get("disentanglement")
    return out


def _f(v, fmt: str = "{:.3f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def spearman_text(readback: Mapping[str, Any], fmt: Callable[[Any], str]) -> str:
    """'col rho (reconstructions r, true images t), ...' for a part's headline read-back."""
    rec, truth = readback.get("spearman_donor_recon") or {}, readback.get("spearman_donor_truth") or {}
    out = []
    for c, v in (readback.get("spearman_donor") or {}).items():
        ceilings = [f"{name} {fmt(d[c])}" for name, d in (("reconstructions", rec), ("true images", truth))
                    if d.get(c) is not None]
        out.append(f"{c} {fmt(v)}" + (f" ({', '.join(ceilings)})" if ceilings else ""))
    return ", ".join(out)


def headline_lines(metrics: Mapping[str, Any]) -> list[str]:
    """``headline`` as short human-readable lines (for the CLI summary)."""
    h = headline(metrics)
    lines = [f"reconstruction: PSNR {_f(h['psnr'], '{:.2f}')} dB, MSE {_f(h['mse'], '{:.5f}')}, "
             f"SSIM {_f(h['ssim'])}"]
    for kind, best in h["max_offdiag_leakage"].items():
        where = f" ({best['part']} -> {best['attribute']})" if best else ""
        diag = ", ".join(f"{a} {_f(v)}" for a, v in h["diagonal_accuracy"][kind].items()) or "none"
        lines.append(f"{kind} probe: max off-diagonal leakage {_f(best and best['value'])}{where}; "
                     f"diagonal accuracy: {diag}")
    for part, r in h["counterfactual"].items():
        lines.append(f"counterfactual {part}: ratio to reconstruction {_f(r['ratio_to_reconstruction'])}, "
                     f"to no change {_f(r['ratio_to_no_change'])}; region: "
                     f"{_f(r['region_ratio_to_reconstruction'])} / {_f(r['region_ratio_to_no_change'])}")
        if r.get("label_from_donor") is not None or r.get("spearman_donor"):
            rho = spearman_text(r, _f)
            lines.append(f"  read back by the oracle: donor's {part} label {_f(r.get('label_from_donor'))}"
                         + (f"; Spearman with the donor's {rho}" if rho else ""))
    if "mig" in metrics or "dci" in metrics:
        dci = metrics.get("dci") or {}
        lines.append(f"MIG {_f(h['mig'])}, DCI disentanglement {_f(h['dci_disentanglement'])} / completeness "
                     f"{_f(dci.get('completeness'))} / informativeness {_f(dci.get('informativeness'))}, "
                     f"SAP {_f(metrics.get('sap'))}")
    fd = (metrics.get("frechet") or {}).get("reconstructions")
    if fd:
        lines.append(f"Fréchet distance of reconstructions to real test images {_f(fd['value'], '{:.2f}')} "
                     f"({fd['extractor']})")
    if metrics.get("identity"):
        from facefactors.eval.identity import identity_headline_lines

        lines += identity_headline_lines(metrics["identity"])
    return lines


def _figures(model, ds: ImageDataset, parts: list[str], test_all: np.ndarray, leakage: dict,
             cf_examples: dict, fig_dir: Path, cfg: EvalConfig, device, log) -> dict[str, Path]:
    """Write every figure; returns title -> path in report order."""
    from facefactors.viz.grids import counterfactual_grid, interpolation_strips, reconstruction_grid, swap_grid
    from facefactors.viz.plots import plot_image_panels, plot_leakage

    figures: dict[str, Path] = {}
    rng = np.random.default_rng([cfg.seed, 1])
    k = max(1, min(cfg.grid_size, len(test_all) // 2))
    sel = rng.choice(test_all, size=min(2 * k, len(test_all)), replace=False)
    src_idx, don_idx = sel[:k], (sel[k:2 * k] if len(sel) >= 2 * k else sel[:k])
    src, don = ds.images[src_idx], ds.images[don_idx]
    cell = ds.image_size
    bs = cfg.batch_size

    log("  figure: reconstructions")
    rec_idx = sel[:2 * k]
    path = fig_dir / "reconstructions.png"
    save_png(path, _upscale(reconstruction_grid(model, ds.images[rec_idx], columns=k, batch_size=bs,
                                                device=device), cell))
    figures["Reconstructions (originals above reconstructions)"] = path
    for p in parts:
        log(f"  figure: swap grid and interpolation for part {p!r}")
        path = fig_dir / f"swap_{_safe_name(p)}.png"
        save_png(path, _upscale(swap_grid(model, src, don, p, batch_size=bs, device=device), cell))
        figures[f"Swap {p} (rows: sources, columns: donors of {p})"] = path
        path = fig_dir / f"interp_{_safe_name(p)}.png"
        save_png(path, _upscale(interpolation_strips(model, src, don, p, steps=8, batch_size=bs,
                                                     device=device), cell))
        figures[f"Interpolation of {p} (a, 8 steps, b)"] = path
    if "attribute_interpolation" in cfg.suite and len(parts) > 1:
        from facefactors.viz.attribute_interpolation import plot_attribute_interpolation

        log("  figure: attribute interpolation (each part, all but each part, the whole code)")
        path = plot_attribute_interpolation(model, src[:1], don[:1], fig_dir / "interp_attributes.png",
                                            batch_size=bs, device=device)
        figures["Interpolation a -> b: rows per part, all but each part, and the whole code"] = path
    if any(by_attr for by_part in leakage.values() for by_attr in by_part.values()):
        path = fig_dir / "leakage.png"
        plot_leakage(leakage, path, title=f"leakage on {ds.name}")
        figures["Leakage (normalized; diagonal outlined)"] = path
    if cf_examples:
        panels = {f"{p}: A | B | truth | transfer": _upscale(counterfactual_grid(e["a"], e["b"], e["truth"],
                                                                                  e["transfer"]), cell)
                  for p, e in cf_examples.items()}
        path = fig_dir / "counterfactual.png"
        plot_image_panels(panels, path)
        figures["Counterfactual transfer examples"] = path
    return figures


def _reconstruct(model, images, cfg: EvalConfig, device):
    from facefactors.eval.latents import decode_uint8, encode_images

    return decode_uint8(model, encode_images(model, images, cfg.batch_size, device), cfg.batch_size, device)


def sample_images(model, ds: ImageDataset, indices: np.ndarray, n: int, seed: int = 0, batch_size: int = 256,
                  device="cpu") -> tuple[Any, list[str]]:
    """Decode random draws from the method's priors: every part the method can ``sample`` is
    drawn, the others come from the codes of ``n`` random real images (``indices``). Returns
    (uint8 images or None when no part has a prior, the sampled parts)."""
    import torch

    from facefactors.eval.latents import decode_uint8, encode_images

    rng = np.random.default_rng([seed, 29])
    pick = rng.choice(indices, size=n, replace=len(indices) < n)
    z = encode_images(model, ds.images[torch.from_numpy(np.asarray(pick))], batch_size, device)
    gen = torch.Generator().manual_seed(seed)
    if hasattr(model, "sample_latent"):  # one joint prior draw for every part
        with torch.no_grad():
            joint = model.sample_latent(n, generator=gen)
        return decode_uint8(model, joint, batch_size, device), list(joint.parts)
    drawn = {}
    for p in z.parts:
        try:
            with torch.no_grad():
                t = model.sample(p, n, generator=gen)
        except NotImplementedError:
            continue
        t = torch.as_tensor(t).detach().float().cpu()
        if t.shape != z[p].shape:
            raise FacefactorsError(f"method {getattr(model, 'name', '?')!r}: sample({p!r}, {n}) gave shape "
                                   f"{tuple(t.shape)}, the encoder gives {tuple(z[p].shape)}")
        drawn[p] = t
    if not drawn:
        return None, []
    return decode_uint8(model, z.replace(**drawn), batch_size, device), list(drawn)


def _has_prior(model, part: str) -> bool:
    import torch

    try:
        with torch.no_grad():
            model.sample(part, 1, generator=torch.Generator().manual_seed(0))
    except NotImplementedError:
        return False
    return True


def _oracle(ds: ImageDataset, cfg: EvalConfig, device, log, model=None):
    """The evaluation oracle (trained on the real train split, cached), when the suite needs it:
    to read counterfactual transfers back (``readback``) or as the Fréchet feature extractor."""
    from facefactors.eval.frechet import inception_weights_path
    from facefactors.eval.oracle import OracleConfig, get_oracle

    suite = set(cfg.suite)
    needs = ("readback" in suite and ds.factors is not None and ds.renderer is not None) or (
        "frechet" in suite and inception_weights_path(cfg.inception_weights) is None) or (
        "identity" in suite and cfg.identity.get("edit", True)) or (
        "switch_edits" in suite and hasattr(model, "switch_parts")) or "sampling" in suite
    if not needs:
        return None
    log("evaluate: evaluation oracle (an independent network trained on the real train images)")
    ocfg = OracleConfig() if cfg.oracle_steps is None else OracleConfig(steps=cfg.oracle_steps)
    return get_oracle(ds, ocfg, cache_dir=cfg.oracle_cache, device=device, log=lambda m: log("  " + m))


def fitted_gaussian_samples(model, ds: ImageDataset, indices: np.ndarray, n: int, seed: int = 0,
                            batch_size: int = 256, device="cpu", max_fit: int = 5000):
    """Decode ``n`` draws from one Gaussian (mean, full covariance) fitted to the codes of up to
    ``max_fit`` training images, all parts concatenated: ex-post density estimation (Ghosh et al.,
    "From variational to deterministic autoencoders", 2020). It gives every method, priorless
    ones included, samples measured the same way. None when there are too few codes to fit."""
    import torch

    from facefactors.eval.latents import decode_uint8, encode_images

    rng = np.random.default_rng([seed, 37])
    pick = np.sort(rng.choice(indices, size=min(max_fit, len(indices)), replace=False))
    if len(pick) < 2:
        return None
    z = encode_images(model, ds.images[torch.from_numpy(pick)], batch_size, device)
    flat = z.flatten().double().numpy()
    mean, cov = flat.mean(0), np.cov(flat, rowvar=False).reshape(flat.shape[1], flat.shape[1])
    draws = rng.multivariate_normal(mean, cov, size=n, method="eigh")   # eigh: PSD-safe for rank-deficient codes
    parts, start = {}, 0
    for p in z.parts:
        shape = z[p].shape[1:]
        size = int(np.prod(shape))
        parts[p] = torch.from_numpy(draws[:, start:start + size]).float().reshape(n, *shape)
        start += size
    return decode_uint8(model, Latent(parts), batch_size, device)


def _frechet(model, ds: ImageDataset, test_all: np.ndarray, train_all: np.ndarray, cfg: EvalConfig, device,
             log, oracle=None) -> tuple[dict, dict]:
    """Fréchet distances (reconstructions, prior samples, real train as a floor) and the oracle summary."""
    import torch

    from facefactors.eval.frechet import frechet_to_real, inception_weights_path

    use_inception = inception_weights_path(cfg.inception_weights) is not None
    if use_inception:
        oracle = None
    oracle_info: dict = {}
    if oracle is not None:
        oracle_info = {"fingerprint": oracle.fingerprint, "test": oracle.report}
    rng = np.random.default_rng([cfg.seed, 31])
    n = min(cfg.frechet_images, len(test_all))
    real_idx = np.sort(rng.choice(test_all, size=n, replace=False))
    kw = dict(batch_size=cfg.batch_size, seed=cfg.seed, inception_weights=cfg.inception_weights, device=device)
    out: dict = {}
    if n < 2:
        return {"skipped": f"only {n} test images"}, oracle_info
    rec = _reconstruct(model, ds.images[torch.from_numpy(real_idx)], cfg, device)
    out["reconstructions"] = frechet_to_real(rec, ds, oracle, real_indices=real_idx, **kw)
    samples, drawn = sample_images(model, ds, test_all, n, cfg.seed, cfg.batch_size, device)
    if samples is None:
        out["samples"] = None
        out["samples_skipped"] = "the method has no prior to sample from"
    else:
        out["samples"] = dict(frechet_to_real(samples, ds, oracle, real_indices=real_idx, **kw), sampled_parts=drawn)
    fitted = fitted_gaussian_samples(model, ds, train_all, n, cfg.seed, cfg.batch_size, device)
    if fitted is not None:
        out["samples_fitted"] = dict(frechet_to_real(fitted, ds, oracle, real_indices=real_idx, **kw),
                                     density="Gaussian fitted to training codes (ex-post, Ghosh et al. 2020)")
    m = min(n, len(train_all))
    if m >= 2:
        train_idx = np.sort(rng.choice(train_all, size=m, replace=False))
        out["real_train"] = frechet_to_real(ds.images[torch.from_numpy(train_idx)], ds, oracle,
                                            real_indices=real_idx, **kw)
    for k in ("reconstructions", "samples", "samples_fitted", "real_train"):
        if out.get(k):
            log(f"  Fréchet distance {k} vs real test: {out[k]['value']:.3f} ({out[k]['extractor']})")
    return out, oracle_info


def _suite(model, ds: ImageDataset, train: dict, test: dict, parts: list[str], train_all: np.ndarray,
           test_all: np.ndarray, test_idx: np.ndarray, cfg: EvalConfig, device, log, oracle=None) -> dict[str, Any]:
    """The metrics of ``cfg.suite`` that apply to this dataset and model (figures excluded)."""
    from facefactors.eval.disentanglement import disentanglement_metrics
    from facefactors.eval.entropy import model_posteriors, posterior_entropy
    from facefactors.eval.fewshot import fewshot_unseen
    from facefactors.eval.hopkins import hopkins_table

    out: dict[str, Any] = {}
    suite = set(cfg.suite)
    if "mig_dci_sap" in suite and any(f"label/{a}" in test for a in ds.attributes):
        log("evaluate: MIG, DCI, SAP over all parts' dimensions")
        out.update(disentanglement_metrics(
            train, test, ds.attributes, parts, n_bins=cfg.n_bins, dci_max_train=cfg.dci_max_train,
            dci_max_test=cfg.dci_max_test, dci_estimators=cfg.dci_estimators, dci_max_features=cfg.dci_max_features,
            sap_max_train=cfg.sap_max_train, sap_max_test=cfg.sap_max_test, dci_chance=cfg.dci_chance,
            seed=cfg.seed, log=log))
    if "entropy" in suite:
        own = model_posteriors(model, ds, test_idx, cfg.batch_size, device)
        log(f"evaluate: posterior entropy per part ({'the method' if own else 'probe'} classifiers)")
        out["entropy"] = posterior_entropy(train, test, ds.attributes, parts, own, cfg.max_train, cfg.max_test,
                                           cfg.seed, log)
    if "hopkins" in suite:
        log("evaluate: Hopkins statistics within clusters")
        out["hopkins"] = hopkins_table(test, ds.attributes, parts, max_points=cfg.hopkins_points, seed=cfg.seed,
                                       log=log)
    unseen = np.asarray(ds.splits.get("unseen", np.zeros(0)), np.int64)
    if "fewshot" in suite and len(unseen) and "identity" in ds.labels:
        log(f"evaluate: few-shot recognition of unseen identities ({len(unseen)} images)")
        rng = np.random.default_rng([cfg.seed, 37])
        pick = _subsample(unseen, cfg.fewshot_max, rng)
        arrays = encode_split(model, ds, pick, cfg.batch_size, device)
        out["fewshot"] = fewshot_unseen(arrays, train, parts, "identity", cfg.fewshot_shots, cfg.fewshot_draws,
                                        seed=cfg.seed, log=log)
    if "frechet" in suite:
        log("evaluate: Fréchet distances")
        out["frechet"], oracle_info = _frechet(model, ds, test_all, train_all, cfg, device, log, oracle)
        if oracle_info:
            out["oracle"] = oracle_info
    return out


def evaluate(model, ds: ImageDataset, out_dir, cfg: EvalConfig | None = None, device="cpu",
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole protocol on ``model`` and ``ds``; write metrics.json, figures/, report.html.

    Returns the metrics dict (the content of metrics.json).
    """
    from facefactors.viz.report import write_report

    cfg = cfg or EvalConfig()
    log = log or (lambda s: None)
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    t_start = time.perf_counter()
    train_all = np.asarray(ds.split("train"), dtype=np.int64)
    test_all = np.asarray(ds.split("test"), dtype=np.int64)
    train_idx, test_idx = evaluation_draw(ds, cfg)

    log(f"evaluate: encoding {len(train_idx)} train and {len(test_idx)} test images of {ds.name!r}")
    t0 = time.perf_counter()
    train = encode_split(model, ds, train_idx, cfg.batch_size, device)
    test = encode_split(model, ds, test_idx, cfg.batch_size, device)
    parts = parts_of(test)
    log(f"  encoded in {time.perf_counter() - t0:.1f}s; parts: "
        + ", ".join(f"{p} ({test['part/' + p].shape[1]})" for p in parts))

    log(f"evaluate: leakage probes ({', '.join(cfg.probes)})")
    leakage = leakage_matrix(train, test, ds.attributes, parts, cfg.probes, cfg.max_train, cfg.max_test,
                             cfg.mlp_hidden, cfg.seed, log)

    log("evaluate: reconstruction")
    reconstruction = reconstruction_metrics(model, ds, test_idx, cfg.batch_size, device)
    log(f"  PSNR {reconstruction['psnr']:.2f} dB, MSE {reconstruction['mse']:.5f}, SSIM {reconstruction['ssim']:.3f}")

    oracle = _oracle(ds, cfg, device, log, model)
    counterfactual: dict = {}
    cf_examples: dict = {}
    if ds.factors is not None and ds.renderer is not None:
        log(f"evaluate: counterfactual transfer ({cfg.n_pairs} pairs per part)")
        counterfactual, cf_examples = counterfactual_transfer(
            model, ds, test_all, cfg.n_pairs, cfg.seed, cfg.batch_size, device, parts,
            n_examples=min(cfg.grid_size, 4), log=log, oracle=oracle if "readback" in cfg.suite else None)

    suite = _suite(model, ds, train, test, parts, train_all, test_all, test_idx, cfg, device, log, oracle)
    if oracle is not None and "oracle" not in suite:
        suite["oracle"] = {"fingerprint": oracle.fingerprint, "test": oracle.report}

    metrics: dict[str, Any] = {
        "leakage": leakage,
        "reconstruction": reconstruction,
        "counterfactual": counterfactual,
        **suite,
        "parts": {p: int(test[f"part/{p}"].shape[1]) for p in parts},
        "attributes": {a: {"kind": s.kind, "num_classes": s.num_classes, "identity_linked": s.identity_linked}
                       for a, s in ds.attributes.items()},
        "dataset": {"name": ds.name, "size": len(ds), "n_train": int(len(train_all)), "n_test": int(len(test_all))},
        "method": getattr(model, "name", "") or type(model).__name__,
        "eval_config": dataclasses.asdict(cfg),
    }
    for key in ("probes", "suite", "fewshot_shots"):
        metrics["eval_config"][key] = list(getattr(cfg, key))
    extra_figures: dict[str, Path] = {}  # the suite sections' figures
    if "identity" in cfg.suite:
        from facefactors.config import build_dataclass
        from facefactors.eval.identity import IdentityEvalConfig, identity_evaluation

        log("evaluate: verification, attribute recognition, Gaussianity, editing")
        metrics["identity"], extra_figures = identity_evaluation(
            model, ds, out_dir, build_dataclass(IdentityEvalConfig, dict(cfg.identity), "eval.identity"), device,
            log, oracle=oracle, train=train, test=test)
    if "complements" in cfg.suite and len(parts) > 1:
        from facefactors.config import build_dataclass
        from facefactors.eval.complements import ComplementConfig, complement_evaluation

        log("evaluate: each part against its complement (everything but the part)")
        metrics["complements"], figs = complement_evaluation(
            model, ds, out_dir, build_dataclass(ComplementConfig, dict(cfg.complements), "eval.complements"), device,
            log, train=train, test=test)
        extra_figures.update(figs)
    if "switch_edits" in cfg.suite and getattr(model, "switch_parts", None) and oracle is not None:
        from facefactors.eval.switch_edits import switch_edit_report

        log("evaluate: switch edits (attribute parts set to each value), scored by the oracle")
        metrics["switch_edits"], figs = switch_edit_report(model, ds, out_dir, oracle, seed=cfg.seed,
                                                           batch_size=cfg.batch_size, device=device, log=log)
        extra_figures.update(figs)
    if "sampling" in cfg.suite and len(parts) == 2 and parts[-1] == "rest" and _has_prior(model, "rest"):
        from facefactors.eval.sampling import sampling_report

        log(f"evaluate: random rest codes with fixed {parts[0]!r}, few-shot transfer of unseen classes")
        metrics["sampling"], figs = sampling_report(model, ds, out_dir, part=parts[0], oracle=oracle, seed=cfg.seed,
                                                    batch_size=cfg.batch_size, device=device, log=log)
        extra_figures.update(figs)
    if "memorisation" in cfg.suite:
        from facefactors.config import build_dataclass
        from facefactors.eval.memorisation import MemorisationConfig, memorisation_evaluation

        log("evaluate: train/test reconstruction RMSE and the memorisation check")
        metrics["memorisation"], figs = memorisation_evaluation(
            model, ds, out_dir, build_dataclass(MemorisationConfig, dict(cfg.memorisation), "eval.memorisation"),
            device, log)
        extra_figures.update(figs)
    write_json(out_dir / "metrics.json", metrics)

    log("evaluate: figures")
    figures = _figures(model, ds, parts, test_all, leakage, cf_examples, fig_dir, cfg, device, log)
    figures.update(extra_figures)
    if "tsne" in cfg.suite:
        from facefactors.viz.tsne import tsne_figures

        figures.update(tsne_figures(test, ds.attributes, fig_dir, parts, cfg.tsne_points, cfg.seed, log))
    report = write_report(out_dir, metrics, figures, title=f"{metrics['method']} on {ds.name}")
    log(f"evaluate: wrote {out_dir / 'metrics.json'}, {len(figures)} figures and {report} "
        f"in {time.perf_counter() - t_start:.1f}s")
    for line in headline_lines(metrics):
        log("  " + line)
    return metrics
