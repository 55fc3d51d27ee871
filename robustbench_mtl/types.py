"""The small typed records that flow between runner, algorithm, backbone and objectives."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass
class Batch:
    """One minibatch: inputs, labels per task, group and environment ids, dataset indices.

    Group ids are -1 where the algorithm may not see them (training data of group-free methods).
    """

    x: Tensor
    y: dict[str, Tensor]
    g: Tensor
    e: Tensor
    idx: Tensor

    def to(self, device: torch.device | str) -> "Batch":
        nb = device != "cpu" and torch.device(device).type == "cuda"
        return Batch(
            x=self.x.to(device, non_blocking=nb),
            y={k: v.to(device, non_blocking=nb) for k, v in self.y.items()},
            g=self.g.to(device, non_blocking=nb),
            e=self.e.to(device, non_blocking=nb),
            idx=self.idx.to(device, non_blocking=nb),
        )

    def with_x(self, x: Tensor) -> "Batch":
        """The same batch with other inputs (e.g. an augmented view)."""
        return replace(self, x=x)

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class Outputs:
    """What one forward pass of the model produced.

    pooled: the shared representation the heads read, [B, D].
    tokens: token/patch features [B, L, D] where the backbone has them (ViT, BERT), else None.
    logits: one tensor [B, C_t] per task (empty for auxiliary passes that skip the heads).
    """

    pooled: Tensor
    tokens: Tensor | None = None
    logits: dict[str, Tensor] = field(default_factory=dict)

    @property
    def shared(self) -> Tensor:
        """The full shared representation: token features where present, else pooled."""
        return self.tokens if self.tokens is not None else self.pooled
