"""GradVac: steer each pair of task gradients toward an EMA target of their cosine similarity."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..hparams import Choice, hp
from ..registry import ALGORITHMS
from ._surgery import GradientSurgery


@dataclass(frozen=True)
class GradVacHParams:
    beta: float = hp(0.5, Choice((0.5, 0.01)), ge=0, le=1,
                     help="EMA rate of the similarity targets (LibMTL's default 0.5; the GradVac paper 0.01)")
    group_type: Literal["whole", "layer", "matrix"] = hp(
        "whole", help="one target per task pair for the whole backbone (LibMTL 0, its default), per layer "
                      "(1: each module's own parameters) or per parameter tensor (2)")


def _segment_sums(x: Tensor, sizes: list[int]) -> Tensor:
    return torch.stack([chunk.sum() for chunk in x.split(sizes)])


def vaccinate(grads: Tensor, rho: Tensor, sizes: list[int], beta: float,
              orders: list[list[int]] | None = None) -> tuple[Tensor, Tensor]:
    """(adjusted per-task gradients [T, P], updated EMA targets [T, T, K]) from task gradients [T, P], targets
    rho [T, T, K] and the sizes of the K parameter groups (consecutive slices of P).

    For each task i, for each j != i in `orders[i]` (default: a random order from torch's global generator),
    for each group k: phi = cos(g'_i, g_j) with the *original* g_j; if phi < rho_ijk,
    g'_i += g_j |g'_i| (rho sqrt(1 - phi^2) - phi sqrt(1 - rho^2)) / (|g_j| sqrt(1 - rho^2) + 1e-8), which
    makes cos(g'_i, g_j) = rho; then, whether or not it adjusted, rho_ijk <- (1 - beta) rho_ijk + beta phi.
    """
    n = len(grads)
    adjusted, rho = grads.clone(), rho.clone()
    counts = torch.tensor(sizes, device=grads.device)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for j in (orders[i] if orders is not None else [others[k] for k in torch.randperm(n - 1).tolist()]):
            gi, gj = adjusted[i], grads[j]
            norm_i, norm_j = _segment_sums(gi * gi, sizes).sqrt(), _segment_sums(gj * gj, sizes).sqrt()
            phi = _segment_sums(gi * gj, sizes) / (norm_i * norm_j + 1e-8)
            target = rho[i, j]
            sin_phi, sin_target = (1 - phi ** 2).clamp_min(0).sqrt(), (1 - target ** 2).clamp_min(0).sqrt()
            w = norm_i * (target * sin_phi - phi * sin_target) / (norm_j * sin_target + 1e-8)
            # torch.where, not `if`: no device sync per group; a group at or above its target adds exactly 0.
            w = torch.where(phi < target, w, torch.zeros_like(w))
            adjusted[i] = gi + torch.repeat_interleave(w, counts) * gj
            rho[i, j] = (1 - beta) * target + beta * phi
    return adjusted, rho


@ALGORITHMS.register("gradvac")
class GradVac(GradientSurgery):
    """GradVac (Gradient Vaccine): adjust each task's shared gradient toward an EMA target similarity, then sum.

    Reference: Wang, Tsvetkov, Firat, Cao, "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021; LibMTL `LibMTL/weighting/GradVac.py` after its
    fix d2d84fa (docs/methods.md#gradvac). On the backbone's parameters only, per ordered task pair (i, j) and
    parameter group k, with an EMA target rho_ijk (initially 0): phi = cos(g'_i, g_j); if phi < rho_ijk, add
    the multiple of g_j that raises the cosine to rho_ijk; then rho_ijk <- (1 - beta) rho_ijk + beta phi. The
    shared gradient is sum_i g'_i; heads keep their ordinary gradients; --aux objectives add their ordinary
    gradient outside the surgery. The targets are checkpointed. Needs at least 2 tasks.
    """

    HParams = GradVacHParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        kind = self.hparams.group_type
        if kind == "whole":
            self.sizes = [sum(p.numel() for p in self.shared)]
        elif kind == "layer":
            self.sizes = [sum(p.numel() for p in group) for group in self.groups]
        else:
            self.sizes = [p.numel() for p in self.shared]
        n = len(self.info.tasks)
        device = next(self.model.parameters()).device
        self.rho = torch.zeros(n, n, len(self.sizes), device=device)  # EMA targets; checkpointed

    def combine(self, grads: Tensor) -> Tensor:
        adjusted, self.rho = vaccinate(grads, self.rho, self.sizes, self.hparams.beta)
        return adjusted.sum(0)

    def extra_state(self) -> dict[str, Any]:
        return {"rho": self.rho.detach().cpu().clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "rho" in state:
            self.rho = state["rho"].to(self.rho.device, self.rho.dtype)
