"""Sampling and transfer for methods with a specified part and a sampled ``rest`` (cycle_vae and
the like): random z with a fixed s (Talwar's report Fig. 4.10), s-transfer grids and their
success rate (Fig. 4.1), and few-shot transfer of classes the model never saw (Figs. 4.14-4.16).

- ``fixed_s_samples``: one column per image, its specified part kept; rows decode fresh draws of
  the prior (``model.sample("rest")``), the same draw along a row.
- ``transfer_success``: decode (z_i, s_j) for pairs of images of different classes; the evaluation
  oracle (trained on real images) reads the class; ``donor_rate`` is the share read as s_j's
  class, ``source_rate`` the share still read as z_i's. ``rest_retrieval``: re-encode each
  transfer and find the nearest source z (cosine) among the pairs' sources; the share that finds
  its own source says the style survived the transfer (chance ``1 / n_sources``).
- ``fewshot_transfer``: s taken from images of unseen classes (the ``unseen`` split, or classes
  moved there by ``hold_out_classes``), z from other images; a grid, and ``s_recognition``: the
  share of transfers whose re-encoded s is nearest (cosine) to the donor's unseen class mean
  among all unseen classes' means (computed from images not used as donors).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from facefactors.data.specs import ImageDataset
from facefactors.errors import FacefactorsError
from facefactors.eval.latents import as_nchw_uint8, decode_uint8, encode_images
from facefactors.latent import Latent, swap


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _sample_rest(model, n: int, seed: int, like: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(seed))
    try:
        with torch.no_grad():
            t = model.sample("rest", n, generator=gen)
    except NotImplementedError as e:
        raise FacefactorsError(f"method {getattr(model, 'name', '?')!r} cannot sample its rest part: {e}") from None
    t = torch.as_tensor(t).detach().float().cpu()
    if t.shape[1:] != like.shape[1:]:
        raise FacefactorsError(f"sample('rest') gave shape {tuple(t.shape)}, the encoder gives {tuple(like.shape)}")
    return t


def fixed_s_samples(model, images, part: str, n_samples: int = 6, seed: int = 0, gap: int = 2,
                    batch_size: int = 256, device: str | torch.device = "cpu") -> tuple[np.ndarray, torch.Tensor]:
    """Grid (row 0: the images; row r: decode(z_r ~ prior, s of each image)) and the decoded
    samples, uint8 (n_samples, N, C, H, W)."""
    from facefactors.viz.grids import image_grid, to_hwc

    x = as_nchw_uint8(images)
    z = encode_images(model, x, batch_size, device)
    z[part]  # unknown part -> clear error
    if part == "rest":
        raise FacefactorsError("fixed_s_samples keeps a specified part fixed; 'rest' is the sampled one")
    n = z.batch_size
    draws = _sample_rest(model, n_samples, seed, z["rest"])
    rows = Latent.cat([z.replace(rest=draws[r:r + 1].expand(n, *draws.shape[1:]).clone())
                       for r in range(n_samples)])
    out = decode_uint8(model, rows, batch_size, device).reshape(n_samples, n, *x.shape[1:])
    grid = image_grid([list(to_hwc(x))] + [list(to_hwc(out[r])) for r in range(n_samples)], gap)
    return grid, out


def transfer_success(model, ds: ImageDataset, indices, part: str, oracle, n_pairs: int = 500, seed: int = 0,
                     batch_size: int = 256, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Decode (rest of image i, ``part`` of image j) for pairs with different ``part`` labels and
    read the class back with ``oracle``; see the module doc for the returned rates."""
    from facefactors.eval.counterfactual import sample_pairs

    if part not in ds.labels or not ds.attribute(part).discrete:
        raise FacefactorsError(f"transfer success needs a categorical attribute named like the part, got {part!r}")
    idx = np.asarray(indices, np.int64).reshape(-1)
    labels = ds.labels[part].cpu().numpy()[idx]
    rng = np.random.default_rng([seed, 43])
    a, b = sample_pairs(labels, n_pairs, rng)
    if len(a) == 0:
        raise FacefactorsError(f"no pairs of images with different {part!r} labels")
    z = encode_images(model, ds.images[torch.from_numpy(idx)], batch_size, device)
    za, zb = z.index(torch.from_numpy(a)), z.index(torch.from_numpy(b))
    transfers = decode_uint8(model, swap(za, zb, part), batch_size, device)
    pred = np.asarray(oracle.predict(transfers)[part]).reshape(-1)
    back = encode_images(model, transfers, batch_size, device).flat("rest").numpy()
    sources, pos = np.unique(a, return_inverse=True)
    sims = _unit(back) @ _unit(z.flat("rest").numpy()[sources]).T
    n = len(back)
    return {"n_pairs": int(n), "donor_rate": float(np.mean(pred == labels[b])),
            "source_rate": float(np.mean(pred == labels[a])),
            "rest_retrieval": float(np.mean(sims.argmax(1) == pos)),
            "rest_retrieval_chance": float(1.0 / len(sources))}


