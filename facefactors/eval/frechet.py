"""Fréchet distance between generated and real images.

FD = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between Gaussians fitted to image features.
By default the features are the penultimate layer of our evaluation oracle (``oracle.py``),
trained on the dataset's real training images; that is the right extractor for SynthFaces
and digits, and numbers are only comparable between runs that name the same extractor. The
standard Inception FID is used instead when ``pytorch_fid`` is installed and its weights file
is on disk (named by ``inception_weights`` or already in the torch hub cache); nothing is
ever downloaded. The result always names
the extractor: ``"facefactors-oracle:<fingerprint>"`` or ``"inception-v3-pool3:<file>"``.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from facefactors.data.specs import ImageDataset
from facefactors.errors import FacefactorsError
from facefactors.eval.latents import as_nchw_uint8


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) (unbiased, as pytorch-fid) of (N, D) features, N >= 2."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise FacefactorsError(f"Fréchet statistics need at least 2 feature rows, got shape {f.shape}")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, s1) and N(mu2, s2).

    As in the reference FID code: if the product of covariances is (near) singular, eps * I is
    added to both; a complex square root with a negligible imaginary part is taken as real.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise FacefactorsError(f"Fréchet distance: mismatched shapes {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3 * max(1.0, np.abs(covmean).max())):
            raise FacefactorsError(f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag)):.3g} "
                                   "in the covariance square root")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"   # pytorch-fid's weights file


def inception_weights_path(weights: str | Path | None = None) -> Path | None:
    """The Inception weights file to use: ``weights`` when given, else pytorch-fid's file in the
    torch hub cache when it is already there; None when ``pytorch_fid`` is not installed or no
    file exists (nothing is downloaded)."""
    if importlib.util.find_spec("pytorch_fid") is None:
        return None
    path = Path(weights).expanduser() if weights else Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME
    return path if path.is_file() else None


def _inception_features(images, weights: Path, batch_size: int, device) -> np.ndarray:
    """2048-d pool3 features of pytorch-fid's FID Inception; its weights come from ``weights``
    (pytorch-fid's own loader is pointed at the local file, so it cannot download)."""
    import pytorch_fid.inception as pi

    original = pi.load_state_dict_from_url
    pi.load_state_dict_from_url = lambda *a, **k: torch.load(weights, map_location="cpu", weights_only=True)
    try:
        model = pi.InceptionV3([pi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()
    finally:
        pi.load_state_dict_from_url = original
    t = as_nchw_uint8(images)
    out = []
    with torch.no_grad():
        for s in range(0, len(t), batch_size):
            x = t[s:s + batch_size].to(device).float() / 255.0
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            out.append(model(x)[0].flatten(1).double().cpu())
    return torch.cat(out).numpy()


def frechet_to_real(generated_uint8, ds: ImageDataset, oracle, split: str = "test", max_real: int | None = 2000,
                    real_indices=None, batch_size: int = 256, seed: int = 0, use_inception: bool = True,
                    inception_weights=None, device="cpu") -> dict:
    """Fréchet distance between generated uint8 images (NCHW tensor or NHWC array) and real
    images of ``split`` (or ``real_indices``). Returns ``{"value", "extractor", "n_generated", "n_real"}``."""
    gen = as_nchw_uint8(generated_uint8)
    if real_indices is None:
        idx = np.asarray(ds.split(split), np.int64)
        if max_real is not None and len(idx) > max_real:
            idx = np.sort(np.random.default_rng([seed, 19]).choice(idx, max_real, replace=False))
    else:
        idx = np.asarray(real_indices, np.int64)
    real = ds.images[torch.from_numpy(idx)]
    if len(gen) < 2 or len(real) < 2:
        raise FacefactorsError(f"Fréchet distance needs at least 2 generated and 2 real images "
                               f"(got {len(gen)} and {len(real)})")
    w = inception_weights_path(inception_weights) if use_inception else None
    if w is not None:
        fg = _inception_features(gen, w, batch_size, device)
        fr = _inception_features(real, w, batch_size, device)
        extractor = f"inception-v3-pool3:{w.name}"
    else:
        if oracle is None:
            raise FacefactorsError("Fréchet distance: no feature extractor (no oracle, no Inception weights)")
        fg = oracle.features(gen, batch_size)
        fr = oracle.features(real, batch_size)
        extractor = f"facefactors-oracle:{oracle.fingerprint[:20]}"
    value = frechet_distance(*feature_stats(fg), *feature_stats(fr))
    return {"value": value, "extractor": extractor, "n_generated": int(len(gen)), "n_real": int(len(real))}
