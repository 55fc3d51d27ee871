"""Select by class-balanced validation accuracy (the mean of per-class recalls; class labels only)."""
from __future__ import annotations

from ..registry import SELECTIONS
from .base import Selection


@SELECTIONS.register("val_balanced")
class ValBalanced(Selection):
    """The epoch with the best class-balanced validation accuracy: the mean over the classes present of each
    class's recall (`val/macro_recall`, sklearn's balanced accuracy). It balances over classes, not groups,
    so it needs no group labels.

    Reference: Yang et al., "Change is Hard: A Closer Look at Subpopulation Shift", ICML 2023 (SubpopBench),
    `ValBalancedAcc` in `subpopbench/learning/model_selection.py`.
    Details: docs/methods.md#val_balanced.
    """

    metric = "val/macro_recall"
    label = "Val-Bal"
