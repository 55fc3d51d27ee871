"""Balanced softmax: training logits shifted by the log training class prior; predictions use raw logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import ALGORITHMS
from ..types import Batch, Outputs
from ._class_counts import ClassCountAlgorithm


def log_prior(counts: Tensor) -> Tensor:
    """log(n_c / sum_c n_c): -inf for a class without training examples (it can never be a training target);
    all 0 (no shift) when the task has no labelled training example."""
    total = counts.sum()
    return torch.where(total > 0, (counts / total.clamp_min(1)).log(), torch.zeros_like(counts))


def balanced_softmax_ce(logits: Tensor, labels: Tensor, log_priors: Tensor) -> Tensor:
    """Per-example CE(logits + log prior, y); 0 where the label is missing (-1)."""
    return F.cross_entropy(logits.float() + log_priors, labels, ignore_index=-1, reduction="none")


@ALGORITHMS.register("bsoftmax")
class BalancedSoftmax(ClassCountAlgorithm):
    """Balanced softmax: the training loss is CE(z + log pi, y), pi_c the training class prior; predict() uses z.

    Reference: Ren, Yu, Sheng, Ma, Zhao, Yi, Li, "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
    NeurIPS 2020; the harness follows SubpopBench's `BSoftmax` (Yang et al., "Change is Hard", ICML 2023;
    `subpopbench/learning/algorithms.py`), which adds log n_c (the same loss: softmax ignores the constant
    -log N). Adding log pi during training makes z fit the class-balanced posterior, so the raw logits predict
    as if classes were balanced. n_c are counted on the training split's class labels only, no group labels,
    and checkpointed; with several tasks each task has its own prior and the losses are summed over tasks (a
    missing label, -1, gives 0). No hyperparameters. Details: docs/methods.md#bsoftmax.
    """

    def task_losses(self, out: Outputs, batch: Batch) -> Tensor:
        losses = [balanced_softmax_ce(logits, batch.y[task], log_prior(self.counts(task)))
                  for task, logits in out.logits.items()]
        return losses[0] if len(losses) == 1 else torch.stack(losses).sum(0)
