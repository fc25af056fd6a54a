"""Label-preserving training augmentation, batched: random affine warps and stroke thickness.

Why: a small dataset (scikit-learn's 1,437 training digits, upsampled from 8x8) has little
style that varies independently of the class, so a model's unspecified part has nothing of its
own to hold and keeps class detail instead. Warps drawn independently of the label (slant, size,
rotation, position, stroke width) are such a style, as MNIST's writers give it.

Set in the config as ``train.augment`` (every key optional, all off by default):

- ``rotate``: degrees, uniform in [-rotate, rotate];
- ``shear``: horizontal shear factor (slant), uniform in [-shear, shear];
- ``scale``: relative size change, uniform in [1 - scale, 1 + scale] (both axes alike);
- ``translate``: shift as a fraction of the image side, uniform per axis;
- ``thickness``: probability of a 3x3 grey dilation and, equally often, of an erosion (bright
  strokes on a dark ground get thicker / thinner);
- ``padding``: what a warp shows where it uncovers the frame: ``border`` (the edge pixels
  continued, the default), ``reflection``, ``black`` or ``white`` (digits: ``black``, since their
  strokes touch the edge and would be smeared by ``border``).

Only the training batch and the partner images a method draws are augmented (through
``FactorModel.augment_images``); evaluation always sees the images as stored. The warps must not
change a label: they are safe for digits, but on faces a rotation or shift changes what ``pose``
labels describe, so leave them off where such a label is modelled. Randomness comes from torch's
global generator, which the trainer seeds and stores in checkpoints, so runs stay deterministic
and resume exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
import torch
import torch.nn.functional as F

from facefactors.errors import FacefactorsError


PADDINGS = ("border", "reflection", "black", "white")
NUMERIC = ("rotate", "shear", "scale", "translate", "thickness")


@dataclass(frozen=True)
class AugmentConfig:
    """``train.augment``; keys and types are checked by the config loader, ranges here."""

    rotate: float = 0.0
    shear: float = 0.0
    scale: float = 0.0
    translate: float = 0.0
    thickness: float = 0.0
    padding: str = "border"

    def __post_init__(self) -> None:
        for name in NUMERIC:
            if getattr(self, name) < 0:
                raise FacefactorsError(f"train.augment.{name}={getattr(self, name)} must be >= 0")
        if self.scale >= 1:
            raise FacefactorsError(f"train.augment.scale={self.scale} must be < 1")
        if self.thickness > 0.5:
            raise FacefactorsError(f"train.augment.thickness={self.thickness} must be <= 0.5 "
                                   "(it is the chance of each of dilation and erosion)")
        if self.padding not in PADDINGS:
            raise FacefactorsError(f"train.augment.padding={self.padding!r}; use {', '.join(PADDINGS)}")

    @property
    def active(self) -> bool:
        return any(getattr(self, name) > 0 for name in NUMERIC)


class Augment:
    """Callable on float images (B, C, H, W) in [-1, 1]; returns new images of the same shape,
    dtype, device and memory format."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    def _uniform(self, n: int, half_width: float, like: torch.Tensor) -> torch.Tensor:
        return (torch.rand(n) * 2.0 - 1.0).mul_(half_width).to(like.device, torch.float32)

    def _warp(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        b = x.shape[0]
        angle = self._uniform(b, math.radians(c.rotate), x)
        shear = self._uniform(b, c.shear, x)
        size = 1.0 + self._uniform(b, c.scale, x)
        shift = torch.stack([self._uniform(b, 2.0 * c.translate, x), self._uniform(b, 2.0 * c.translate, x)], 1)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # output -> input sampling map: inverse of (scale, then shear, then rotate), plus a shift
        rot = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)      # R^-1
        shr = torch.zeros(b, 2, 2, device=x.device)
        shr[:, 0, 0] = 1.0
        shr[:, 1, 1] = 1.0
        shr[:, 0, 1] = -shear                                                                 # S^-1
        lin = (shr @ rot) / size[:, None, None]
        theta = torch.cat([lin, shift[:, :, None]], dim=2)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        pad = self.cfg.padding
        if pad in ("border", "reflection"):
            return F.grid_sample(x, grid, mode="bilinear", padding_mode=pad, align_corners=False)
        fill = -1.0 if pad == "black" else 1.0          # sample x - fill with zeros outside, add fill back
        return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill

    def _thickness(self, x: torch.Tensor) -> torch.Tensor:
        p = self.cfg.thickness
        u = torch.rand(x.shape[0]).to(x.device)
        thick = F.max_pool2d(x, 3, stride=1, padding=1)
        thin = -F.max_pool2d(-x, 3, stride=1, padding=1)
        pick = u[:, None, None, None]
        return torch.where(pick < p, thick, torch.where(pick > 1.0 - p, thin, x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cfg.active:
            return x
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        out = x.float()
        if self.cfg.rotate or self.cfg.shear or self.cfg.scale or self.cfg.translate:
            out = self._warp(out)
        if self.cfg.thickness:
            out = self._thickness(out)
        out = out.clamp_(-1.0, 1.0).to(x.dtype)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out.contiguous()
