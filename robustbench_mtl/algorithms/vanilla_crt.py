"""VanillaCRT: ERM, then the task heads re-initialised and retrained on frozen features, no class balancing."""
from __future__ import annotations

from ..registry import ALGORITHMS
from ._crt import ClassifierRetraining


@ALGORITHMS.register("vanilla_crt")
class VanillaCRT(ClassifierRetraining):
    """VanillaCRT: ERM, then each head re-initialised and retrained on the plain training distribution.

    Reference: SubpopBench `subpopbench/learning/algorithms.py` VanillaCRT (Yang et al., "Change is Hard: A
    Closer Look at Subpopulation Shift", ICML 2023), the instance-balanced control of Kang et al.'s cRT
    (ICLR 2020) (docs/methods.md#vanilla_crt). Stage 1 is the default update for train.epochs. Stage 2, in
    `after_training`, as crt but on uniformly shuffled passes over the training features with the plain mean
    cross-entropy: what re-initialising and retraining the head alone changes. Uses no group labels.
    """

    balance = "none"
