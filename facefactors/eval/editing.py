"""Attribute editing along linear-SVM directions, edit success and residual maps (D2AE Sec. 4.3, Fig. 5b).

A linear SVM trained on one latent part's codes for an attribute gives the max-margin
direction w_n towards a class. An edit moves a code along it: f* = f + alpha_n w_n (several
attributes: f + sum_n alpha_n w_n), with alpha bounded by ``max_std`` times the learned
standard deviation of the codes along w_n (the paper's "confidence interval controlled by
the learned standard deviation"): per-channel sigma is the method's running feature std
where it keeps one (D2AE's statistical augmentation), else the empirical std of the training
codes, combined with the codes' empirical channel correlations (the channels are not
independent). By default alpha moves a code to the mean projection of the target class's
training codes plus ``overshoot`` learned stds, never backwards and never beyond the bound.

Two-class attributes (the paper's) have one SVM. With more classes the edit of a code from
class j to class k uses, by default (``pairwise``), the SVM of j against k, j being the class
a linear SVM on the codes reads from the code itself (no label needed): one-vs-rest
directions are fine for the extreme classes of an ordered attribute (pose left / right) but
point nowhere useful for a middle one (frontal), whose "rest" surrounds it.

Edit success is judged by an independent classifier trained on real images (the
evaluation oracle): the fraction of edited test images it assigns to the target class,
next to the same rate for the unedited reconstructions. Identity kept is the cosine
similarity of the identity part between each original and its edited image, and the share
of edited images still verified as the same person at the verification threshold.
Identity exchange and interpolation are the generic ``latent.swap`` / ``latent.interpolate``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from facefactors.data.specs import ImageDataset
from facefactors.errors import FacefactorsError
from facefactors.eval.latents import decode_latent, decode_uint8, encode_images, encode_split
from facefactors.eval.probes import subsample
from facefactors.eval.recognition import fit_linear_svm
from facefactors.eval.verification import cosine_scores
from facefactors.latent import Latent


@dataclass
class EditDirections:
    """Per class of one attribute: a unit direction in one part's (flattened) latent space."""

    part: str
    attribute: str
    classes: np.ndarray       # (K,) class indices, one per row of ``directions``
    directions: np.ndarray    # (K, D) unit vectors pointing towards each class
    target_proj: np.ndarray   # (K,) mean projection of the class's training codes on its direction
    spread: np.ndarray        # (K,) learned std of the codes along each direction (``direction_spread``)
    # pairwise edits (K > 2): (j, k) with j < k -> the two-class directions of j against k, and
    # the classifier (``predict(codes)``) that reads a code's own class, i.e. the edit's source
    pairs: dict[tuple[int, int], "EditDirections"] | None = None
    source: Any = None

    def towards(self, source: int, target: int) -> "EditDirections":
        """The directions an edit from class ``source`` to ``target`` uses: the pair's own SVM
        where there is one, else the one-vs-rest directions."""
        if self.pairs is None or source == target:
            return self
        return self.pairs[(min(source, target), max(source, target))]

    def row(self, cls: int) -> int:
        hit = np.flatnonzero(self.classes == cls)
        if hit.size == 0:
            raise FacefactorsError(f"attribute {self.attribute!r} has no edit direction for class {cls}; "
                                   f"classes: {self.classes.tolist()}")
        return int(hit[0])


DIRECTION_KINDS = ("svm", "svm_gradient", "mean")
# Defaults of the edit (measured on the 30-minute d2ae run, BENCHMARKS.md "d2ae edit directions"):
# C -> 0 turns the SVM normal in its standardised space, mapped back to latent units, into
# the class-mean difference a decoder renders, while staying a max-margin direction; one
# learned std beyond the class's mean projection, because a decoder trained to regress
# averages draws a class clearly only past its centre.
EDIT_SVM_C = 1e-5
EDIT_OVERSHOOT = 1.0
EDIT_MAX_STD = 3.0


