"""Gradient surgery between tasks (PCGrad, GradVac, MGDA, ...): per-task gradients of the shared backbone, combined."""
from __future__ import annotations

import abc
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.base import DataInfo
from ..errors import ConfigError
from ..types import Batch, Outputs
from .base import Algorithm


def module_groups(backbone: nn.Module) -> list[list[nn.Parameter]]:
    """The backbone's trainable parameters, one list per module that holds some directly (a layer's weight and
    bias; a non-leaf module's own parameters, e.g. a position embedding), in module order, each parameter once."""
    seen: set[int] = set()
    groups = []
    for module in backbone.modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in own)
        if own:
            groups.append(own)
    return groups


def flat_grad(loss: Tensor, params: list[nn.Parameter]) -> Tensor:
    """d loss / d params as one float32 vector (zeros for parameters the loss does not reach); keeps the graph."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                      for g, p in zip(grads, params)])


def task_risks(out: Outputs, batch: Batch) -> Tensor:
    """R_t [T]: each task's mean cross-entropy over the batch, in `out.logits`' order; a missing label (-1)
    counts 0 (so sum_t R_t is ERM's loss)."""
    return torch.stack([F.cross_entropy(z.float(), batch.y[t], ignore_index=-1, reduction="none").mean()
                        for t, z in out.logits.items()])


def require_tasks(name: str, info: DataInfo, acts: str = "acts between tasks' gradients") -> None:
    """ConfigError (one line) unless the dataset has at least 2 tasks; `acts` says what `name` does between them."""
    if len(info.tasks) < 2:
        raise ConfigError(f"{name} needs a dataset with at least 2 tasks; dataset '{info.name}' has "
                          f"{len(info.tasks)} ({', '.join(info.tasks)}), and {name} {acts}; "
                          f"use a multi-task dataset, or erm")


class GradientSurgery(Algorithm, abc.ABC):
    """sum_t R_t with the shared parameters' gradient replaced by `combine` of the per-task gradients.

    R_t is task t's mean cross-entropy over the batch (missing labels count 0, as in ERM, so sum_t R_t is
    ERM's loss). The shared parameters are the backbone's; every task head gets its ordinary gradient (only
    its own task reaches it), and --aux objectives add their ordinary gradient everywhere, outside the surgery.
    One backward per task (torch.autograd.grad) and one for the whole loss.
    """

    @classmethod
    def check(cls, name: str, info: DataInfo, objectives: tuple[str, ...]) -> None:
        require_tasks(name, info)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.groups = module_groups(self.model.backbone)
        self.shared = [p for group in self.groups for p in group]  # the flat gradients' order
        self._task_losses: Tensor | None = None  # compute_loss -> step

    @abc.abstractmethod
    def combine(self, grads: Tensor) -> Tensor:
        """The shared parameters' gradient [P] from the per-task gradients [T, P]."""

    def weighting_loss(self, grads: Tensor, losses: Tensor) -> Tensor | None:
        """A loss on the algorithm's own weighting parameters (GradNorm's task weights), from the per-task
        gradients [T, P] and the detached task losses R_t [T]; called before `combine` and added to the step's
        backward. None (the default): nothing is added."""
        return None

    def compute_loss(self, batch: Batch, aux_batch: Batch | None) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.model(batch.x)
        losses = task_risks(out, batch)
        self._task_losses = losses
        task = losses.sum()
        total, parts = self.with_objectives(task, batch, aux_batch, out)
        return total, {"loss_task": task, **parts}

    def step(self, total: Tensor) -> None:
        losses, self._task_losses = self._task_losses, None
        if losses is None:
            raise RuntimeError("step() without compute_loss(): the per-task losses are missing")
        grads = torch.stack([flat_grad(loss, self.shared) for loss in losses])
        extra = self.weighting_loss(grads, losses.detach())
        delta = self.combine(grads) - grads.sum(0)
        # total.backward() gives the shared parameters sum_t g_t (+ the objectives' gradient); this linear term
        # adds combine(g) - sum_t g_t, so the base step (clipping, optimizer, schedule, projections) is unchanged.
        swap = sum((p * d.view_as(p).to(p.dtype)).sum() for p, d in zip(self.shared, delta.split(
            [p.numel() for p in self.shared])))
        super().step(total + swap if extra is None else total + swap + extra)
