"""Select by macro-averaged validation F1 (class labels only)."""
from __future__ import annotations

from ..registry import SELECTIONS
from .base import Selection


@SELECTIONS.register("val_avg_f1")
class ValAvgF1(Selection):
    """The epoch with the best mean over classes of validation F1 (`val/macro_f1`). Needs no group labels.

    Reference: Yang et al., "Change is Hard: A Closer Look at Subpopulation Shift", ICML 2023 (SubpopBench),
    `ValMeanF1` in `subpopbench/learning/model_selection.py`.
    Details: docs/methods.md#val_avg_f1.
    """

    metric = "val/macro_f1"
    label = "Val-F1"
