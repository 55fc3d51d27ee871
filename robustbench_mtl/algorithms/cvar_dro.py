"""CVaR-DRO: the mean of the largest alpha fraction of per-example losses in each batch; no group labels."""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ..hparams import Choice, hp
from ..registry import ALGORITHMS
from ..types import Batch
from .base import Algorithm


@dataclass(frozen=True)
class CVaRDROHParams:
    alpha: float = hp(0.1, Choice((0.1, 0.2, 0.5)),
                      gt=0, le=1, help="fraction of the batch in the tail: the loss is the mean of the ceil(alpha*B) largest")


@ALGORITHMS.register("cvar_dro")
class CVaRDRO(Algorithm):
    """CVaR-DRO: minimise the mean of the ceil(alpha*B) largest per-example losses of each batch.

    Reference: Levy, Carmon, Duchi, Sidford, "Large-Scale Methods for Distributionally Robust
    Optimization", NeurIPS 2020 (CVaR at level alpha; Duchi & Namkoong 2021). This is the plain
    minibatch estimate of CVaR_alpha (biased for small batches), without the paper's multilevel
    Monte-Carlo correction; gradients flow only through the selected examples. alpha=1 is ERM.
    Details: docs/methods.md#cvar_dro.
    """

    HParams = CVaRDROHParams
    uses_train_groups = False

    def aggregate(self, losses: Tensor, batch: Batch) -> Tensor:
        k = max(1, math.ceil(self.hparams.alpha * len(losses) - 1e-9))  # 1e-9: 0.1*30 must stay 3, not 4
        return losses.topk(k).values.mean()
