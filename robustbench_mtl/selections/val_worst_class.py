"""Select by worst-class validation accuracy (class labels only, no group labels)."""
from __future__ import annotations

from ..registry import SELECTIONS
from .base import Selection


@SELECTIONS.register("val_worst_class")
class ValWorstClass(Selection):
    """The epoch with the best worst-class validation accuracy (needs no group labels).

    Reference: Idrissi et al. 2022 (BalancingGroups) and Yang et al. 2023 (SubpopBench), worst-class selection.
    Details: docs/methods.md#val_worst_class.
    """

    metric = "val/worst_class_acc"
    label = "Val-WC"
