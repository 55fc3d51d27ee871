"""Per-environment risks for the invariance penalties (IRM, V-REx), and their shared annealed update."""
from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import Tensor

from ..types import Batch, Outputs
from ._counting import CountsUpdates


def env_risks(losses: Tensor, e: Tensor) -> Tensor:
    """Mean per-example loss of each environment present in the batch, [n_envs] in ascending env id."""
    envs, inverse = torch.unique(e, return_inverse=True)
    sums = torch.zeros(len(envs), dtype=losses.dtype, device=losses.device).index_add(0, inverse, losses)
    counts = torch.bincount(inverse, minlength=len(envs)).to(losses.dtype)
    return sums / counts


def env_masks(e: Tensor) -> list[Tensor]:
    """Boolean masks of the examples of each environment present, in ascending env id."""
    return [e == v for v in torch.unique(e)]


def annealed_weight(step: int, anneal_steps: int, weight: float) -> float:
    """1 before `anneal_steps` updates, then `weight` (the reference IRM schedule)."""
    return weight if step >= anneal_steps else 1.0


class AnnealedPenalty(CountsUpdates, abc.ABC):
    """risk + lambda(step) * penalty (+ weighted --aux terms), lambda = 1 for `anneal_steps` updates and
    then `penalty_weight`; with `rescale` the loss is divided by lambda when lambda > 1, and with
    `reset_optimizer` the optimizer's moments are cleared at the anneal step (DomainBed). The update count
    is checkpointed. Subclasses give the risk and the penalty; their HParams carry the four fields above.
    """

    penalty_key: ClassVar[str]

    @abc.abstractmethod
    def penalty_terms(self, out: Outputs, batch: Batch) -> tuple[Tensor, Tensor]:
        """(mean risk over environments, unweighted penalty)."""

    def penalty_lambda(self) -> float:
        h = self.hparams
        return annealed_weight(self.updates, h.anneal_steps, h.penalty_weight)

    def compute_loss(self, batch: Batch, aux_batch: Batch | None) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.model(batch.x)
        risk, penalty = self.penalty_terms(out, batch)
        lam = self.penalty_lambda()
        total, parts = self.with_objectives(risk + lam * penalty, batch, aux_batch, out)
        if self.hparams.rescale and lam > 1:  # keeps the gradient scale comparable before and after annealing
            total = total / lam
        return total, {"loss_task": risk, self.penalty_key: penalty, **parts}

    def update(self, batch: Batch, aux_batch: Batch | None = None) -> dict[str, float]:
        h = self.hparams
        if h.reset_optimizer and h.anneal_steps > 0 and self.updates == h.anneal_steps:
            self.optimizer.state.clear()  # the penalty's scale jumps: stale moments would mis-scale steps
        return super().update(batch, aux_batch)
