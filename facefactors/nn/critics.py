"""PatchGAN critic (Isola et al.): a conv net scoring overlapping patches, usable for WGAN-GP."""
from __future__ import annotations

import torch
from torch import nn

from facefactors.nn.blocks import norm_layer


class PatchCritic(nn.Module):
    """Image -> (B, 1, h, w) patch scores.

    Norm defaults to 'layer' since batch norm breaks the per-sample gradient penalty
    of WGAN-GP. ``n_layers`` stride-2 stages set the receptive field. ``style='pix2pix'`` ends
    with two 4x4 stride-1 convs (Isola et al.); ``style='deep'`` is the deeper variant of StarGAN
    (Choi et al.) that Oldfield et al. use: ``n_layers`` stride-2 convs without normalisation,
    then a 3x3 conv to one score per patch, so six stages fit a 128 px image (2x2 patches).
    """

    def __init__(self, channels: int, width: int = 32, n_layers: int = 3, norm: str = "layer",
                 style: str = "pix2pix"):
        super().__init__()
        if style == "deep":
            layers: list[nn.Module] = []
            c = channels
            for i in range(n_layers):
                c_next = width * min(2 ** i, 32)
                layers += [nn.Conv2d(c, c_next, 4, 2, 1), nn.LeakyReLU(0.01, inplace=True)]
                c = c_next
            self.net = nn.Sequential(*layers, nn.Conv2d(c, 1, 3, 1, 1))
            return
        if style != "pix2pix":
            raise ValueError(f"unknown critic style {style!r}; use pix2pix or deep")
        layers = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        c = width
        for i in range(1, n_layers):
            c_next = width * min(2 ** i, 8)
            layers += [nn.Conv2d(c, c_next, 4, 2, 1), norm_layer(norm, c_next), nn.LeakyReLU(0.2, inplace=True)]
            c = c_next
        c_next = width * min(2 ** n_layers, 8)
        layers += [nn.Conv2d(c, c_next, 4, 1, 1), norm_layer(norm, c_next), nn.LeakyReLU(0.2, inplace=True),
                   nn.Conv2d(c_next, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al.): (||grad critic(x_hat)||_2 - 1)^2 on random interpolates."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    score = critic(x_hat)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
