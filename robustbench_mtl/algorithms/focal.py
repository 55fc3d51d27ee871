"""Focal loss: each example's cross-entropy scaled by (1 - p_t)^gamma, so confident examples count less."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..hparams import LogUniform, hp
from ..registry import ALGORITHMS
from ..types import Batch, Outputs
from .base import Algorithm


@dataclass(frozen=True)
class FocalHParams:
    gamma: float = hp(1.0, LogUniform(0.5, 5.0), ge=0,
                      help="focusing parameter gamma (0 = ERM); SubpopBench's default 1 and space 0.5 * 10^U(0, 1) "
                           "(Lin et al. use 2)")


def focal_loss(ce: Tensor, gamma: float) -> Tensor:
    """(1 - p_t)^gamma * CE per example, with p_t = exp(-CE) the probability of the true class.

    1 - p_t is computed as -expm1(-CE) (exact for small CE) and floored at the smallest normal float, so that
    an example with CE = 0 (a missing label, or a saturated prediction) gives 0 and a finite gradient for
    every gamma >= 0 (x^gamma has an infinite slope at 0 when gamma < 1).
    """
    one_minus_p = (-torch.expm1(-ce)).clamp_min(torch.finfo(ce.dtype).tiny)
    return one_minus_p.pow(gamma) * ce


@ALGORITHMS.register("focal")
class Focal(Algorithm):
    """Focal loss: per example and task, FL = -(1 - p_t)^gamma log p_t instead of the cross-entropy.

    Reference: Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection", ICCV 2017; the
    harness follows SubpopBench's `Focal` (Yang et al., "Change is Hard", ICML 2023;
    `subpopbench/learning/algorithms.py`): softmax cross-entropy CE, p_t = exp(-CE), the gradient flowing
    through p_t too, no alpha class weights, the batch mean. With several tasks each task's loss is made
    focal on its own and the per-example losses are summed over tasks (a missing label, -1, gives 0). No
    group labels, no counts. Details: docs/methods.md#focal.
    """

    HParams = FocalHParams

    def task_losses(self, out: Outputs, batch: Batch) -> Tensor:
        losses = [focal_loss(F.cross_entropy(logits.float(), batch.y[task], ignore_index=-1, reduction="none"),
                             self.hparams.gamma)
                  for task, logits in out.logits.items()]
        return losses[0] if len(losses) == 1 else torch.stack(losses).sum(0)
