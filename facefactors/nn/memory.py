"""A ring of past codes and their labels, for terms that need more samples than a batch holds.

Adversaries and dependence measures that see only the current batch judge from 32 codes; a
fresh probe after training fits thousands. The ring keeps the last ``size`` codes (detached) and
labels in buffers, so they are saved with the model and resume continues with the same ring.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


class CodeRing(nn.Module):
    """The last ``size`` codes of each named part (flattened to ``dim``) and labels of each named
    attribute, overwriting the oldest first."""

    def __init__(self, parts: Sequence[str], attributes: Sequence[str], size: int, dim: int):
        super().__init__()
        if size <= 0:
            raise ValueError(f"a code ring needs a size > 0, got {size}")
        self.parts, self.attributes, self.size = list(parts), list(attributes), int(size)
        self.register_buffer("codes", torch.zeros(len(self.parts), self.size, dim))
        self.register_buffer("labels", torch.zeros(len(self.attributes), self.size, dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("next", torch.zeros((), dtype=torch.long))

    def with_memory(self, codes: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Each part's batch codes (flattened, their gradient kept) followed by the remembered
        ones; each attribute's labels likewise."""
        n = int(self.filled)
        parts = {q: torch.cat([codes[q].flatten(1).float(), self.codes[i, :n]]) for i, q in enumerate(self.parts)}
        both = {a: torch.cat([labels[a].long(), self.labels[j, :n]]) for j, a in enumerate(self.attributes)}
        return parts, both

    @torch.no_grad()
    def remember(self, codes: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]) -> None:
        """Write the batch's last ``min(B, size)`` codes (detached) and labels into the ring."""
        b = next(iter(codes.values())).shape[0]
        k = min(b, self.size)
        idx = (int(self.next) + torch.arange(k)) % self.size
        for i, q in enumerate(self.parts):
            self.codes[i, idx] = codes[q].flatten(1)[-k:].float()
        for j, a in enumerate(self.attributes):
            self.labels[j, idx] = labels[a][-k:].long()
        self.next.fill_((int(self.next) + k) % self.size)
        self.filled.fill_(min(int(self.filled) + k, self.size))