def hold_out_classes(ds: ImageDataset, attribute: str, classes, shots: int = 0, seed: int = 0) -> ImageDataset:
    """A copy of ``ds`` whose images of ``classes`` (of ``attribute``) join the ``unseen`` split,
    except ``shots`` images per class kept in ``train`` (few-shot training, report Fig. 4.14).
    Images and labels are shared with ``ds``; only the splits change."""
    import dataclasses

    spec = ds.attribute(attribute)
    if not spec.discrete:
        raise FacefactorsError(f"attribute {attribute!r} is {spec.kind}; hold out classes of a categorical one")
    classes = np.asarray([spec.classes.index(c) if isinstance(c, str) and c in spec.classes else int(c)
                          for c in classes], np.int64)
    if len(classes) == 0 or classes.min() < 0 or classes.max() >= spec.num_classes:
        raise FacefactorsError(f"held-out classes {classes.tolist()} must lie in 0..{spec.num_classes - 1}")
    if shots < 0:
        raise FacefactorsError(f"shots={shots} must be non-negative")
    labels = ds.labels[attribute].cpu().numpy()
    rng = np.random.default_rng([seed, 47])
    keep = []
    for c in classes:
        members = np.intersect1d(np.flatnonzero(labels == c), ds.split("train"))
        keep.append(rng.permutation(members)[:shots])
    keep = np.concatenate(keep).astype(np.int64) if keep else np.zeros(0, np.int64)
    held = np.isin(labels, classes)
    splits = {k: np.sort(np.setdiff1d(v[~held[v]], keep) if k != "train" else
                         np.union1d(v[~held[v]], keep)).astype(np.int64)
              for k, v in ds.splits.items() if k != "unseen"}
    before = np.asarray(ds.splits.get("unseen", np.zeros(0)), np.int64)
    splits["unseen"] = np.union1d(before, np.setdiff1d(np.flatnonzero(held), keep)).astype(np.int64)
    meta = {**ds.meta, "heldout": {"attribute": attribute, "classes": classes.tolist(), "shots": int(shots)}}
    return dataclasses.replace(ds, splits=splits, meta=meta)