def svm_directions(x: np.ndarray, y: np.ndarray, std: np.ndarray | None = None, c: float = 1.0,
                   seed: int = 0, part: str = "", attribute: str = "", kind: str = "svm",
                   pairwise: bool = False, source_c: float = 1.0) -> EditDirections:
    """Per-class unit edit directions in the original latent space.

    ``pairwise`` (more than two classes): also fit every pair's two-class directions and a
    linear SVM (``source_c``) that reads each code's class, the source of its edit.

    ``kind``: "svm" (default) the linear SVM's max-margin normal in the standardised space it is
    fit in, mapped back to latent units (scale * w): a step there is a step in the SVM's own
    geometry; "svm_gradient" the gradient of its decision function in latent units (w / scale),
    which favours discriminative low-variance channels a decoder may ignore; "mean" the class
    mean minus the mean of the other classes (no SVM).
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    classes = np.unique(y)
    if classes.size < 2:
        raise FacefactorsError(f"cannot fit edit directions for {attribute or 'an attribute'}: one class only")
    if kind not in DIRECTION_KINDS:
        raise FacefactorsError(f"unknown edit direction kind {kind!r}; choose from {', '.join(DIRECTION_KINDS)}")
    if kind == "mean":
        w = np.stack([x[y == k].mean(0) - x[y != k].mean(0) for k in classes]).astype(np.float64)
    else:
        model = fit_linear_svm(x, y, c, seed)
        scaler, svm = model[0], model[-1]
        scale = np.asarray(scaler.scale_, dtype=np.float64)
        w = np.asarray(svm.coef_, dtype=np.float64)
        w = w * scale if kind == "svm" else w / scale
        if classes.size == 2:
            w = np.stack([-w[0], w[0]])  # LinearSVC's single row points towards classes[1]
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    sigma = np.asarray(std if std is not None else x.std(axis=0), dtype=np.float64).reshape(-1)
    if sigma.size != x.shape[1]:
        raise FacefactorsError(f"std has {sigma.size} channels, the {part or 'latent'} codes have {x.shape[1]}")
    proj = x.astype(np.float64) @ w.T
    target = np.array([proj[y == k, i].mean() for i, k in enumerate(classes)])
    dirs = EditDirections(part, attribute, classes, w, target, direction_spread(x, w, sigma))
    if pairwise and classes.size > 2:
        dirs.pairs = {}
        for a, j in enumerate(classes):
            for k in classes[a + 1:]:
                sel = (y == j) | (y == k)
                dirs.pairs[(int(j), int(k))] = svm_directions(x[sel], y[sel], sigma, c, seed, part, attribute, kind)
        dirs.source = fit_linear_svm(x, y, source_c, seed)
    return dirs


def direction_spread(x: np.ndarray, w: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Std of codes along each unit row of ``w``: sqrt(w' S w) with S = diag(sigma) R diag(sigma),
    R the codes' channel correlations and sigma the (learned) per-channel std. Channels of a
    trained encoder are correlated, so sqrt(sum_i w_i^2 sigma_i^2) alone would misjudge it."""
    x = np.asarray(x, dtype=np.float64)
    sd = x.std(axis=0)
    live = sd > 1e-12
    corr = np.eye(x.shape[1])
    if live.sum() > 1:
        corr[np.ix_(live, live)] = np.corrcoef(x[:, live], rowvar=False)
    cov = corr * np.outer(sigma, sigma)
    return np.sqrt(np.maximum(np.einsum("kd,de,ke->k", w, cov, w), 0.0))


def edit_alphas(codes: np.ndarray, dirs: EditDirections, cls: int, max_std: float = 3.0,
                overshoot: float = 0.0) -> np.ndarray:
    """Per row, alpha moving the code to the target class's mean projection (+ ``overshoot``
    learned stds), clipped to [0, max_std * learned std along the direction]."""
    i = dirs.row(cls)
    proj = np.asarray(codes, dtype=np.float64).reshape(len(codes), -1) @ dirs.directions[i]
    want = dirs.target_proj[i] + overshoot * dirs.spread[i] - proj
    return np.clip(want, 0.0, max_std * dirs.spread[i])


