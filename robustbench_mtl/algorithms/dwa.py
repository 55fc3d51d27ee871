"""DWA: dynamic weight average, task weights from how fast each task's epoch loss fell."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..hparams import Choice, hp
from ..registry import ALGORITHMS
from ._weighting import LossWeighting


@dataclass(frozen=True)
class DWAHParams:
    temperature: float = hp(2.0, Choice((1.0, 2.0, 5.0)), gt=0,
                            help="softmax temperature T (Liu et al. and LibMTL: 2; the space is the harness's)")


def dwa_weights(history: Sequence[Sequence[float]], temperature: float, n_tasks: int) -> Tensor:
    """The task weights [T] from the per-epoch average task losses `history` (oldest first): with two or more
    epochs, T softmax(r / temperature) with r_t = L_t(last) / L_t(the one before); else all ones."""
    if len(history) < 2:
        return torch.ones(n_tasks)
    ratios = torch.tensor(history[-1], dtype=torch.float64) / torch.tensor(history[-2], dtype=torch.float64)
    return (n_tasks * torch.softmax(ratios / temperature, 0)).float()


@ALGORITHMS.register("dwa")
class DynamicWeightAverage(LossWeighting):
    """Dynamic weight average (DWA): sum_t w_t R_t with w = T softmax(r / temperature) from last epochs' losses.

    Reference: Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019; LibMTL
    `LibMTL/weighting/DWA.py` (docs/methods.md#dwa). R_t is task t's mean cross-entropy over the batch (missing
    labels count 0). L_t(e) is the average of R_t over the steps of epoch e; in epoch e >= 2 every step weighs
    task t by w_t = T exp(r_t / temperature) / sum_j exp(r_j / temperature), r_t = L_t(e-1) / L_t(e-2) (a task
    whose loss fell less gets more weight); epochs 0 and 1 use w_t = 1 (ERM's loss). An epoch is the run's
    ceil(N / batch_size) updates (the schedule's length / train.epochs). The epoch averages and the running sums
    are checkpointed, so a resumed run weighs as an uninterrupted one. Each step reports the weights as
    `weight_<task>`. Needs at least 2 tasks.
    """

    HParams = DWAHParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        n = len(self.info.tasks)
        self.history: list[list[float]] = []  # L_t(e) of every finished epoch, oldest first
        self.epoch_sum = torch.zeros(n, device=next(self.model.parameters()).device)  # sum of R_t this epoch
        self.epoch_steps = 0

    def _epoch_length(self) -> int:
        # The runner sizes the schedule as train.epochs x ceil(N / batch_size) updates.
        return max(1, self.total_steps // self.train_hp.epochs)

    def weigh(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        weights = dwa_weights(self.history, self.hparams.temperature, len(losses)).to(losses.device)
        self.epoch_sum = self.epoch_sum + losses.detach()
        self.epoch_steps += 1
        if self.epoch_steps == self._epoch_length():  # the epoch's last update: its averages are complete
            self.history.append((self.epoch_sum / self.epoch_steps).tolist())
            self.epoch_sum, self.epoch_steps = torch.zeros_like(self.epoch_sum), 0
        return (weights * losses).sum(), weights

    def extra_state(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history], "epoch_sum": self.epoch_sum.detach().cpu().clone(),
                "epoch_steps": self.epoch_steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "history" in state:
            self.history = [[float(v) for v in h] for h in state["history"]]
            self.epoch_sum = state["epoch_sum"].to(self.epoch_sum.device, self.epoch_sum.dtype)
            self.epoch_steps = int(state["epoch_steps"])
