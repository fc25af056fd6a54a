"""The Method interface: networks, latent parts, losses grouped by optimiser.

A method owns its networks and defines its losses; the shared trainer owns the loop,
devices, precision, distribution, clipping, checkpoints and logging. ``train_step`` is
a generator: each ``yield group, losses`` hands the trainer one optimiser group's
(already weighted) loss terms; the trainer sums them, back-propagates, clips and steps
that group's optimiser, then resumes the generator, so later updates in the same step
see the new weights (critic first, then autoencoder, and so on).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from facefactors.data.specs import AttributeSpec, Batch
from facefactors.latent import Latent


@dataclass
class ModelSetup:
    """What a method needs to know about the data to build its networks."""

    image_size: int
    channels: int
    attributes: list[AttributeSpec]      # the attributes that get their own latent part
    width: int = 32                      # base channel width of the conv networks
    part_dims: dict[str, int] = field(default_factory=dict)  # part name -> size (vector parts)
    norm: str = "batch"
    # the dataset's other discrete attributes (name -> classes): labels a method may use
    # without giving them a part, e.g. to push nuisances out of the attribute parts
    extra_attributes: dict[str, int] = field(default_factory=dict)


@dataclass
class OptimizerSpec:
    """One optimiser group: parameters and Adam/SGD/RMSprop settings."""

    params: list[nn.Parameter]
    lr: float
    kind: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    momentum: float = 0.0

    def build(self) -> torch.optim.Optimizer:
        if self.kind == "adam":
            return torch.optim.Adam(self.params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        if self.kind == "sgd":
            return torch.optim.SGD(self.params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.kind == "rmsprop":
            return torch.optim.RMSprop(self.params, lr=self.lr, weight_decay=self.weight_decay)
        raise ValueError(f"unknown optimiser kind {self.kind!r}")


def warmup_ramp(step: int, total_steps: int, warmup: float, ramp: float) -> float:
    """Loss multiplier: 0 for the first ``warmup`` fraction of training, then a linear ramp to 1
    over the next ``ramp`` fraction (1 at once when ``ramp`` <= 0)."""
    t = step / max(total_steps, 1)
    if t < warmup:
        return 0.0
    return 1.0 if ramp <= 0 else min(1.0, (t - warmup) / ramp)


@dataclass
class MethodParams:
    """Hyper-parameters every method shares; methods subclass it to add loss weights."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


class Method(nn.Module):
    """Base class. Subclasses set ``name``, ``summary`` and ``Params`` and register."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams

    def __init__(self, setup: ModelSetup, params: MethodParams):
        super().__init__()
        self.setup = setup
        self.params = params
        self.train_augment: Callable[[torch.Tensor], torch.Tensor] | None = None  # set by the trainer

    # --- the model -----------------------------------------------------------
    @property
    def part_names(self) -> list[str]:
        """Latent part names in order (one per modelled attribute, then ``rest``)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> Latent:
        raise NotImplementedError

    def decode(self, z: Latent) -> torch.Tensor:
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def sample(self, part: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` codes for ``part`` from the method's prior, where it has one."""
        raise NotImplementedError(f"method {self.name!r} has no prior to sample part {part!r} from")

    # --- training --------------------------------------------------------------
    def bind_dataset(self, ds, seed: int = 0) -> None:
        """Called by the trainer once with the training dataset, for methods that draw more
        than the batch (e.g. partner images of the same class). Default: nothing."""

    def augment_images(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` through the run's training augmentation (``train.augment``) while training, else
        unchanged. The trainer applies it to each batch; a method that draws more images (partners)
        passes them through it too, so every image a loss sees is augmented alike."""
        if self.train_augment is None or not self.training:
            return x
        return self.train_augment(x)

    def polish_modules(self) -> list[nn.Module]:
        """What the polish phase (``train.polish``) trains: the decoder, where the method names one
        ``decoder``. Everything else stays frozen, in eval mode."""
        decoder = getattr(self, "decoder", None)
        return [decoder] if isinstance(decoder, nn.Module) else []

    def polish_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """The polish phase's losses at (global) ``step``: the decoder reconstructs each image from its deterministic
        codes (``encode``), which no gradient reaches; mean-squared error, what PSNR reads."""
        with torch.no_grad():
            z = self.encode(batch.image)
        return {"rec": F.mse_loss(self.decode(z).float(), batch.image.float())}

    def optimizers(self) -> dict[str, OptimizerSpec]:
        """Optimiser groups by name, in the order ``train_step`` yields them."""
        raise NotImplementedError

    def train_step(self, batch: Batch, step: int, total_steps: int) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        raise NotImplementedError

    # --- description -------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "parts": self.part_names,
                "params": dataclasses.asdict(self.params),
                "n_parameters": sum(p.numel() for p in self.parameters())}
