"""The trained network: a backbone, one linear head per task (or an objective's own heads), and the
objectives' own modules."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .backbones.base import Backbone
from .errors import ConfigError
from .objectives.base import Objective
from .types import Outputs


class Model(nn.Module):
    """Backbone + per-task heads on the pooled representation + objective submodules.

    An objective with `provides_heads` (mtcrl's routed heads) replaces the linear heads: `heads` is then
    empty and every pass with heads reads that objective's `task_logits`, so prediction and every
    algorithm's end-task loss go through it. `head_norm` > 0 rescales every linear head's weight to that
    Frobenius norm after each step: without such a constraint the heads can grow to undo a penalty on the
    shared layer (docs/methods.md#synthetic).
    """

    def __init__(self, backbone: Backbone, tasks: dict[str, int], objectives: dict[str, Objective],
                 head_norm: float = 0.0) -> None:
        super().__init__()
        providers = [n for n, o in objectives.items() if o.provides_heads]
        if len(providers) > 1:
            raise ConfigError(f"objectives {' and '.join(providers)} both replace the task heads; keep one")
        self.head_source = providers[0] if providers else None
        self.backbone = backbone
        self.heads = nn.ModuleDict({} if self.head_source else {t: nn.Linear(backbone.out_dim, c)
                                                                 for t, c in tasks.items()})
        self.objectives = nn.ModuleDict(objectives)
        self.head_norm = head_norm
        if head_norm > 0:
            self._project_heads()

    def forward(self, x: Tensor, mask: Tensor | None = None, heads: bool = True, causal: bool = False) -> Outputs:
        # `causal` only for backbones that declare supports_causal (CLM's auxiliary pass)
        out = self.backbone(x, mask, causal=True) if causal else self.backbone(x, mask)
        if heads:
            out.logits = (self.objectives[self.head_source].task_logits(out) if self.head_source
                          else {t: h(out.pooled) for t, h in self.heads.items()})
        return out

    def loss_divisor(self) -> float:
        """What this step's whole loss is divided by: the product of the objectives' `loss_divisor`s."""
        return math.prod(o.loss_divisor() for o in self.objectives.values())

    def restarts_optimizer(self) -> bool:
        """Whether an objective asks to clear the optimizer's moments at this step (an anneal switch)."""
        return any(o.restarts_optimizer() for o in self.objectives.values())

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
