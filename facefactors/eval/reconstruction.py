"""Reconstruction quality: MSE, PSNR and SSIM on images scaled to [0, 1].

PSNR is ``10 log10(1 / MSE)`` of the dataset-mean MSE (not a mean of per-image PSNRs,
which a few perfect images would dominate). A perfect reconstruction (MSE 0) would give
infinite PSNR, which JSON cannot hold, so PSNR is capped at ``PSNR_CAP`` = 100 dB.
SSIM is the mean per-image SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5,
K1 0.01, K2 0.03, valid positions only, averaged over channels).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from facefactors.data.specs import ImageDataset, to_float_image
from facefactors.eval.latents import as_nchw_uint8, inference

PSNR_CAP = 100.0


def psnr_from_mse(mse: float) -> float:
    """``10 log10(1 / mse)`` for images in [0, 1], capped at ``PSNR_CAP`` (so mse 0 -> 100 dB)."""
    if mse <= 10.0 ** (-PSNR_CAP / 10.0):
        return PSNR_CAP
    return float(min(PSNR_CAP, 10.0 * math.log10(1.0 / mse)))


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] -> [0, 1] (clamped)."""
    return (x.float().clamp(-1, 1) + 1.0) * 0.5


def _gaussian_window(size: int, sigma: float, channels: int) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    w = torch.outer(g, g).float()
    return w.expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM of float images in [0, 1], (N, C, H, W) -> (N,).

    The window shrinks (to the largest odd size that fits) for images smaller than 11 px.
    """
    c = x.shape[1]
    size = min(window, x.shape[-1], x.shape[-2])
    size = size if size % 2 == 1 else size - 1
    w = _gaussian_window(size, sigma, c).to(x.device)
    x, y = x.float(), y.float()
    mu_x = F.conv2d(x, w, groups=c)
    mu_y = F.conv2d(y, w, groups=c)
    sxx = F.conv2d(x * x, w, groups=c) - mu_x ** 2
    syy = F.conv2d(y * y, w, groups=c) - mu_y ** 2
    sxy = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


class ImageErrorAccumulator:
    """Accumulate squared error and SSIM over batches of [0, 1] images."""

    def __init__(self) -> None:
        self.se = 0.0
        self.values = 0
        self.ssim_sum = 0.0
        self.images = 0

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred, target = pred.float(), target.float()
        self.se += float(((pred - target) ** 2).double().sum())
        self.values += target.numel()
        self.ssim_sum += float(ssim(pred, target).double().sum())
        self.images += target.shape[0]

    def result(self) -> dict[str, float]:
        mse = self.se / max(self.values, 1)
        return {"mse": mse, "psnr": psnr_from_mse(mse), "ssim": self.ssim_sum / max(self.images, 1),
                "n_images": self.images}


def image_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """MSE / PSNR / SSIM between two batches of float images in [0, 1], (N, C, H, W)."""
    acc = ImageErrorAccumulator()
    acc.add(pred, target)
    return acc.result()


def reconstruction_metrics(model, ds: ImageDataset, indices, batch_size: int = 256,
                           device: str | torch.device = "cpu") -> dict[str, float]:
    """Encode and decode ``ds.images[indices]``; returns ``{"mse", "psnr", "ssim", "n_images"}``."""
    idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    images = as_nchw_uint8(ds.images[idx])
    dev = torch.device(device)
    acc = ImageErrorAccumulator()
    with inference(model):
        for start in range(0, images.shape[0], batch_size):
            x = to_float_image(images[start:start + batch_size].to(dev))
            rec = model.decode(model.encode(x))
            acc.add(to_unit(rec).cpu(), to_unit(x).cpu())
    return acc.result()
