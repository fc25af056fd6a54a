"""PatchGAN critic (Isola et al.): a conv net scoring overlapping patches, usable for WGAN-GP."""
from __future__ import annotations

import torch
from torch import nn

from facefactors.nn.blocks import norm_layer


class PatchCritic(nn.Module):
    """Image -> (B, 1, h, w) patch scores.

    Norm defaults to 'layer' since batch norm breaks the per-sample gradient penalty
    of WGAN-GP. ``n_layers`` stride-2 stages set the receptive field.
    """

    def __init__(self, channels: int, width: int = 32, n_layers: int = 3, norm: str = "layer"):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
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
