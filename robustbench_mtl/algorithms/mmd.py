"""MMD: ERM plus the squared maximum mean discrepancy between the environments' pooled representations."""
from __future__ import annotations

import torch
from torch import Tensor

from ..registry import ALGORITHMS
from ._alignment import AlignmentPenalty

# DomainBed's and SubpopBench's bandwidths: k(x, y) = sum_g exp(-g ||x - y||^2)
GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """[n, m] ||x_i - y_j||^2 via the norms expansion, clamped at 1e-30 (as the reference code)."""
    xx, yy = x.pow(2).sum(1, keepdim=True), y.pow(2).sum(1, keepdim=True)
    return (xx + yy.t() - 2 * x @ y.t()).clamp_min(1e-30)


def gaussian_kernel(x: Tensor, y: Tensor, gammas: tuple[float, ...] = GAMMAS) -> Tensor:
    """[n, m] sum over g in `gammas` of exp(-g ||x_i - y_j||^2): a mixture of Gaussian kernels."""
    d = squared_distances(x, y)
    return torch.stack([(-g * d).exp() for g in gammas]).sum(0)


def mmd2(x: Tensor, y: Tensor, gammas: tuple[float, ...] = GAMMAS) -> Tensor:
    """The biased (V-statistic) MMD^2: mean k(x, x') + mean k(y, y') - 2 mean k(x, y), diagonals included."""
    return (gaussian_kernel(x, x, gammas).mean() + gaussian_kernel(y, y, gammas).mean()
            - 2 * gaussian_kernel(x, y, gammas).mean())


@ALGORITHMS.register("mmd")
class MMD(AlignmentPenalty):
    """MMD: mean end-task loss + gamma * mean over environment pairs of MMD^2 of their pooled features.

    Reference: Li et al., "Domain Generalization with Adversarial Feature Learning", CVPR 2018 (MMD-AAE's
    MMD term); DomainBed's `MMD` (Gulrajani & Lopez-Paz, ICLR 2021) as SubpopBench's `MMD` (Yang et al.,
    ICML 2023; `subpopbench/learning/algorithms.py`): k = sum of Gaussian kernels exp(-g d^2) for g in
    {1e-3, ..., 1e3}, the biased MMD^2 estimate, the task loss over the whole batch. Environments are the
    batch's `e` ids: the dataset's declared environments, else its training groups (then a training-group-label
    user; SubpopBench uses the spurious attribute). Composes with --aux. See docs/methods.md#mmd.
    """

    penalty_key = "mmd_penalty"

    def discrepancy(self, x: Tensor, y: Tensor) -> Tensor:
        return mmd2(x, y)
