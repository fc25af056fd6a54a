"""Classifier heads on latent codes and image classifiers with one head per attribute."""
from __future__ import annotations

import torch
from torch import nn

from facefactors.nn.encoders import ConvTrunk


class MLPHead(nn.Module):
    """Flattened code -> logits. ``hidden=0`` gives a linear head."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 256, layers: int = 1, dropout: float = 0.0):
        super().__init__()
        mods: list[nn.Module] = [nn.Flatten()]
        d = in_dim
        for _ in range(layers if hidden else 0):
            mods += [nn.Linear(d, hidden), nn.LeakyReLU(0.2, inplace=True)]
            if dropout:
                mods.append(nn.Dropout(dropout))
            d = hidden
        mods.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*mods)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class MultiHeadClassifier(nn.Module):
    """A conv ``trunk`` to a 4x4 map, a ``feature_dim`` layer, one linear head per output.

    ``features`` exposes the penultimate representation (used as an evaluation feature
    extractor, e.g. for Fréchet distances).
    """

    def __init__(self, trunk: nn.Module, trunk_channels: int, heads: dict[str, int], feature_dim: int,
                 activation: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(trunk_channels * 16, feature_dim), activation)
        self.heads = nn.ModuleDict({k: nn.Linear(feature_dim, n) for k, n in heads.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {k: head(f) for k, head in self.heads.items()}


class ImageClassifier(MultiHeadClassifier):
    """Image -> logits per attribute on the methods' shared (4x4-kernel) conv trunk."""

    def __init__(self, image_size: int, channels: int, heads: dict[str, int], width: int = 32,
                 feature_dim: int = 256, norm: str = "batch"):
        trunk = ConvTrunk(image_size, channels, width, 4, norm)
        super().__init__(trunk, trunk.out_channels, heads, feature_dim, nn.LeakyReLU(0.2, inplace=True))


class CodeShapedClassifier(nn.Module):
    """Image classifier whose penultimate features have the shape of a latent code.

    Oldfield et al. (Table II) build shallow classifiers whose last layer takes the same
    (C, s, s) tensor an encoder outputs, so a code can be fed straight into that last
    layer (``head``) to be classified or pushed towards a uniform posterior.
    """

    def __init__(self, image_size: int, channels: int, code_channels: int, code_size: int, n_classes: int,
                 width: int = 32):
        super().__init__()
        self.trunk = ConvTrunk(image_size, channels, width, code_size, norm="none")
        self.to_code = nn.Conv2d(self.trunk.out_channels, code_channels, 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(code_channels * code_size * code_size, n_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
