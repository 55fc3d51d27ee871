"""CORAL: ERM plus the differences of the environments' feature means and covariances."""
from __future__ import annotations

from torch import Tensor

from ..registry import ALGORITHMS
from ._alignment import AlignmentPenalty


def coral_discrepancy(x: Tensor, y: Tensor) -> Tensor:
    """mean_d (mu_x - mu_y)_d^2 + mean_{d,d'} (C_x - C_y)_{dd'}^2, C the unbiased (n - 1) covariance."""
    mean_x, mean_y = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
    cent_x, cent_y = x - mean_x, y - mean_y
    cov_x = cent_x.t() @ cent_x / (len(x) - 1)
    cov_y = cent_y.t() @ cent_y / (len(y) - 1)
    return (mean_x - mean_y).pow(2).mean() + (cov_x - cov_y).pow(2).mean()


@ALGORITHMS.register("coral")
class CORAL(AlignmentPenalty):
    """Deep CORAL: mean end-task loss + gamma * mean over environment pairs of mean and covariance differences.

    Reference: Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV Workshops
    2016; DomainBed's `CORAL` (Gulrajani & Lopez-Paz, ICLR 2021) as SubpopBench's `CORAL` (Yang et al.,
    ICML 2023; `subpopbench/learning/algorithms.py`): on the pooled features, mean_d (mu_i - mu_j)^2 +
    mean (C_i - C_j)^2 with unbiased covariances, the task loss over the whole batch. Environments as mmd
    (the dataset's declared environments, else its training groups: then a training-group-label user); an
    environment with a single example in the batch has no covariance and is left out of that step's penalty.
    Composes with --aux. See docs/methods.md#coral.
    """

    penalty_key = "coral_penalty"
    min_domain_size = 2

    def discrepancy(self, x: Tensor, y: Tensor) -> Tensor:
        return coral_discrepancy(x, y)
