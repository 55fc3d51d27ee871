"""RWG: group-balanced training by per-example loss weights (or sampling probabilities) 1/n_g."""
from __future__ import annotations

from torch import Tensor

from ..data.base import TensorSplit
from ..registry import ALGORITHMS
from ..types import Batch
from ._group_weights import ReweightHParams, inverse_frequency, weighted_mean
from .base import Algorithm


@ALGORITHMS.register("reweight_groups")
class ReweightGroups(Algorithm):
    """Group reweighting (RWG): each example's loss weighted by 1/n_g of its training group.

    Reference: Idrissi et al., "Simple data balancing achieves competitive worst-group-accuracy",
    CLeaR 2022 (RWG). `mode=loss` (default): loss = sum_i w_i l_i / sum_i w_i with w_i = 1/n_{g(i)},
    i.e. the weights rescaled to mean 1 over each batch (a self-normalised importance-weighted estimate
    of the group-balanced risk), examples drawn uniformly. `mode=sampling`: examples drawn with
    probability proportional to 1/n_{g(i)} (with replacement, N per epoch), plain mean loss; this is
    how the BalancingGroups code balances (a WeightedRandomSampler). n_g are the training group counts.
    Details: docs/methods.md#reweight_groups.
    """

    HParams = ReweightHParams
    uses_train_groups = True

    def sampler_weights(self, train: TensorSplit) -> Tensor | None:
        if self.hparams.mode == "sampling":
            return inverse_frequency(train.g, self.info.train_group_counts)
        return None

    def aggregate(self, losses: Tensor, batch: Batch) -> Tensor:
        if self.hparams.mode == "sampling":
            return losses.mean()
        return weighted_mean(losses, inverse_frequency(batch.g, self.info.train_group_counts))
