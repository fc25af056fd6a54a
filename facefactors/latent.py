"""The Latent type: ordered named parts, and the generic operations written once.

A part is a tensor whose first dimension is the batch: vectors (B, d) or maps
(B, C, h, w). Every method's ``encode`` returns a Latent and its ``decode`` takes one,
so swap, interpolate, mix and edit serve every method.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch

from facefactors.errors import FacefactorsError


class Latent(Mapping[str, torch.Tensor]):
    """An immutable, ordered mapping part name -> tensor with a shared batch size."""

    __slots__ = ("_parts",)

    def __init__(self, parts: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]):
        items = list(parts.items()) if isinstance(parts, Mapping) else list(parts)
        if not items:
            raise ValueError("a Latent needs at least one part")
        sizes = {name: t.shape[0] for name, t in items}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"latent parts disagree on batch size: {sizes}")
        self._parts: dict[str, torch.Tensor] = dict(items)

    # Mapping protocol -------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self._parts[name]
        except KeyError:
            raise FacefactorsError(
                f"unknown latent part {name!r}; parts: {', '.join(self._parts)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self._parts.items())
        return f"Latent({shapes})"

    # Convenience -------------------------------------------------------------
    @property
    def parts(self) -> list[str]:
        return list(self._parts)

    @property
    def batch_size(self) -> int:
        return next(iter(self._parts.values())).shape[0]

    def replace(self, **parts: torch.Tensor) -> "Latent":
        """A copy with some parts replaced (names must exist, shapes must match)."""
        new = dict(self._parts)
        for name, t in parts.items():
            old = self[name]
            if t.shape != old.shape:
                raise ValueError(f"part {name!r}: shape {tuple(t.shape)} != {tuple(old.shape)}")
            new[name] = t
        return Latent(new)

    def map(self, fn) -> "Latent":
        return Latent({k: fn(v) for k, v in self._parts.items()})

    def index(self, idx) -> "Latent":
        return self.map(lambda t: t[idx])

    def to(self, *args, **kwargs) -> "Latent":
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "Latent":
        return self.map(torch.Tensor.detach)

    def flat(self, part: str) -> torch.Tensor:
        """One part flattened to (B, d)."""
        return self[part].reshape(self.batch_size, -1)

    def flatten(self, parts: Sequence[str] | None = None) -> torch.Tensor:
        """Chosen (default: all) parts flattened and concatenated to (B, D)."""
        return torch.cat([self.flat(p) for p in (parts or self.parts)], dim=1)

    @staticmethod
    def cat(latents: Sequence["Latent"]) -> "Latent":
        """Concatenate latents along the batch dimension."""
        first = latents[0]
        for other in latents[1:]:
            _same_layout(first, other)
        return Latent({k: torch.cat([lat[k] for lat in latents]) for k in first.parts})


def _same_layout(a: Latent, b: Latent) -> None:
    if a.parts != b.parts:
        raise ValueError(f"latents have different parts: {a.parts} vs {b.parts}")
    for k in a.parts:
        if a[k].shape[1:] != b[k].shape[1:]:
            raise ValueError(f"part {k!r}: shapes {tuple(a[k].shape)} vs {tuple(b[k].shape)}")


def _check_parts(lat: Latent, parts: Iterable[str]) -> list[str]:
    parts = [parts] if isinstance(parts, str) else list(parts)
    for p in parts:
        lat[p]  # raises a clear error for unknown parts
    return parts


def swap(a: Latent, b: Latent, parts: str | Iterable[str]) -> Latent:
    """``a`` with the named parts taken from ``b`` (row-wise; batches must match or b has 1 row)."""
    _same_layout(a, b)
    parts = _check_parts(a, parts)
    return a.replace(**{p: b[p].expand_as(a[p]).clone() if b[p].shape[0] == 1 else b[p] for p in parts})


def interpolate(a: Latent, b: Latent, parts: str | Iterable[str], alphas: Sequence[float] | torch.Tensor
                ) -> list[Latent]:
    """One latent per alpha: the named parts are (1 - alpha) * a + alpha * b, others from a.

    alpha 0 returns ``a`` exactly and alpha 1 returns ``a`` with ``b``'s parts exactly.
    """
    _same_layout(a, b)
    parts = _check_parts(a, parts)
    out = []
    for alpha in torch.as_tensor(alphas, dtype=torch.float64).tolist():
        if alpha == 0.0:
            out.append(a)
        elif alpha == 1.0:
            out.append(swap(a, b, parts))
        else:
            out.append(a.replace(**{p: torch.lerp(a[p], b[p].to(a[p].dtype), alpha) for p in parts}))
    return out


def mix(latents: Sequence[Latent], weights: Sequence[float] | torch.Tensor, parts: str | Iterable[str],
        base: int = 0, atol: float = 1e-6) -> Latent:
    """Convex mixture of the named parts across ``latents``; other parts from ``latents[base]``.

    Weights must be non-negative and sum to 1 (a convex combination stays in the
    region the decoder was trained on).
    """
    if len(latents) < 2:
        raise ValueError("mix needs at least two latents")
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.ndim != 1 or w.numel() != len(latents):
        raise ValueError(f"need one weight per latent ({len(latents)}), got {list(w.shape)}")
    if (w < 0).any() or abs(float(w.sum()) - 1.0) > atol:
        raise ValueError(f"mixing weights must be non-negative and sum to 1, got {w.tolist()}")
    for other in latents[1:]:
        _same_layout(latents[0], other)
    parts = _check_parts(latents[0], parts)
    ref = latents[base]
    new = {}
    for p in parts:
        acc = torch.zeros_like(ref[p], dtype=torch.float64)
        for wi, lat in zip(w.tolist(), latents):
            acc = acc + wi * lat[p].double()
        new[p] = acc.to(ref[p].dtype)
    return ref.replace(**new)


def edit(a: Latent, part: str, direction: torch.Tensor, strength: float | torch.Tensor) -> Latent:
    """Move one part along ``direction`` (shape of one row, or flattened) by ``strength``.

    ``strength`` may be a scalar or one value per row. Strength 0 returns ``a`` unchanged.
    """
    _check_parts(a, part)
    t = a[part]
    d = torch.as_tensor(direction, dtype=t.dtype, device=t.device)
    if d.numel() != t[0].numel():
        raise ValueError(f"direction has {d.numel()} elements, part {part!r} has {t[0].numel()} per row")
    d = d.reshape(1, *t.shape[1:])
    s = torch.as_tensor(strength, dtype=t.dtype, device=t.device).reshape(-1, *([1] * (t.ndim - 1)))
    return a.replace(**{part: t + s * d})


def class_means(lat: Latent, part: str, labels: torch.Tensor) -> dict[int, torch.Tensor]:
    """Mean code of each class for one part ("label-like" codes, Oldfield IV-C)."""
    _check_parts(lat, part)
    return {int(c): lat[part][labels == c].mean(0) for c in torch.unique(labels)}
