"""RLW: random loss weighting, task weights drawn afresh every step."""
from __future__ import annotations

import torch
from torch import Tensor

from ..registry import ALGORITHMS
from ._weighting import LossWeighting


def random_weights(n_tasks: int, generator: torch.Generator | None = None) -> Tensor:
    """softmax(z) with z ~ N(0, I_T): weights in (0, 1) summing to 1 (LibMTL's scale), drawn on the CPU from
    `generator` (default: torch's global generator, which the runner seeds and checkpoints)."""
    return torch.softmax(torch.randn(n_tasks, generator=generator), 0)


@ALGORITHMS.register("rlw")
class RandomLossWeighting(LossWeighting):
    """Random loss weighting (RLW): sum_t w_t R_t with w = softmax(z), z ~ N(0, I), drawn every step.

    Reference: Lin, Ye, Zhang, Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
    Multi-Task Learning", TMLR 2022; LibMTL `LibMTL/weighting/RLW.py` (docs/methods.md#rlw). R_t is task t's
    mean cross-entropy over the batch (missing labels count 0). The weights sum to 1, as in the paper and LibMTL,
    so the task loss is on the scale of a mean over tasks (ERM sums them). The draws come from torch's global
    generator, which the runner seeds and checkpoints: runs are deterministic and resume exactly. No
    hyperparameters (the paper's normal distribution). Needs at least 2 tasks.
    """

    def weigh(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        weights = random_weights(len(losses)).to(losses.device)
        return (weights * losses).sum(), weights