def edit_steps(codes: np.ndarray, dirs: EditDirections, cls: int, max_std: float = 3.0,
               overshoot: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the edit towards class ``cls``: (steps (N, D) = alpha * w, alpha in learned stds (N,)).

    With pairwise directions each code moves along the SVM of its own class (read from the code
    by ``dirs.source``) against ``cls``; otherwise along the one-vs-rest direction of ``cls``.
    """
    codes = np.asarray(codes, dtype=np.float64).reshape(len(codes), -1)
    steps = np.zeros_like(codes)
    in_std = np.zeros(len(codes))
    sources = (np.full(len(codes), cls) if dirs.pairs is None
               else np.asarray(dirs.source.predict(codes.astype(np.float32))))
    for j in np.unique(sources):
        rows = np.flatnonzero(sources == j)
        d = dirs.towards(int(j), cls)
        i = d.row(cls)
        alphas = edit_alphas(codes[rows], d, cls, max_std, overshoot)
        steps[rows] = alphas[:, None] * d.directions[i][None]
        in_std[rows] = alphas / max(d.spread[i], 1e-12)
    return steps, in_std


def apply_edits(z: Latent, part: str, edits: Sequence[tuple[np.ndarray, np.ndarray | float]]) -> Latent:
    """f* = f + sum_n alpha_n w_n on one part; each edit is (direction (D,) or per-row directions
    (N, D), alpha scalar or (N,))."""
    t = z.flat(part).double()
    for w, alpha in edits:
        a = torch.as_tensor(np.asarray(alpha, dtype=np.float64)).reshape(-1, 1)
        t = t + a * torch.as_tensor(np.asarray(w, dtype=np.float64)).reshape(-1, t.shape[1])
    return z.replace(**{part: t.to(z[part].dtype).reshape(z[part].shape)})


def edit_part(parts: Sequence[str], attribute: str) -> str:
    """The part an attribute is edited in: its own part if the method has one, else ``rest``."""
    if attribute in parts:
        return attribute
    if "rest" in parts:
        return "rest"
    raise FacefactorsError(f"no part to edit {attribute!r} in: parts are {', '.join(parts)}")


def learned_std(model, part: str) -> np.ndarray | None:
    """The method's learned per-channel std of ``part`` (``model.feature_std()``), if it keeps one."""
    fn = getattr(model, "feature_std", None)
    if fn is None:
        return None
    std = fn().get(part)
    return None if std is None else std.detach().float().cpu().numpy().reshape(-1)


def fit_directions(model, train: Mapping[str, np.ndarray], attribute: str, part: str | None = None,
                   c: float = 1.0, seed: int = 0, kind: str = "svm", pairwise: bool = False) -> EditDirections:
    """SVM edit directions for ``attribute`` from encoded training codes (``encode_split`` arrays)."""
    parts = [k[len("part/"):] for k in train if k.startswith("part/")]
    part = part or edit_part(parts, attribute)
    if f"part/{part}" not in train:
        raise FacefactorsError(f"unknown latent part {part!r}; parts: {', '.join(parts)}")
    if f"label/{attribute}" not in train:
        raise FacefactorsError(f"no labels for attribute {attribute!r}")
    return svm_directions(train[f"part/{part}"], train[f"label/{attribute}"], learned_std(model, part), c, seed,
                          part, attribute, kind, pairwise)


def edit_to_class(model, images, dirs: EditDirections, cls: int, max_std: float = 3.0, overshoot: float = 0.0,
                  batch_size: int = 256, device: str | torch.device = "cpu"
                  ) -> tuple[torch.Tensor, Latent, np.ndarray]:
    """Encode uint8 images, move ``dirs.part`` towards class ``cls``, decode: (uint8 NCHW, codes, alphas)."""
    z = encode_images(model, images, batch_size, device)
    steps, in_std = edit_steps(z.flat(dirs.part).numpy(), dirs, cls, max_std, overshoot)
    z_edit = apply_edits(z, dirs.part, [(steps, 1.0)])
    return decode_uint8(model, z_edit, batch_size, device), z, in_std


def edit_success(model, images: torch.Tensor, labels: np.ndarray, dirs: EditDirections, oracle,
                 identity_part: str | None = None, identity_threshold: float | None = None,
                 max_std: float = 3.0, overshoot: float = 0.0, batch_size: int = 256,
                 device: str | torch.device = "cpu") -> dict[str, Any]:
    """Edit every image not of class k towards k, for every class k, and score the edits.

    ``oracle.predict(uint8 NCHW) -> {attribute: class indices}`` judges the edited images.
    Returns ``success_rate`` (mean over classes of the share of edits the oracle assigns to the
    target), ``unedited_rate`` (the same share for the plain reconstructions: the control),
    ``per_class``, ``mean_alpha_std`` (alpha in learned stds), and with ``identity_part`` the
    mean ``identity_cosine`` between original and edited codes and ``identity_verified`` (share
    at or above ``identity_threshold``).
    """
    labels = np.asarray(labels)
    attr = dirs.attribute
    z = encode_images(model, images, batch_size, device)
    rec = decode_uint8(model, z, batch_size, device)
    rec_pred = _oracle_predict(oracle, rec, attr)
    per_class, cosines, alphas_std = {}, [], []
    for k in dirs.classes:
        sel = np.flatnonzero(labels != k)
        if sel.size == 0:
            continue
        zk = z.index(torch.from_numpy(sel))
        steps, in_std = edit_steps(zk.flat(dirs.part).numpy(), dirs, int(k), max_std, overshoot)
        edited = decode_uint8(model, apply_edits(zk, dirs.part, [(steps, 1.0)]), batch_size, device)
        pred = _oracle_predict(oracle, edited, attr)
        per_class[int(k)] = {"success_rate": float(np.mean(pred == k)),
                             "unedited_rate": float(np.mean(rec_pred[sel] == k)), "n": int(sel.size)}
        alphas_std.append(in_std)
        if identity_part is not None:
            z_back = encode_images(model, edited, batch_size, device)
            original = zk.flat(identity_part).numpy()
            both = np.concatenate([original, z_back.flat(identity_part).numpy()])
            n = len(sel)
            cosines.append(cosine_scores(both, np.arange(n), np.arange(n, 2 * n)))
    if not per_class:
        raise FacefactorsError(f"nothing to edit for {attr!r}: every image has the same class")
    out: dict[str, Any] = {
        "part": dirs.part,
        "success_rate": float(np.mean([v["success_rate"] for v in per_class.values()])),
        "unedited_rate": float(np.mean([v["unedited_rate"] for v in per_class.values()])),
        "per_class": per_class,
        "mean_alpha_std": float(np.mean(np.concatenate(alphas_std))),
        "max_std": max_std,
    }
    if cosines:
        cos = np.concatenate(cosines)
        out["identity_cosine"] = float(cos.mean())
        if identity_threshold is not None:
            out["identity_threshold"] = float(identity_threshold)
            out["identity_verified"] = float(np.mean(cos >= identity_threshold))
    return out


def _oracle_predict(oracle, images: torch.Tensor, attribute: str) -> np.ndarray:
    pred = oracle.predict(images)
    if attribute not in pred:
        raise FacefactorsError(f"the evaluation classifier does not predict {attribute!r} "
                               f"(it predicts {', '.join(pred)})")
    return np.asarray(pred[attribute]).reshape(-1)


def mean_latent(model, arrays: Mapping[str, np.ndarray], like: Latent) -> Latent:
    """The mean code of every part (one row), shaped like ``like``'s parts."""
    return Latent({p: torch.as_tensor(np.asarray(arrays[f"part/{p}"]).mean(0), dtype=like[p].dtype)
                   .reshape(1, *like[p].shape[1:]) for p in like.parts})


def residual_maps(model, base: Latent, dirs: EditDirections, strength_std: float = 3.0,
                  batch_size: int = 256, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """decode(base + s w_k) - decode(base) for each class k (s = ``strength_std`` learned stds).

    Returns (base image float (H, W, C) in [-1, 1], residuals float (K, H, W, C)). With
    ``base`` the mean code this is the paper's Fig. 5b (there with a unit step).
    """
    k = len(dirs.classes)
    z = base.map(lambda t: t.expand(k, *t.shape[1:]).clone())
    alphas = strength_std * dirs.spread
    moved = z.flat(dirs.part).double() + torch.as_tensor(alphas).reshape(-1, 1) * torch.as_tensor(dirs.directions)
    z_edit = z.replace(**{dirs.part: moved.to(z[dirs.part].dtype).reshape(z[dirs.part].shape)})
    x0 = decode_latent(model, base, batch_size, device)[0].permute(1, 2, 0).numpy()
    xk = decode_latent(model, z_edit, batch_size, device).permute(0, 2, 3, 1).numpy()
    return x0, xk - x0[None]


def encode_train_codes(model, ds: ImageDataset, max_n: int = 4000, seed: int = 0, batch_size: int = 256,
                       device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """Encode a seeded subsample of the train split (what edit directions are fitted on)."""
    idx = ds.split("train")
    idx = idx[subsample(len(idx), max_n, np.random.default_rng([seed, 7]))]
    return encode_split(model, ds, idx, batch_size, device)


def edit_image(model, ds: ImageDataset, images, attribute: str, value: int | str, part: str | None = None,
               max_std: float = EDIT_MAX_STD, overshoot: float = EDIT_OVERSHOOT, kind: str = "svm",
               c: float = EDIT_SVM_C, pairwise: bool = True,
               train: Mapping[str, np.ndarray] | None = None, batch_size: int = 256,
               device: str | torch.device = "cpu", log: Callable[[str], None] | None = None) -> torch.Tensor:
    """Edit uint8 images (N, C, H, W) towards ``attribute = value`` (class index or name).

    Fits the edit directions (``kind``, ``c``, ``pairwise``: see ``svm_directions``) on encoded training codes
    (``train``, else a subsample of the train split is encoded) and returns the edited images,
    uint8 (N, C, H, W). This is what a ``facefactors edit`` command needs.
    """
    spec = ds.attribute(attribute)
    if not spec.discrete:
        raise FacefactorsError(f"attribute {attribute!r} is {spec.kind}; only categorical or binary "
                               "attributes can be edited")
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        if value not in spec.classes:
            raise FacefactorsError(f"{attribute!r} has no class {value!r}; classes: {', '.join(spec.classes)}")
        cls = spec.classes.index(value)
    else:
        cls = int(value)
        if not 0 <= cls < spec.num_classes:
            raise FacefactorsError(f"{attribute!r} value {cls} out of range 0..{spec.num_classes - 1} "
                                   f"({', '.join(spec.classes)})")
    if train is None:
        if log:
            log(f"encoding training images to fit the {attribute!r} edit direction")
        train = encode_train_codes(model, ds, batch_size=batch_size, device=device)
    dirs = fit_directions(model, train, attribute, part, c=c, kind=kind, pairwise=pairwise)
    edited, _, _ = edit_to_class(model, images, dirs, cls, max_std, overshoot, batch_size, device)
    return edited
