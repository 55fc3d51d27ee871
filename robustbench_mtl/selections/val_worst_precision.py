"""Select by worst-class validation precision (class labels only)."""
from __future__ import annotations

from ..registry import SELECTIONS
from .base import Selection


@SELECTIONS.register("val_worst_precision")
class ValWorstPrecision(Selection):
    """The epoch with the best lowest per-class validation precision (`val/worst_class_precision`, over the
    classes present in val); a class never predicted has precision 0. Needs no group labels.

    Reference: Yang et al., "Change is Hard: A Closer Look at Subpopulation Shift", ICML 2023 (SubpopBench),
    `ValWorstPrecision` in `subpopbench/learning/model_selection.py`.
    Details: docs/methods.md#val_worst_precision.
    """

    metric = "val/worst_class_precision"
    label = "Val-WC-Prec"
