"""ReWeightCRT: ERM, then the task heads re-initialised and retrained on frozen features with 1/n_y loss weights."""
from __future__ import annotations

from ..registry import ALGORITHMS
from ._crt import ClassifierRetraining


@ALGORITHMS.register("reweight_crt")
class ReWeightCRT(ClassifierRetraining):
    """ReWeightCRT: ERM, then each head re-initialised and retrained with class-reweighted cross-entropy.

    Reference: SubpopBench `subpopbench/learning/algorithms.py` ReWeightCRT (Yang et al., "Change is Hard: A
    Closer Look at Subpopulation Shift", ICML 2023), the loss-weighting variant of Kang et al.'s cRT (ICLR 2020)
    (docs/methods.md#reweight_crt). Stage 1 is the default update for train.epochs. Stage 2, in
    `after_training`, as crt but on uniformly shuffled passes over the training features, each batch's loss
    sum_i w_i l_i / sum_i w_i with w_i = 1/n_{y_i} (training class counts of that task). Uses class labels
    only, no group labels (SubpopBench weights groups when training attributes are given).
    """

    balance = "loss"
