"""Convolutional encoders sized by resolution (32/64/128 px and up)."""
from __future__ import annotations

import torch
from torch import nn

from facefactors.nn.blocks import down_block, n_halvings, norm_layer, stage_widths


class ConvTrunk(nn.Module):
    """Stride-2 conv stages from the image down to a ``out_size`` x ``out_size`` feature map."""

    def __init__(self, image_size: int, channels: int, width: int = 32, out_size: int = 4, norm: str = "batch"):
        super().__init__()
        n = n_halvings(image_size, out_size)
        widths = stage_widths(width, n)
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers.append(down_block(cin, cout, norm))
        self.net = nn.Sequential(*layers)
        self.out_channels = widths[-1]
        self.out_size = out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VectorEncoder(nn.Module):
    """Image -> (B, out_dim) vector: conv trunk to 4x4, then a linear layer."""

    def __init__(self, image_size: int, channels: int, out_dim: int, width: int = 32, norm: str = "batch"):
        super().__init__()
        self.trunk = ConvTrunk(image_size, channels, width, 4, norm)
        self.head = nn.Linear(self.trunk.out_channels * 16, out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x).flatten(1))


class MapEncoder(nn.Module):
    """Image -> (B, out_channels, map_size, map_size) spatial code."""

    def __init__(self, image_size: int, channels: int, out_channels: int, map_size: int = 8, width: int = 32,
                 norm: str = "batch"):
        super().__init__()
        self.trunk = ConvTrunk(image_size, channels, width, map_size, norm)
        self.head = nn.Sequential(nn.Conv2d(self.trunk.out_channels, self.trunk.out_channels, 3, 1, 1),
                                  norm_layer(norm, self.trunk.out_channels), nn.LeakyReLU(0.2, inplace=True),
                                  nn.Conv2d(self.trunk.out_channels, out_channels, 1))
        self.out_shape = (out_channels, map_size, map_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))
