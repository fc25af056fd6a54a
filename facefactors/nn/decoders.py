"""Convolutional decoders mirroring the encoders; outputs in [-1, 1] (tanh)."""
from __future__ import annotations

import torch
from torch import nn

from facefactors.nn.blocks import ResBlock, n_halvings, norm_layer, stage_widths, up_block


class ConvUpsampler(nn.Module):
    """Feature map at ``in_size`` -> image at ``image_size`` through transposed-conv stages.

    As in DCGAN, the last stage maps straight to the image channels: no full-resolution
    feature maps, which dominate the cost of a decoder on CPU.
    """

    def __init__(self, image_size: int, channels: int, in_channels: int, in_size: int, width: int = 32,
                 norm: str = "batch"):
        super().__init__()
        n = n_halvings(image_size, in_size)
        widths = list(reversed(stage_widths(width, n)))  # widest first, `width` last
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1), norm_layer(norm, widths[0]),
                                   nn.ReLU(inplace=True)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers.append(up_block(cin, cout, norm))
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class VectorDecoder(nn.Module):
    """(B, in_dim) vector -> image: linear to a 4x4 map, then upsampling stages."""

    def __init__(self, image_size: int, channels: int, in_dim: int, width: int = 32, norm: str = "batch"):
        super().__init__()
        n = n_halvings(image_size, 4)
        self.start_channels = stage_widths(width, n)[-1]
        self.fc = nn.Sequential(nn.Linear(in_dim, self.start_channels * 16), nn.ReLU(inplace=True))
        self.up = ConvUpsampler(image_size, channels, self.start_channels, 4, width, norm)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.fc(z).view(z.shape[0], self.start_channels, 4, 4))


class MapDecoder(nn.Module):
    """(B, in_channels, s, s) depth-concatenated spatial codes -> residual blocks -> image."""

    def __init__(self, image_size: int, channels: int, in_channels: int, map_size: int = 8, width: int = 32,
                 norm: str = "batch", res_blocks: int = 0):
        super().__init__()
        self.res = nn.Sequential(*[ResBlock(in_channels, norm) for _ in range(res_blocks)])
        self.up = ConvUpsampler(image_size, channels, in_channels, map_size, width, norm)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.res(h))
