"""CRT: ERM, then the task heads re-initialised and retrained on frozen features with class-balanced sampling."""
from __future__ import annotations

from ..registry import ALGORITHMS
from ._crt import ClassifierRetraining


@ALGORITHMS.register("crt")
class CRT(ClassifierRetraining):
    """CRT (classifier re-training): ERM, then each head re-initialised and retrained with class-balanced sampling.

    Reference: Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition", ICLR 2020
    (cRT); SubpopBench `subpopbench/learning/algorithms.py` CRT (docs/methods.md#crt). Stage 1 is the default
    update (ERM with any --aux terms) for train.epochs. Stage 2, in `after_training`: the pooled features of
    the training split are computed once with the last-epoch backbone frozen (eval mode, no augmentation);
    every task head is re-initialised and trained for `retrain_epochs` epochs, each epoch N_t draws with
    replacement with probability proportional to 1/n_y (so each class is drawn equally often in expectation),
    plain cross-entropy, the run's optimizer, lr and schedule shape over stage 2's steps. Uses class labels
    only, no group labels (SubpopBench balances groups when training attributes are given).
    """

    balance = "sampling"
