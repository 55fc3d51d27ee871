"""CAGrad: conflict-averse gradient, the best worst-task direction within a ball around the mean gradient."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from ..hparams import Choice, hp
from ..registry import ALGORITHMS
from ._surgery import GradientSurgery


@dataclass(frozen=True)
class CAGradHParams:
    c: float = hp(0.5, Choice((0.1, 0.2, 0.4, 0.5, 0.8)), ge=0,
                  help="radius c of the ball around the mean gradient, in units of its norm (LibMTL's calpha 0.5; "
                       "the official NYUv2 script 0.4; the space is the harness's)")
    rescale: int = hp(1, ge=0, le=2,
                      help="divide the direction by 1 (0), 1 + c^2 (1: LibMTL's and the official default) or 1 + c (2)")


def cagrad_weights(gram: Tensor, c: float) -> Tensor:
    """The dual solution w [T] on the simplex: argmin_w w' M b + c |g_0| sqrt(w' M w), with b = 1/T (so w' M b =
    g_w . g_0), |g_0| = sqrt(mean(M)), from the Gram matrix M = G G' [T, T]; scipy's SLSQP from the uniform w.

    M is divided by its mean diagonal first: the minimiser does not change, and the solver's tolerance (ftol
    1e-10, tighter than scipy's default) then does not depend on the gradients' scale.
    """
    m = gram.detach().double().cpu().numpy()
    m = m / max(float(np.mean(np.diag(m))), 1e-30)
    n = len(m)
    b = np.full(n, 1.0 / n)
    radius = c * float(np.sqrt(max(m.mean(), 0.0)))

    def objective(w: np.ndarray) -> float:
        return float(w @ m @ b + radius * np.sqrt(max(w @ m @ w, 0.0) + 1e-8))

    res = minimize(objective, b.copy(), method="SLSQP", bounds=[(0.0, 1.0)] * n,
                   constraints=({"type": "eq", "fun": lambda w: 1.0 - w.sum()},), options={"ftol": 1e-10})
    return torch.from_numpy(res.x).float()


def cagrad_direction(grads: Tensor, c: float, rescale: int = 1) -> Tensor:
    """CAGrad's shared gradient [P] from the task gradients [T, P]: d = g_0 + c |g_0| / |g_w| g_w, with g_0 the
    mean gradient and g_w = sum_t w_t g_t for w = cagrad_weights; divided by 1, 1 + c^2 or 1 + c (`rescale`
    0, 1, 2). With c = 0 it is g_0."""
    gram = grads @ grads.T
    g0 = grads.mean(0)
    g0_norm = gram.mean().clamp_min(0).sqrt()
    w = cagrad_weights(gram, c).to(grads.device, grads.dtype)
    gw = w @ grads
    d = g0 + (c * g0_norm / (gw.norm() + 1e-8)) * gw
    return d / (1.0, 1.0 + c ** 2, 1.0 + c)[rescale]


@ALGORITHMS.register("cagrad")
class CAGrad(GradientSurgery):
    """CAGrad: the shared gradient maximises the worst task's improvement within a ball around the mean gradient.

    Reference: Liu, Liu, Jin, Stone, Liu, "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS
    2021; LibMTL `LibMTL/weighting/CAGrad.py` (docs/methods.md#cagrad). On the backbone's parameters: g_t = grad
    of task t's mean loss R_t (one backward each), g_0 = mean_t g_t; d = argmax_d min_t g_t . d subject to
    |d - g_0| <= c |g_0|, through its dual over the simplex (scipy's SLSQP on the T x T Gram matrix):
    d = g_0 + c |g_0| g_w / |g_w|, then divided by 1 + c^2 (`rescale=1`). The scale is a mean over tasks (ERM
    sums them); c = 0 gives the mean gradient. Heads keep their ordinary gradients; --aux objectives add their
    ordinary gradient outside the solve. Needs at least 2 tasks.
    """

    HParams = CAGradHParams

    def combine(self, grads: Tensor) -> Tensor:
        return cagrad_direction(grads, self.hparams.c, self.hparams.rescale)
