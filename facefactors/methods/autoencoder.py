"""Baseline: the shared conv encoder/decoder with the latent split into named parts.

Reconstruction is the only loss, so nothing pushes an attribute into its own part:
this is the reference every disentangling method must beat on leakage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from facefactors.data.specs import Batch
from facefactors.latent import Latent
from facefactors.methods.base import Method, MethodParams, ModelSetup, OptimizerSpec
from facefactors.methods.registry import register
from facefactors.nn.decoders import VectorDecoder
from facefactors.nn.encoders import VectorEncoder

DEFAULT_PART_DIM = 32
REST_PART_DIM = 64


def vector_part_dims(setup: ModelSetup) -> dict[str, int]:
    """One vector part per modelled attribute plus ``rest``, sized from ``setup.part_dims``."""
    names = [a.name for a in setup.attributes] + ["rest"]
    unknown = set(setup.part_dims) - set(names)
    if unknown:
        raise ValueError(f"part_dims names unknown parts {sorted(unknown)}; parts are {names}")
    return {n: int(setup.part_dims.get(n, REST_PART_DIM if n == "rest" else DEFAULT_PART_DIM)) for n in names}


def reconstruction_loss(kind: str, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel 'mse' or 'l1' (normalised by pixel count, so weights carry across sizes)."""
    if kind == "mse":
        return F.mse_loss(x_hat, x)
    if kind == "l1":
        return F.l1_loss(x_hat, x)
    raise ValueError(f"unknown reconstruction loss {kind!r}; use mse or l1")


@dataclass
class AutoencoderParams(MethodParams):
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    rec: float = 1.0            # weight of the reconstruction term
    rec_loss: str = "mse"       # mse | l1


@register
class Autoencoder(Method):
    name = "autoencoder"
    summary = "Baseline: shared conv autoencoder, latent split into named parts, reconstruction loss only."
    Params = AutoencoderParams

    def __init__(self, setup: ModelSetup, params: AutoencoderParams):
        super().__init__(setup, params)
        self.dims = vector_part_dims(setup)
        total = sum(self.dims.values())
        self.encoder = VectorEncoder(setup.image_size, setup.channels, total, setup.width, setup.norm)
        self.decoder = VectorDecoder(setup.image_size, setup.channels, total, setup.width, setup.norm)

    @property
    def part_names(self) -> list[str]:
        return list(self.dims)

    def encode(self, x: torch.Tensor) -> Latent:
        z = self.encoder(x)
        return Latent(zip(self.dims, torch.split(z, list(self.dims.values()), dim=1)))

    def decode(self, z: Latent) -> torch.Tensor:
        return self.decoder(z.flatten(self.part_names))

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"autoencoder": OptimizerSpec(list(self.parameters()), self.params.lr, betas=self.params.betas)}

    def train_step(self, batch: Batch, step: int, total_steps: int) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        x_hat = self.reconstruct(batch.image)
        yield "autoencoder", {"rec": self.params.rec * reconstruction_loss(self.params.rec_loss, x_hat, batch.image)}
