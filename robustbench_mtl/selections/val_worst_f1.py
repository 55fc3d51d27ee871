"""Select by worst-class validation F1 (class labels only)."""
from __future__ import annotations

from ..registry import SELECTIONS
from .base import Selection


@SELECTIONS.register("val_worst_f1")
class ValWorstF1(Selection):
    """The epoch with the best lowest per-class validation F1 (`val/worst_class_f1`, over the classes present
    in val). Needs no group labels.

    Reference: Yang et al., "Change is Hard: A Closer Look at Subpopulation Shift", ICML 2023 (SubpopBench),
    `ValWorstF1` in `subpopbench/learning/model_selection.py`.
    Details: docs/methods.md#val_worst_f1.
    """

    metric = "val/worst_class_f1"
    label = "Val-WC-F1"
