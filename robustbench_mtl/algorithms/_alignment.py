"""Shared loop of the feature-alignment penalties (MMD, CORAL): a discrepancy averaged over pairs of domains."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor

from ..hparams import LogUniform, hp
from ..types import Batch
from ._envs import env_masks
from .base import Algorithm


@dataclass(frozen=True)
class AlignmentHParams:
    penalty_weight: float = hp(1.0, LogUniform(0.1, 10.0), ge=0,
                               help="gamma, the weight of the alignment penalty (SubpopBench/DomainBed mmd_gamma: "
                                    "default 1, space 10^U(-1,1))")


def domain_features(feats: Tensor, e: Tensor, min_size: int = 1) -> list[Tensor]:
    """The rows of `feats` of each environment present in the batch (ascending id, `env_masks`), keeping
    environments with at least `min_size` examples."""
    return [feats[mask] for mask in env_masks(e) if int(mask.sum()) >= min_size]


def pairwise_mean(parts: list[Tensor], discrepancy: Callable[[Tensor, Tensor], Tensor], zero: Tensor) -> Tensor:
    """mean over pairs i < j of discrepancy(parts[i], parts[j]); `zero` (a 0-dim tensor on the features' device)
    with fewer than two parts, as the reference code adds nothing then."""
    pairs = [discrepancy(parts[i], parts[j]) for i in range(len(parts)) for j in range(i + 1, len(parts))]
    return torch.stack(pairs).mean() if pairs else zero


class AlignmentPenalty(Algorithm, abc.ABC):
    """loss = mean end-task loss + penalty_weight * mean over pairs of the batch's environments of a discrepancy
    between their pooled representations (+ weighted --aux terms). Environments are the batch's `e` ids: the
    dataset's declared environments, else its training groups (labels.label_use), as vrex and irm."""

    HParams = AlignmentHParams
    uses_environments = True

    penalty_key: ClassVar[str]
    min_domain_size: ClassVar[int] = 1  # smaller environments of a batch are left out of the penalty

    @abc.abstractmethod
    def discrepancy(self, x: Tensor, y: Tensor) -> Tensor:
        """The distance between two sets of features [n, D] and [m, D]."""

    def compute_loss(self, batch: Batch, aux_batch: Batch | None) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.model(batch.x)
        task = self.aggregate(self.task_losses(out, batch), batch)
        feats = out.pooled.float()
        # in float32 even under the runner's bf16 autocast: bf16 matmuls would lose the small kernel differences
        with torch.autocast(feats.device.type, enabled=False):
            penalty = pairwise_mean(domain_features(feats, batch.e, self.min_domain_size), self.discrepancy,
                                    feats.new_zeros(()))
        total, extra = self.with_objectives(task + self.hparams.penalty_weight * penalty, batch, aux_batch, out)
        return total, {"loss_task": task, self.penalty_key: penalty, **extra}
