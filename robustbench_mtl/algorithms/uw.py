"""UW: uncertainty weighting, a learnable log-variance per task that scales its loss."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..registry import ALGORITHMS
from ._weighting import LossWeighting, without_decay

INITIAL_LOG_VARIANCE = -0.5  # LibMTL's initial s_t: every task starts at weight 1 / (2 e^-0.5) = 0.82


def uncertainty_loss(losses: Tensor, log_vars: Tensor) -> Tensor:
    """sum_t (exp(-s_t) R_t + s_t) / 2 from the task losses R_t [T] and the log-variances s_t [T] (LibMTL's form,
    with Kendall et al.'s 1/2 factors for every task)."""
    return 0.5 * (torch.exp(-log_vars) * losses + log_vars).sum()


@ALGORITHMS.register("uw")
class UncertaintyWeighting(LossWeighting):
    """Uncertainty weighting (UW): sum_t (exp(-s_t) R_t + s_t) / 2 with learnable log-variances s_t.

    Reference: Kendall, Gal, Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry
    and Semantics", CVPR 2018; LibMTL `LibMTL/weighting/UW.py` (docs/methods.md#uw). R_t is task t's mean
    cross-entropy over the batch (missing labels count 0); s_t = log sigma_t^2 is a parameter of this algorithm
    (initially -0.5, as LibMTL), trained with the model by the run's optimizer (without weight decay), and so
    checkpointed with it. Task t's effective weight is exp(-s_t) / 2; the + s_t / 2 term keeps the variances from
    growing without bound. Heads and backbone get the gradient of the weighted loss; --aux objectives add their
    own. No hyperparameters. Needs at least 2 tasks.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        device = next(self.model.parameters()).device
        self.log_vars = nn.Parameter(torch.full((len(self.info.tasks),), INITIAL_LOG_VARIANCE, device=device))

    def decay_groups(self, params: list[nn.Parameter]) -> list[dict[str, Any]]:
        return without_decay(super().decay_groups(params), [self.log_vars])

    def weigh(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        return uncertainty_loss(losses, self.log_vars), 0.5 * torch.exp(-self.log_vars.detach())
