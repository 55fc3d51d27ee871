"""MGDA: the minimum-norm convex combination of the tasks' shared gradients (multiple gradient descent)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..hparams import Choice, hp
from ..registry import ALGORITHMS
from ._surgery import GradientSurgery


@dataclass(frozen=True)
class MGDAHParams:
    normalization: Literal["none", "l2"] = hp(
        "none", Choice(("none", "l2")),
        help="divide each task gradient by nothing (LibMTL's default 'none') or by its L2 norm ('l2') before the "
             "min-norm solve; the shared gradient is sum_t alpha_t g_t / n_t")
    max_iter: int = hp(250, ge=1, help="Frank-Wolfe iterations at most, for 3 or more tasks (LibMTL's 250)")


def segment_min_norm(uu: Tensor, uv: Tensor, vv: Tensor) -> Tensor:
    """gamma in [0, 1] minimising |(1 - gamma) u + gamma v|^2 from u.u, u.v and v.v: (u.u - u.v) / |u - v|^2,
    clipped; 0 where u = v (every gamma is then optimal)."""
    denom = uu + vv - 2 * uv
    return torch.where(denom > 0, (uu - uv) / denom.clamp_min(1e-30), torch.zeros_like(denom)).clamp(0, 1)


def min_norm_weights(gram: Tensor, max_iter: int = 250, tol: float = 1e-8) -> Tensor:
    """The weights alpha [T] on the simplex minimising |sum_t alpha_t g_t|^2 = alpha' M alpha, from the Gram matrix
    M = G G' [T, T] (float64 on the CPU; returned as float32).

    Two tasks: the closed form alpha_1 = ((g_2 - g_1) . g_2) / |g_1 - g_2|^2 clipped to [0, 1] (1/2 if g_1 = g_2).
    More: Frank-Wolfe from the uniform weights (Sener & Koltun, Algorithm 2) with away steps: toward the vertex
    e_s, s = argmin (M alpha)_s, or away from the used vertex e_v, v = argmax over alpha_v > 0 of (M alpha)_v,
    whichever descends faster, by exact line search; until the Frank-Wolfe gap alpha' M alpha - (M alpha)_s is
    below tol * alpha' M alpha. The away steps let a weight return to exactly 0, where plain Frank-Wolfe only
    approaches it at rate 1/k.
    """
    m = gram.detach().double().cpu()
    n = len(m)
    if n == 2:
        equal = float(m[0, 0] + m[1, 1] - 2 * m[0, 1]) <= 0
        a1 = torch.tensor(0.5, dtype=torch.float64) if equal else segment_min_norm(m[1, 1], m[0, 1], m[0, 0])
        return torch.stack([a1, 1 - a1]).float()
    alpha = torch.full((n,), 1.0 / n, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64)
    for _ in range(max_iter):
        m_alpha = m @ alpha
        value = float(alpha @ m_alpha)
        s = int(m_alpha.argmin())
        v = int(torch.where(alpha > 0, m_alpha, torch.full_like(m_alpha, -torch.inf)).argmax())
        toward, away = value - float(m_alpha[s]), float(m_alpha[v]) - value  # descent rates of the two moves
        if toward <= tol * max(value, 1e-30):
            break
        is_away = away > toward
        direction = alpha - eye[v] if is_away else eye[s] - alpha
        most = float(alpha[v] / (1 - alpha[v])) if is_away else 1.0  # the step that keeps alpha on the simplex
        curvature = float(direction @ m @ direction)
        step = most if curvature <= 0 else min(most, -float(direction @ m_alpha) / curvature)
        alpha = (alpha + step * direction).clamp_min(0)
        if is_away and step == most:
            alpha[v] = 0.0  # a full away step drops the vertex exactly
        alpha = alpha / alpha.sum()
    return alpha.float()


@ALGORITHMS.register("mgda")
class MGDA(GradientSurgery):
    """MGDA: the shared gradient is the minimum-norm point of the convex hull of the tasks' shared gradients.

    Reference: Sener, Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018; LibMTL
    `LibMTL/weighting/MGDA.py` (docs/methods.md#mgda). On the backbone's parameters (MGDA proper, not the
    representation-gradient upper bound MGDA-UB): g_t = grad of task t's mean loss R_t (one backward each),
    optionally divided by |g_t| (`normalization=l2`); alpha = argmin over the simplex of |sum_t alpha_t g_t|^2
    (closed form for 2 tasks, Frank-Wolfe for more); the shared gradient is sum_t alpha_t g_t, a convex
    combination (the scale of a mean over tasks, not ERM's sum). Heads keep their ordinary gradients; --aux
    objectives add their ordinary gradient outside the solve. Needs at least 2 tasks.
    """

    HParams = MGDAHParams

    def combine(self, grads: Tensor) -> Tensor:
        if self.hparams.normalization == "l2":
            grads = grads / grads.norm(dim=1, keepdim=True).clamp_min(1e-12)
        alpha = min_norm_weights(grads @ grads.T, self.hparams.max_iter).to(grads.device)
        return alpha @ grads