def fewshot_transfer(model, ds: ImageDataset, part: str, split: str = "unseen", n_donors: int = 6,
                     n_sources: int = 6, n_pairs: int = 500, max_images: int = 2000, seed: int = 0, gap: int = 2,
                     batch_size: int = 256, device: str | torch.device = "cpu") -> tuple[np.ndarray, dict[str, Any]]:
    """Transfers of unseen classes' s: a grid (row 0: donor images of distinct unseen classes,
    column 0: source images, cell (i, j) = decode(rest of source i, s of donor j)) and
    ``s_recognition`` (see the module doc)."""
    from facefactors.viz.grids import swap_grid

    if part not in ds.labels:
        raise FacefactorsError(f"few-shot transfer needs labels for {part!r}")
    pool = np.asarray(ds.splits.get(split, np.zeros(0)), np.int64)
    if len(pool) == 0:
        raise FacefactorsError(f"dataset {ds.name!r} has no {split!r} split (hold out classes first: "
                               "data.heldout_identities, or hold_out_classes)")
    rng = np.random.default_rng([seed, 53])
    if len(pool) > max_images:
        pool = np.sort(rng.choice(pool, max_images, replace=False))
    labels = ds.labels[part].cpu().numpy()[pool]
    classes = np.unique(labels)
    if len(classes) < 2:
        raise FacefactorsError(f"few-shot transfer needs at least 2 classes in the {split!r} split")
    # grid: one donor per class (up to n_donors), sources from the other images
    shown = rng.permutation(classes)[:n_donors]
    donors = np.array([rng.choice(np.flatnonzero(labels == c)) for c in shown])
    rest = np.setdiff1d(np.arange(len(pool)), donors)
    sources = rng.choice(rest, size=min(n_sources, len(rest)), replace=False)
    grid = swap_grid(model, ds.images[torch.from_numpy(pool[sources])], ds.images[torch.from_numpy(pool[donors])],
                     part, gap, batch_size, device)
    # metric: half of each class's images give the class means, the other half are donors
    z = encode_images(model, ds.images[torch.from_numpy(pool)], batch_size, device)
    ref_mask = np.zeros(len(pool), bool)
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        ref_mask[members[: max(1, len(members) // 2)]] = True
    donor_pos = np.flatnonzero(~ref_mask)
    if len(donor_pos) == 0:
        raise FacefactorsError(f"few-shot transfer: the {split!r} split has one image per class")
    s_all = z.flat(part).numpy()
    means = _unit(np.stack([s_all[ref_mask & (labels == c)].mean(0) for c in classes]))
    d = rng.choice(donor_pos, size=n_pairs)
    src = rng.choice(len(pool), size=n_pairs)
    transfers = decode_uint8(model, swap(z.index(torch.from_numpy(src)), z.index(torch.from_numpy(d)), part),
                             batch_size, device)
    s_back = _unit(encode_images(model, transfers, batch_size, device).flat(part).numpy())
    recognised = classes[(s_back @ means.T).argmax(1)] == labels[d]
    direct = classes[(_unit(s_all[d]) @ means.T).argmax(1)] == labels[d]
    return grid, {"split": split, "n_classes": int(len(classes)), "n_pairs": int(n_pairs),
                  "s_recognition": float(recognised.mean()), "s_recognition_real": float(direct.mean()),
                  "chance": float(1.0 / len(classes)), "donor_classes": shown.tolist()}


def sampling_report(model, ds: ImageDataset, out_dir, part: str, oracle=None, n_images: int = 8,
                    n_samples: int = 6, seed: int = 0, batch_size: int = 256, device: str | torch.device = "cpu",
                    log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """Everything above for one run: ``figures/fixed_s_samples.png``, ``figures/transfer_grid.png``
    (test images), ``figures/fewshot_transfer.png`` when the dataset has an ``unseen`` split;
    metrics ``transfer`` (with an oracle) and ``fewshot``. Returns (metrics, figures)."""
    from facefactors.eval.switch_edits import enlarge
    from facefactors.io import save_png
    from facefactors.viz.grids import swap_grid

    log = log or (lambda s: None)
    fig = Path(out_dir) / "figures"
    test = np.asarray(ds.split("test"), np.int64)
    rng = np.random.default_rng([seed, 59])
    pick = np.sort(rng.choice(test, size=min(2 * n_images, len(test)), replace=False))
    metrics: dict[str, Any] = {"part": part}
    figures: dict[str, Path] = {}
    grid, _ = fixed_s_samples(model, ds.images[torch.from_numpy(pick[:n_images])], part, n_samples, seed,
                              batch_size=batch_size, device=device)
    figures["fixed_s_samples"] = fig / "fixed_s_samples.png"
    save_png(figures["fixed_s_samples"], enlarge(grid, ds.image_size))
    grid = swap_grid(model, ds.images[torch.from_numpy(pick[n_images:])], ds.images[torch.from_numpy(pick[:n_images])],
                     part, batch_size=batch_size, device=device)
    figures["transfer_grid"] = fig / "transfer_grid.png"
    save_png(figures["transfer_grid"], enlarge(grid, ds.image_size))
    if oracle is not None and part in ds.labels:
        metrics["transfer"] = transfer_success(model, ds, test, part, oracle, seed=seed, batch_size=batch_size,
                                               device=device)
        log(f"  transfer of {part}: read as the donor's class {metrics['transfer']['donor_rate']:.3f}, "
            f"rest retrieval {metrics['transfer']['rest_retrieval']:.3f}")
    if len(ds.splits.get("unseen", ())) and part in ds.labels:
        try:
            grid, metrics["fewshot"] = fewshot_transfer(model, ds, part, seed=seed, batch_size=batch_size,
                                                        device=device)
        except FacefactorsError as e:
            metrics["fewshot"] = {"skipped": str(e)}
            log(f"  few-shot transfer skipped: {e}")
            return metrics, figures
        figures["fewshot_transfer"] = fig / "fewshot_transfer.png"
        save_png(figures["fewshot_transfer"], enlarge(grid, ds.image_size))
        log(f"  few-shot transfer of unseen {part}: s recognised {metrics['fewshot']['s_recognition']:.3f} "
            f"(chance {metrics['fewshot']['chance']:.3f})")
    return metrics, figures
