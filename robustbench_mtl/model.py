"""The trained network: a backbone, one linear head per task, and the objectives' own modules."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .backbones.base import Backbone
from .objectives.base import Objective
from .types import Outputs


class Model(nn.Module):
    """Backbone + per-task heads on the pooled representation + objective submodules.

    `head_norm` > 0 rescales every head's weight to that Frobenius norm after each step: without
    such a constraint the heads can grow to undo a penalty on the shared layer (docs/methods.md#synthetic).
    """

    def __init__(self, backbone: Backbone, tasks: dict[str, int], objectives: dict[str, Objective],
                 head_norm: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict({t: nn.Linear(backbone.out_dim, c) for t, c in tasks.items()})
        self.objectives = nn.ModuleDict(objectives)
        self.head_norm = head_norm
        if head_norm > 0:
            self._project_heads()

    def forward(self, x: Tensor, mask: Tensor | None = None, heads: bool = True, causal: bool = False) -> Outputs:
        # `causal` only for backbones that declare supports_causal (CLM's auxiliary pass)
        out = self.backbone(x, mask, causal=True) if causal else self.backbone(x, mask)
        if heads:
            out.logits = {t: h(out.pooled) for t, h in self.heads.items()}
        return out

    @torch.no_grad()
    def _project_heads(self) -> None:
        for head in self.heads.values():
            head.weight.mul_(self.head_norm / head.weight.norm().clamp_min(1e-12))

    def post_step(self) -> None:
        """Projections that must hold after every optimizer step."""
        if self.head_norm > 0:
            self._project_heads()
        for obj in self.objectives.values():
            obj.post_step()
