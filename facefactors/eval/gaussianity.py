"""Channel Gaussianity of latent features (D2AE Sec. 5.3, Figs. 7-8).

Each channel's values are binned into a density histogram and compared with the Gaussian
density fitted to the channel by its moments (mean and standard deviation); the adjusted
R^2 of that fit over the bins (``1 - (1 - R^2) (n - 1) / (n - p - 1)`` with n bins and p = 2
fitted parameters) says how Gaussian the channel is: about 1 for a normal sample, clearly
lower for a skewed or multi-modal one. (A free least-squares fit of amplitude, centre and
width is not used: it fits the tail of a skewed histogram, e.g. an exponential, almost
perfectly with a far-off centre.) A constant (dead) channel has no histogram and scores NaN.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from facefactors.errors import FacefactorsError


def gaussian(x: np.ndarray, amplitude: float, mu: float, sigma: float) -> np.ndarray:
    return amplitude * np.exp(-0.5 * ((x - mu) / sigma) ** 2)


@dataclass
class ChannelFit:
    """A channel's histogram (bin centres and densities), the fitted Gaussian and its adjusted R^2."""

    centres: np.ndarray
    density: np.ndarray
    amplitude: float
    mu: float
    sigma: float
    adj_r2: float


def default_bins(n: int) -> int:
    """Histogram bins for n values: about sqrt(n), between 10 and 50."""
    return int(np.clip(round(np.sqrt(n)), 10, 50))


def fit_channel(values: np.ndarray, bins: int | None = None) -> ChannelFit:
    """Compare one channel's density histogram with its moment-fitted Gaussian (see the module doc)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size < 3:
        raise FacefactorsError(f"a Gaussian fit needs at least 3 values, got {v.size}")
    bins = bins or default_bins(v.size)
    mu0, s0 = float(v.mean()), float(v.std())
    if s0 <= 1e-12 * max(1.0, abs(mu0)):
        return ChannelFit(np.array([mu0]), np.array([np.inf]), np.nan, mu0, 0.0, np.nan)
    density, edges = np.histogram(v, bins=bins, density=True)
    centres = (edges[:-1] + edges[1:]) / 2.0
    amp = 1.0 / (s0 * np.sqrt(2 * np.pi))
    pred = gaussian(centres, amp, mu0, s0)
    ss_res = float(np.sum((density - pred) ** 2))
    ss_tot = float(np.sum((density - density.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else np.nan
    n, p = len(centres), 2
    adj = 1.0 - (1.0 - r2) * (n - 1) / (n - p - 1) if n > p + 1 else r2
    return ChannelFit(centres, density, float(amp), mu0, s0, float(adj))


def channel_adjusted_r2(features: np.ndarray, bins: int | None = None,
                        max_channels: int | None = None) -> np.ndarray:
    """Adjusted R^2 of the Gaussian fit for each channel (column) of ``features`` (N, C)."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise FacefactorsError(f"features must be (N, C), got shape {x.shape}")
    cols = range(x.shape[1] if max_channels is None else min(x.shape[1], max_channels))
    return np.array([fit_channel(x[:, c], bins).adj_r2 for c in cols])


def summarise(adj_r2: np.ndarray) -> dict[str, float]:
    """Mean, median, minimum and the fractions above 0.9 / 0.99 (NaN channels count as dead)."""
    r = np.asarray(adj_r2, dtype=np.float64)
    ok = r[np.isfinite(r)]
    if ok.size == 0:
        return {"channels": int(r.size), "dead": int(r.size), "mean": None, "median": None, "min": None,
                "frac_above_0.9": 0.0, "frac_above_0.99": 0.0}
    return {"channels": int(r.size), "dead": int(r.size - ok.size), "mean": float(ok.mean()),
            "median": float(np.median(ok)), "min": float(ok.min()),
            "frac_above_0.9": float(np.mean(r > 0.9)), "frac_above_0.99": float(np.mean(r > 0.99))}


def gaussianity(arrays: Mapping[str, np.ndarray], parts: Sequence[str] | None = None, bins: int | None = None,
                max_channels: int | None = None) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Per part: the summary of its channels' adjusted R^2, and the per-channel values (for figures)."""
    if parts is None:
        parts = [k[len("part/"):] for k in arrays if k.startswith("part/")]
    summary, values = {}, {}
    for p in parts:
        if f"part/{p}" not in arrays:
            raise FacefactorsError(f"latent part {p!r} missing from the encoded arrays")
        values[p] = channel_adjusted_r2(arrays[f"part/{p}"], bins, max_channels)
        summary[p] = summarise(values[p])
    return summary, values
