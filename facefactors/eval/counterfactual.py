"""Counterfactual transfer error: swap a part and compare with the re-rendered truth.

For procedural data with ``factors`` and a ``renderer``, swapping part ``p`` of B into A
has a known answer: T = render(A's factors with B's values in ``factor_groups[p]``). The
decoded swap is scored against T and put in proportion to two references:

* ``ratio_to_reconstruction`` = MSE(transfer, T) / MSE(decode(encode(T)), T): 1 means the
  swap is as good as the model's own reconstruction of the truth;
* ``ratio_to_no_change`` = MSE(transfer, T) / MSE(A, T): 1 means the swap did no better
  than leaving A untouched (a decoder that ignores the part).

Small attributes (expression) change few pixels, so the same figures are also given
restricted to the pixels where A and T differ (``region_*``). A transfer can fail for two
reasons, and two more decodes tell them apart (both over the reconstruction error, as above):

* ``ratio_donor_part_only``: T's code with only part ``p`` taken from B. B and T share every
  factor of ``p`` and nothing else, so above 1 means ``p`` also carries what else B shows (its
  pose, its lighting, its own pixels): the part is not a function of its attribute;
* ``ratio_recipient_others_only``: A's code with only part ``p`` taken from T. Above 1 means A's
  other parts carry some of ``p``'s factors (A's identity, say) and the decoder uses them.
 With an evaluation oracle
(an independent network trained on real images, ``eval/oracle.py``) the transfers are
also read back: the share carrying B's label of the swapped attribute and A's labels of
the others, and Spearman correlations of regressed continuous factors with B's values
(factors the part owns, e.g. expression intensity) or A's (the rest), beside the same
correlation measured on the true counterfactual images (the oracle's own ceiling). All are ratios of means
over pairs, images in [0, 1]. A zero denominator gives 0 when the numerator is 0 too
and ``None`` otherwise (JSON has no infinity).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy.stats import spearmanr

from facefactors.data.specs import ImageDataset, to_float_image, to_uint8_image
from facefactors.eval.latents import as_nchw_uint8, inference
from facefactors.eval.reconstruction import to_unit
from facefactors.latent import swap

METRIC_KEYS = ("mse", "ratio_to_reconstruction", "ratio_to_no_change",
               "region_mse", "region_ratio_to_reconstruction", "region_ratio_to_no_change",
               "mse_donor_part_only", "ratio_donor_part_only", "mse_recipient_others_only",
               "ratio_recipient_others_only", "n_pairs")


def safe_ratio(num: float, den: float) -> float | None:
    """``num / den``; 0 when both are 0, ``None`` when only the denominator is."""
    if den > 0:
        return float(num / den)
    return 0.0 if num == 0 else None


def counterfactual_parts(model_parts: list[str], ds: ImageDataset) -> list[str]:
    """Parts that name an attribute with a non-empty factor group."""
    return [p for p in model_parts if ds.factor_groups.get(p)]


def sample_pairs(labels: np.ndarray, n_pairs: int, rng: np.random.Generator,
                 max_rounds: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """``n_pairs`` positions (a, b) into ``labels`` with a != b and ``labels[a] != labels[b]``.

    Pass ``np.arange(n)`` for plain random pairs. Returns fewer pairs (possibly none) when
    differing pairs are too rare to find by rejection sampling.
    """
    labels = np.asarray(labels)
    n = len(labels)
    got_a: list[np.ndarray] = []
    got_b: list[np.ndarray] = []
    have = 0
    for _ in range(max_rounds if n >= 2 else 0):
        need = n_pairs - have
        if need <= 0:
            break
        draw = max(4 * need, 64)
        a = rng.integers(0, n, draw)
        b = rng.integers(0, n, draw)
        ok = (a != b) & (labels[a] != labels[b])
        got_a.append(a[ok][:need])
        got_b.append(b[ok][:need])
        have += int(min(ok.sum(), need))
    if not got_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(got_a).astype(np.int64), np.concatenate(got_b).astype(np.int64)


def _renderer_images(ds: ImageDataset, factors: dict[str, np.ndarray]) -> torch.Tensor:
    return as_nchw_uint8(np.asarray(ds.renderer(factors)))


def counterfactual_transfer(model, ds: ImageDataset, indices=None, n_pairs: int = 256, seed: int = 0,
                            batch_size: int = 256, device: str | torch.device = "cpu",
                            parts: list[str] | None = None, n_examples: int = 6,
                            log: Callable[[str], None] | None = None, oracle=None
                            ) -> tuple[dict[str, dict], dict[str, dict[str, np.ndarray]]]:
    """Counterfactual transfer error per part, over seeded pairs from ``indices`` (default: test split).

    Returns ``(metrics, examples)``: ``metrics[part]`` has the keys of ``METRIC_KEYS``;
    ``examples[part]`` holds the first ``n_examples`` pairs as uint8 (n, H, W, C) arrays
    ``"a"``, ``"b"``, ``"truth"``, ``"transfer"``. Parts are those of ``parts`` (default: the
    model's latent parts) that name an attribute with a factor group; labels of discrete
    attributes must differ within a pair, otherwise pairs are random. With ``oracle``,
    ``metrics[part]["oracle"]`` holds the read-back figures (see ``oracle_readback``).
    """
    if ds.factors is None or ds.renderer is None:
        return {}, {}
    idx = np.asarray(ds.split("test") if indices is None else indices, dtype=np.int64)
    dev = torch.device(device)
    if parts is None:
        with inference(model):
            probe = model.encode(to_float_image(ds.images[torch.from_numpy(idx[:1])].to(dev)))
        parts = list(probe.parts)
    parts = counterfactual_parts(parts, ds)
    metrics: dict[str, dict] = {}
    examples: dict[str, dict[str, np.ndarray]] = {}
    for pi, p in enumerate(parts):
        rng = np.random.default_rng([seed, pi])
        spec = ds.attributes.get(p)
        if spec is not None and spec.discrete and p in ds.labels:
            labels = ds.labels[p].cpu().numpy()[idx]
        else:
            labels = np.arange(len(idx))  # continuous or unlabelled: any two distinct images
        a_pos, b_pos = sample_pairs(labels, n_pairs, rng)
        if len(a_pos) == 0:
            if log:
                log(f"  counterfactual {p}: no test pairs with differing {p!r} labels; skipped")
            continue
        ia, ib = idx[a_pos], idx[b_pos]
        cols = ds.factor_groups[p]
        se = {"transfer": 0.0, "recon": 0.0, "nochange": 0.0, "donor_part_only": 0.0, "recipient_others_only": 0.0}
        rse = {"transfer": 0.0, "recon": 0.0, "nochange": 0.0}
        n_values = 0
        n_region = 0
        ex = {"a": [], "b": [], "truth": [], "transfer": []}
        n_ex = 0
        read = {"transfer": [], "truth": [], "recon": []}
        with inference(model):
            for start in range(0, len(ia), batch_size):
                ba, bb = ia[start:start + batch_size], ib[start:start + batch_size]
                fa = ds.factor_rows(ba)
                fb = ds.factor_rows(bb)
                ft = {k: (np.array(v, copy=True)) for k, v in fa.items()}
                for col in cols:
                    ft[col] = np.array(fb[col], copy=True)
                t_u8 = _renderer_images(ds, ft)
                a_u8 = as_nchw_uint8(ds.images[torch.from_numpy(ba)])
                b_u8 = as_nchw_uint8(ds.images[torch.from_numpy(bb)])
                xa, xb, xt = (to_float_image(u.to(dev)) for u in (a_u8, b_u8, t_u8))
                za, zb, zt = model.encode(xa), model.encode(xb), model.encode(xt)
                transfer = model.decode(swap(za, zb, p)).float().clamp(-1, 1)
                recon = model.decode(zt).float().clamp(-1, 1)
                ut = to_unit(xt).cpu()
                donor_part_only = model.decode(swap(zt, zb, p)).float().clamp(-1, 1)
                recipient_others_only = model.decode(swap(za, zt, p)).float().clamp(-1, 1)
                outs = {"transfer": to_unit(transfer).cpu(), "recon": to_unit(recon).cpu(),
                        "nochange": to_unit(xa).cpu(), "donor_part_only": to_unit(donor_part_only).cpu(),
                        "recipient_others_only": to_unit(recipient_others_only).cpu()}
                region = (a_u8 != t_u8).any(dim=1, keepdim=True).expand_as(a_u8)
                n_values += ut.numel()
                n_region += int(region.sum())
                for k, img in outs.items():
                    sq = (img - ut).double() ** 2
                    se[k] += float(sq.sum())
                    if k in rse:
                        rse[k] += float(sq[region].sum())
                if oracle is not None:
                    read["transfer"].append(oracle.predict(to_uint8_image(transfer.cpu())))
                    read["truth"].append(oracle.predict(t_u8))
                    read["recon"].append(oracle.predict(to_uint8_image(recon.cpu())))
                if n_ex < n_examples:
                    take = min(n_examples - n_ex, len(ba))
                    for key, u8 in (("a", a_u8), ("b", b_u8), ("truth", t_u8),
                                    ("transfer", to_uint8_image(transfer.cpu()))):
                        ex[key].append(u8[:take].permute(0, 2, 3, 1).numpy())
                    n_ex += take
        mse = se["transfer"] / n_values
        region_mse = rse["transfer"] / n_region if n_region else None
        metrics[p] = {
            "mse": mse,
            "ratio_to_reconstruction": safe_ratio(se["transfer"], se["recon"]),
            "ratio_to_no_change": safe_ratio(se["transfer"], se["nochange"]),
            "region_mse": region_mse,
            "region_ratio_to_reconstruction": safe_ratio(rse["transfer"], rse["recon"]) if n_region else None,
            "region_ratio_to_no_change": safe_ratio(rse["transfer"], rse["nochange"]) if n_region else None,
            "mse_donor_part_only": se["donor_part_only"] / n_values,
            "ratio_donor_part_only": safe_ratio(se["donor_part_only"], se["recon"]),
            "mse_recipient_others_only": se["recipient_others_only"] / n_values,
            "ratio_recipient_others_only": safe_ratio(se["recipient_others_only"], se["recon"]),
            "n_pairs": int(len(ia)),
        }
        if oracle is not None:
            metrics[p]["oracle"] = oracle_readback(ds, p, ia, ib, _stack(read["transfer"]), _stack(read["truth"]),
                                                   _stack(read["recon"]))
        examples[p] = {k: np.concatenate(v) for k, v in ex.items()}
        if log:
            m = metrics[p]
            log(f"  counterfactual {p}: mse {mse:.5f}, ratio to reconstruction {_fmt(m['ratio_to_reconstruction'])}, "
                f"region ratio to no change {_fmt(m['region_ratio_to_no_change'])} ({len(ia)} pairs)")
    return metrics, examples


def _stack(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def oracle_readback(ds: ImageDataset, part: str, ia: np.ndarray, ib: np.ndarray,
                    transfer: dict[str, np.ndarray], truth: dict[str, np.ndarray],
                    recon: dict[str, np.ndarray] | None = None) -> dict:
    """What an independent oracle reads from transfers of ``part`` from B (``ib``) into A (``ia``).

    ``label_from_donor``: share of transfers classified as B's label of ``part`` (when it is a
    labelled discrete attribute); ``labels_kept[attr]``: share classified as A's label for each
    other discrete attribute (for identity-linked ones too: identity swaps change those);
    ``spearman_donor[col]`` for continuous factors ``part`` owns (B's values) and
    ``spearman_kept[col]`` for the others (A's), over the pairs whose source image shows the factor
    (``ds.factor_hidden``: a neutral donor has no intensity to transfer); ``*_truth`` the same read
    from the true counterfactuals, and ``*_recon`` from the model's reconstructions of them (what
    the model can render at all: a transfer is rarely read better than that).
    """
    owned = set(ds.factor_groups.get(part, []))
    out: dict = {"labels_kept": {}, "labels_kept_truth": {}, "spearman_donor": {}, "spearman_donor_truth": {},
                 "spearman_kept": {}, "spearman_kept_truth": {}}
    for name, spec in ds.attributes.items():
        if not spec.discrete or name not in transfer:
            continue
        y = ds.labels[name].cpu().numpy()
        if name == part:
            out["label_from_donor"] = float(np.mean(transfer[name] == y[ib]))
            out["label_from_donor_truth"] = float(np.mean(truth[name] == y[ib]))
        else:
            out["labels_kept"][name] = float(np.mean(transfer[name] == y[ia]))
            out["labels_kept_truth"][name] = float(np.mean(truth[name] == y[ia]))
    for col in sorted(k for k in transfer if ds.factors is not None and k in ds.factors
                      and not (k in ds.attributes and ds.attributes[k].discrete)):
        rows = ib if col in owned else ia
        shown = visible_rows(ds, col, rows)
        src = np.asarray(ds.factors[col], dtype=np.float64)[rows][shown]
        key = "spearman_donor" if col in owned else "spearman_kept"
        out[key][col] = _spearman(src, transfer[col][shown])
        out[key + "_truth"][col] = _spearman(src, truth[col][shown])
        if recon is not None:
            out.setdefault(key + "_recon", {})[col] = _spearman(src, recon[col][shown])
    return out


def visible_rows(ds: ImageDataset, col: str, rows: np.ndarray) -> np.ndarray:
    """Mask over ``rows``: where factor ``col`` shows in the image (``ds.factor_hidden``)."""
    shown = np.ones(len(rows), dtype=bool)
    for name, values in ds.factor_hidden.get(col, {}).items():
        shown &= ~np.isin(ds.labels[name].cpu().numpy()[rows], values)
    return shown


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
