"""Class-balanced loss: cross-entropy weighted by the inverse effective number of each class's examples."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from ..hparams import LogUniform, Space, hp
from ..registry import ALGORITHMS
from ..types import Batch, Outputs
from ._class_counts import ClassCountAlgorithm, class_balanced_weights, class_weighted_ce


@dataclass(frozen=True)
class OneMinusLogUniform(Space):
    """1 - x with x log-uniform on [low, high]: SubpopBench's beta = 1 - 10^U(-5, -2)."""

    low: float
    high: float

    def sample(self, rng: random.Random) -> float:
        return 1.0 - LogUniform(self.low, self.high).sample(rng)

    def describe(self) -> str:
        return f"1 - logU({self.low}, {self.high})"


@dataclass(frozen=True)
class CBLossHParams:
    beta: float = hp(0.9999, OneMinusLogUniform(1e-5, 1e-2), ge=0, lt=1,
                     help="beta of the effective number (1 - beta^n) / (1 - beta); SubpopBench's default 0.9999 and "
                          "space 1 - 10^U(-5, -2) (Cui et al. grid {0.9, 0.99, 0.999, 0.9999}); 0 = plain CE")


@ALGORITHMS.register("cb_loss")
class CBLoss(ClassCountAlgorithm):
    """Class-balanced loss: loss = mean_i w_{y_i} CE_i with w_c proportional to (1 - beta) / (1 - beta^{n_c}).

    Reference: Cui, Jia, Lin, Song, Belongie, "Class-Balanced Loss Based on Effective Number of Samples", CVPR
    2019 (softmax form); the harness follows SubpopBench's `CBLoss` (Yang et al., "Change is Hard", ICML 2023;
    `subpopbench/learning/algorithms.py`): weights rescaled to sum to the number of classes C, classes without
    training examples weighted 0, the plain batch mean of the weighted losses (not divided by the weights' sum).
    n_c are counted on the training split's class labels only, no group labels (SubpopBench weights its (class,
    attribute) groups when attributes are given, classes when not). With several tasks each task has its own
    counts and weights and the weighted losses are summed over tasks (a missing label, -1, gives 0). The counts
    are checkpointed. Details: docs/methods.md#cb_loss.
    """

    HParams = CBLossHParams

    def task_losses(self, out: Outputs, batch: Batch) -> Tensor:
        losses = [class_weighted_ce(logits, batch.y[task], class_balanced_weights(self.counts(task), self.hparams.beta))
                  for task, logits in out.logits.items()]
        return losses[0] if len(losses) == 1 else torch.stack(losses).sum(0)
