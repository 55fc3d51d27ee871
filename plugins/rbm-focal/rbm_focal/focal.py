"""Focal loss: ERM with per-example cross-entropy down-weighted on well-classified examples."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_mtl.algorithms.base import Algorithm
from robustbench_mtl.hparams import Choice, hp
from robustbench_mtl.types import Batch, Outputs


@dataclass(frozen=True)
class FocalHParams:
    gamma: float = hp(2.0, Choice((0.5, 1.0, 2.0, 5.0)), ge=0, help="focusing parameter; 0 is plain cross-entropy")


class Focal(Algorithm):
    """Focal loss: mean of (1 - p_t)^gamma * CE per example; no group labels needed; composes with --aux.

    Reference: Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), eq. 4 without the alpha
    weighting. Easy examples (p_t near 1) contribute little, so minority-group examples the model still
    gets wrong carry more of the gradient, without using group labels.
    """

    HParams = FocalHParams
    uses_train_groups = False

    def task_losses(self, out: Outputs, batch: Batch) -> Tensor:
        losses = []
        for task, logits in out.logits.items():
            y = batch.y[task]
            logp = F.log_softmax(logits.float(), dim=1).gather(1, y.clamp_min(0).unsqueeze(1)).squeeze(1)
            # The factor is part of the graph, as in the paper (not a detached weight).
            focal = (1 - logp.exp()).clamp_min(0).pow(self.hparams.gamma) * -logp
            losses.append(torch.where(y >= 0, focal, torch.zeros_like(focal)))  # label -1 = missing
        return losses[0] if len(losses) == 1 else torch.stack(losses).sum(0)
