"""Square-root reweighting: each example's loss weighted by 1/sqrt(n_y) of its training class."""
from __future__ import annotations

import torch
from torch import Tensor

from ..registry import ALGORITHMS
from ..types import Batch, Outputs
from ._class_counts import ClassCountAlgorithm, class_weighted_ce, sum_to_classes


def sqrt_inverse_weights(counts: Tensor) -> Tensor:
    """w_c = 1 / sqrt(n_c), rescaled to sum to the number of classes; 0 for classes without training examples."""
    raw = torch.where(counts > 0, counts.clamp_min(1).rsqrt(), torch.zeros_like(counts))
    return sum_to_classes(raw)


@ALGORITHMS.register("sqrt_reweight")
class SqrtReweight(ClassCountAlgorithm):
    """Square-root reweighting: loss = mean_i w_{y_i} CE_i with w_c proportional to 1 / sqrt(n_c).

    Reference: SubpopBench's `SqrtReWeight` (Yang, Zhang, Katabi, Ghassemi, "Change is Hard: A Closer Look at
    Subpopulation Shift", ICML 2023; `subpopbench/learning/algorithms.py`): weights rescaled to sum to the
    number of classes C, classes without training examples weighted 0, the plain batch mean of the weighted
    losses. SubpopBench weights its (class, attribute) groups when training attributes are given and classes
    when not ("groups degenerate to classes"); this is the class form: it reads class labels only, no group
    labels (counted on the training split, as reweight_classes counts, and checkpointed). With several tasks
    each task has its own counts and weights and the weighted losses are summed over tasks (a missing label,
    -1, gives 0; reweight_classes instead weights whole examples by the first task's class). No
    hyperparameters. Details: docs/methods.md#sqrt_reweight.
    """

    def task_losses(self, out: Outputs, batch: Batch) -> Tensor:
        losses = [class_weighted_ce(logits, batch.y[task], sqrt_inverse_weights(self.counts(task)))
                  for task, logits in out.logits.items()]
        return losses[0] if len(losses) == 1 else torch.stack(losses).sum(0)
