"""IMTL-G: impartial gradient weights, whose combination projects equally onto every task's gradient direction."""
from __future__ import annotations

import torch
from torch import Tensor

from ..registry import ALGORITHMS
from ._surgery import GradientSurgery


def imtl_weights(gram: Tensor) -> Tensor:
    """IMTL-G's weights alpha [T] (summing to 1, possibly negative) from the Gram matrix M = G G' [T, T].

    With u_t = g_t / |g_t|, D the rows g_1 - g_t and U the rows u_1 - u_t (t = 2..T): alpha_{2..T} =
    g_1 U' (D U')^-1 and alpha_1 = 1 - sum_{t>1} alpha_t, so that g = sum_t alpha_t g_t has g . u_t equal for
    every t. Every product is read off M (g_i . u_j = M_ij / |g_j|), in float64; the pseudo-inverse stands in
    for the inverse where D U' is singular (e.g. two equal gradients, then alpha = (1, 0, ...)).
    """
    m = gram.detach().double().cpu()
    norms = m.diagonal().clamp_min(0).sqrt().clamp_min(1e-12)
    gu = m / norms  # gu[i, j] = g_i . u_j
    g1_u = gu[0, :1] - gu[0, 1:]  # g_1 . (u_1 - u_j), j = 2..T
    d_u = (gu[0, :1] - gu[0, 1:]).unsqueeze(0) - (gu[1:, :1] - gu[1:, 1:])  # (g_1 - g_i) . (u_1 - u_j)
    rest = g1_u @ torch.linalg.pinv(d_u)
    return torch.cat([1 - rest.sum(0, keepdim=True), rest]).float()


@ALGORITHMS.register("imtl")
class IMTL(GradientSurgery):
    """IMTL-G: the shared gradient sum_t alpha_t g_t whose projections onto every unit task gradient are equal.

    Reference: Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, "Towards Impartial Multi-task Learning", ICLR 2021
    (IMTL-G, the gradient part); LibMTL `LibMTL/weighting/IMTL.py`, which implements the hybrid IMTL (IMTL-G on
    losses scaled by learnable e^{s_t}, IMTL-L), of which this is the gradient half only
    (docs/methods.md#imtl). On the backbone's parameters: g_t = grad of task t's mean loss R_t (one backward
    each); alpha from the closed form alpha_{2..T} = g_1 U' (D U')^-1, alpha_1 = 1 - sum; the shared gradient is
    sum_t alpha_t g_t (weights sum to 1: the scale of a mean over tasks, not ERM's sum). Heads keep their ordinary
    gradients; --aux objectives add their ordinary gradient outside. No hyperparameters. Needs at least 2 tasks.
    """

    def combine(self, grads: Tensor) -> Tensor:
        alpha = imtl_weights(grads @ grads.T).to(grads.device)
        return alpha @ grads
