"""PCGrad: project each task's shared gradient off the other tasks' gradients it conflicts with."""
from __future__ import annotations

import torch
from torch import Tensor

from ..registry import ALGORITHMS
from ._surgery import GradientSurgery


def project_conflicting(grads: Tensor, orders: list[list[int]] | None = None) -> Tensor:
    """PCGrad's projected per-task gradients [T, P] from the task gradients `grads` [T, P].

    For each task i, g'_i = g_i, then for each j in `orders[i]` (default: a fresh torch.randperm(T) per i,
    from torch's global generator, which the runner seeds and checkpoints): if g'_i . g_j < 0,
    g'_i -= (g'_i . g_j) / (|g_j|^2 + 1e-8) g_j, always against the *original* g_j. j = i is included, as in
    LibMTL (a no-op for two tasks).
    """
    n = len(grads)
    projected = grads.clone()
    for i in range(n):
        for j in (orders[i] if orders is not None else torch.randperm(n).tolist()):
            dot = projected[i] @ grads[j]
            # torch.where, not `if`: no device sync per pair; a non-conflicting pair subtracts exactly 0.
            coef = torch.where(dot < 0, dot / (grads[j].pow(2).sum() + 1e-8), torch.zeros_like(dot))
            projected[i] = projected[i] - coef * grads[j]
    return projected


@ALGORITHMS.register("pcgrad")
class PCGrad(GradientSurgery):
    """PCGrad (gradient surgery): per-task shared gradients projected off conflicting ones, then summed.

    Reference: Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020; LibMTL
    `LibMTL/weighting/PCGrad.py` (docs/methods.md#pcgrad). On the backbone's parameters only: g_t = grad of
    task t's mean loss R_t (one backward each); for each i, in a random order of the tasks j, if g'_i . g_j < 0
    then g'_i -= (g'_i . g_j) / |g_j|^2 g_j (projection onto the normal plane of the original g_j); the shared
    gradient is sum_i g'_i. Heads keep their ordinary gradients; --aux objectives add their ordinary gradient
    outside the surgery. Equal task weights, no hyperparameters. Needs at least 2 tasks.
    """

    def combine(self, grads: Tensor) -> Tensor:
        return project_conflicting(grads).sum(0)
