"""Shared parts of the multi-task loss weightings (UW, DWA, RLW; GradNorm's undecayed weights)."""
from __future__ import annotations

import abc
from typing import Any

from torch import Tensor, nn

from ..data.base import DataInfo
from ..types import Batch
from ._surgery import require_tasks, task_risks
from .base import Algorithm


def without_decay(groups: list[dict[str, Any]], own: list[nn.Parameter]) -> list[dict[str, Any]]:
    """`groups` (Algorithm.decay_groups) with the parameters `own` taken out into a group without weight decay:
    loss weights are not model weights, and decay would pull them toward a value the method never chose."""
    ids = {id(p) for p in own}
    taken = [p for g in groups for p in g["params"] if id(p) in ids]
    kept = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in groups]
    return [*kept, {"params": taken, "weight_decay": 0.0}]


class LossWeighting(Algorithm, abc.ABC):
    """sum_t w_t R_t (+ a method's own terms) with task weights from `weigh`; R_t as in task_risks.

    Every parameter, heads included, gets the gradient of this weighted loss (one backward, as ERM). --aux
    objectives add their weighted loss outside the task weighting. Each step also reports the weights as
    `weight_<task>`. Needs at least 2 tasks.
    """

    @classmethod
    def check(cls, name: str, info: DataInfo, objectives: tuple[str, ...]) -> None:
        require_tasks(name, info, "weighs the tasks' losses against each other")

    @abc.abstractmethod
    def weigh(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """(the weighted task loss, a scalar with graph; the weights w [T], detached) from the task losses R_t [T]."""

    def compute_loss(self, batch: Batch, aux_batch: Batch | None) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.model(batch.x)
        task, weights = self.weigh(task_risks(out, batch))
        total, parts = self.with_objectives(task, batch, aux_batch, out)
        return total, {"loss_task": task, **parts, **{f"weight_{t}": w for t, w in zip(out.logits, weights)}}
