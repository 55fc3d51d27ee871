"""Select by macro-averaged validation precision (class labels only)."""
from __future__ import annotations

from ..registry import SELECTIONS
from .base import Selection


@SELECTIONS.register("val_avg_precision")
class ValAvgPrecision(Selection):
    """The epoch with the best mean over classes of validation precision (`val/macro_precision`); a class
    never predicted counts 0. Needs no group labels.

    Reference: Yang et al., "Change is Hard: A Closer Look at Subpopulation Shift", ICML 2023 (SubpopBench),
    `ValMeanPrecision` in `subpopbench/learning/model_selection.py`.
    Details: docs/methods.md#val_avg_precision.
    """

    metric = "val/macro_precision"
    label = "Val-Prec"
