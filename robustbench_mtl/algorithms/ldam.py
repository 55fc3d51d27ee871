"""LDAM-DRW: label-distribution-aware margins on the true-class logit, then deferred class re-weighting."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..hparams import Choice, LogUniform, hp
from ..registry import ALGORITHMS
from ..types import Batch, Outputs
from ._class_counts import ClassCountAlgorithm, class_balanced_weights
from ._counting import CountsUpdates

DRW_BETA = 0.9999  # the reference code's beta of the deferred class-balanced weights


@dataclass(frozen=True)
class LDAMHParams:
    max_m: float = hp(0.5, LogUniform(0.1, 10 ** -0.1), gt=0,
                      help="the largest margin, that of the rarest class; SubpopBench's default 0.5 (also Cao et "
                           "al.'s) and space 10^U(-1, -0.1)")
    s: float = hp(30.0, Choice((10.0, 30.0)), gt=0,
                  help="logit scale s (SubpopBench's `scale`, default 30 as Cao et al.'s code, space {10, 30})")
    drw_start: float = hp(0.8, gt=0, le=1,
                          help="deferred re-weighting starts after this fraction of the schedule's total steps "
                               "(Cao et al.: epoch 160 of 200 = 0.8); 1 = never (SubpopBench's LDAM has no DRW)")


def ldam_margins(counts: Tensor, max_m: float) -> Tensor:
    """Delta_c = K / n_c^(1/4), K such that the largest margin (the rarest class's) is max_m; 0 for classes
    without training examples (SubpopBench gives them an infinite count)."""
    raw = torch.where(counts > 0, counts.clamp_min(1).pow(-0.25), torch.zeros_like(counts))
    return raw * (max_m / raw.max().clamp_min(1e-30))


def ldam_logits(logits: Tensor, labels: Tensor, margins: Tensor, s: float) -> Tensor:
    """s * (z - Delta_y e_y): the true-class logit lowered by its class's margin, then all scaled by s.
    Rows with a missing label (-1) are only scaled."""
    known = labels >= 0
    target = labels.clamp_min(0)
    shift = F.one_hot(target, logits.shape[1]).to(logits.dtype) * (margins[target] * known).unsqueeze(1)
    return s * (logits - shift)


def drw_active(updates: int, total_steps: int, start: float) -> bool:
    """Whether update number `updates` (0-based) is in the re-weighted phase: updates >= start * total_steps."""
    return updates >= start * total_steps


def batch_normalised(weights: Tensor, known: Tensor) -> Tensor:
    """Per-example weights divided by their mean over the labelled examples (0 where unlabelled): the batch
    mean of weight * loss is then sum_i w_i l_i / sum_i w_i over the labelled examples, times their share of
    the batch, as PyTorch's cross_entropy(weight=...) reduces (the reference) where every label is present."""
    w = weights * known
    return w * (known.sum() / w.sum().clamp_min(1e-30))


@ALGORITHMS.register("ldam")
class LDAM(CountsUpdates, ClassCountAlgorithm):
    """LDAM-DRW: CE(s * (z - Delta_y e_y), y) with Delta_c proportional to n_c^(-1/4); late in training, class-weighted.

    Reference: Cao, Wei, Gaidon, Arechiga, Ma, "Learning Imbalanced Datasets with Label-Distribution-Aware
    Margin Loss", NeurIPS 2019 (github.com/kaidic/LDAM-DRW `losses.py`, `cifar_train.py`); the margins and
    hyperparameters as SubpopBench's `LDAM` (Yang et al., "Change is Hard", ICML 2023;
    `subpopbench/learning/algorithms.py`), which has no DRW. Margins Delta_c = K n_c^(-1/4), the largest
    max_m. DRW: from update ceil(drw_start * total_steps) on (a fraction of the schedule's total steps, not
    epochs), each example's loss is weighted by the class-balanced weight of its class (Cui et al., beta =
    0.9999, rescaled to sum to C), reduced as sum_i w_i l_i / sum_i w_i; before that the plain mean. n_c are
    counted on the training split's class labels only, no group labels. With several tasks each task has its
    own margins and weights and the per-example losses are summed over tasks (a missing label, -1, gives 0).
    Predictions use the raw logits z. The counts and the update count are checkpointed.
    Details: docs/methods.md#ldam.
    """

    HParams = LDAMHParams

    def _task_loss(self, task: str, logits: Tensor, labels: Tensor, reweight: bool) -> Tensor:
        counts, hp_ = self.counts(task), self.hparams
        z = ldam_logits(logits.float(), labels, ldam_margins(counts, hp_.max_m), hp_.s)
        loss = F.cross_entropy(z, labels, ignore_index=-1, reduction="none")
        if not reweight:
            return loss
        weights = class_balanced_weights(counts, DRW_BETA)[labels.clamp_min(0)]
        return batch_normalised(weights, labels >= 0) * loss

    def task_losses(self, out: Outputs, batch: Batch) -> Tensor:
        reweight = drw_active(self.updates, self.total_steps, self.hparams.drw_start)
        losses = [self._task_loss(task, logits, batch.y[task], reweight) for task, logits in out.logits.items()]
        return losses[0] if len(losses) == 1 else torch.stack(losses).sum(0)
