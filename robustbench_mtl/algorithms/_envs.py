"""Per-environment risks for the invariance penalties (IRM, V-REx), with their annealed weight."""
from __future__ import annotations

import torch
from torch import Tensor


def env_risks(losses: Tensor, e: Tensor) -> Tensor:
    """Mean per-example loss of each environment present in the batch, [n_envs] in ascending env id.

    Datasets without environments give every example e = 0, so there is one environment.
    """
    envs, inverse = torch.unique(e, return_inverse=True)
    sums = torch.zeros(len(envs), dtype=losses.dtype, device=losses.device).index_add(0, inverse, losses)
    counts = torch.bincount(inverse, minlength=len(envs)).to(losses.dtype)
    return sums / counts


def env_masks(e: Tensor) -> list[Tensor]:
    """Boolean masks of the examples of each environment present, in ascending env id."""
    return [e == v for v in torch.unique(e)]


def annealed_weight(step: int, anneal_steps: int, weight: float) -> float:
    """1 before `anneal_steps` updates, then `weight` (the reference IRM schedule)."""
    return weight if step >= anneal_steps else 1.0
