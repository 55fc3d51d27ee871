"""Val-GP: select by worst-group validation accuracy."""
from __future__ import annotations

from ..registry import SELECTIONS
from .base import Selection


@SELECTIONS.register("val_worst_group")
class ValWorstGroup(Selection):
    """Val-GP: the epoch with the best worst-group validation accuracy (uses validation group labels).

    Reference: Kulkarni, Dery et al. 2023 §2 ("Val-GP"); the released code's `min_acc_va` selection.
    Details: docs/methods.md#val_worst_group.
    """

    metric = "val/worst_group_acc"
    uses_val_groups = True
    label = "Val-GP"
