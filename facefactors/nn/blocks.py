"""Small building blocks shared by encoders, decoders, classifiers and critics."""
from __future__ import annotations

import math

from torch import nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    """'batch' (fastest on CPU), 'instance' (the papers' choice), 'layer' (critic-safe), or 'none'."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use batch, instance, layer or none")


def down_block(cin: int, cout: int, norm: str) -> nn.Sequential:
    """Halve the resolution: 4x4 stride-2 conv, norm, LeakyReLU(0.2)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=norm == "none"), norm_layer(norm, cout),
                         nn.LeakyReLU(0.2, inplace=True))


def up_block(cin: int, cout: int, norm: str) -> nn.Sequential:
    """Double the resolution: 4x4 stride-2 transposed conv, norm, ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=norm == "none"), norm_layer(norm, cout),
                         nn.ReLU(inplace=True))


def n_halvings(image_size: int, to_size: int) -> int:
    """How many stride-2 stages take ``image_size`` down to ``to_size`` (both powers of two)."""
    n = math.log2(image_size / to_size)
    if image_size < to_size or n != int(n):
        raise ValueError(f"image size {image_size} cannot be halved down to {to_size}; use 32, 64, 128 or 256")
    return int(n)


def stage_widths(width: int, n: int, cap: int = 8) -> list[int]:
    """Channel widths of n stages: width, 2*width, ... capped at cap*width."""
    return [width * min(2 ** i, cap) for i in range(n)]


class ResBlock(nn.Module):
    """Two 3x3 convs with norm and a skip connection (the decoder's dec-res blocks, Oldfield Table I)."""

    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, bias=norm == "none"),
                                  norm_layer(norm, channels), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, 1, 1, bias=norm == "none"),
                                  norm_layer(norm, channels))

    def forward(self, x):
        return x + self.body(x)
