"""Shared helpers for group- and class-balancing algorithms (not an algorithm: `_` modules are not registered)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..hparams import Choice, hp


def inverse_frequency(ids: Tensor, counts: Sequence[int] | Tensor) -> Tensor:
    """Per-example 1 / n_{ids[i]} as float32 on `ids`' device; ids must index `counts` (no -1)."""
    n = torch.as_tensor(counts, dtype=torch.float32, device=ids.device)
    if bool((ids < 0).any()):
        raise ValueError("inverse_frequency needs real ids; got -1 (hidden or missing)")
    return 1.0 / n[ids]


def bincount(ids: Tensor, size: int) -> list[int]:
    """Counts of each id in [0, size) (ids < 0 are ignored)."""
    return torch.bincount(ids[ids >= 0].cpu(), minlength=size).tolist()


def balanced_subset(ids: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """A 0/1 float mask [N] keeping, for each present id, a uniform random min_g n_g of its examples."""
    counts = [c for c in bincount(ids, size) if c > 0]
    keep_n, ids_cpu = min(counts), ids.cpu()
    mask = torch.zeros(len(ids))
    for g in range(size):
        members = (ids_cpu == g).nonzero().flatten()
        if len(members):
            mask[members[torch.randperm(len(members), generator=generator)[:keep_n]]] = 1.0
    return mask.to(ids.device)


def weighted_mean(losses: Tensor, weights: Tensor) -> Tensor:
    """sum_i w_i l_i / sum_i w_i: the weights rescaled to mean 1 over the batch, then the mean."""
    return (weights * losses).sum() / weights.sum().clamp_min(1e-12)  # an all-zero draw must not give NaN


@dataclass(frozen=True)
class ReweightHParams:
    mode: Literal["loss", "sampling"] = hp(
        "loss", Choice(("loss", "sampling")),
        help="loss: weight each example's loss by 1/n (normalised to mean 1 over the batch); "
             "sampling: draw training examples with probability proportional to 1/n (plain mean loss)")
