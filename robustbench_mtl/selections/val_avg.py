"""No-GP: select by average validation accuracy."""
from __future__ import annotations

from ..registry import SELECTIONS
from .base import Selection


@SELECTIONS.register("val_avg")
class ValAvg(Selection):
    """No-GP: the epoch with the best average validation accuracy (no group labels anywhere).

    Reference: Kulkarni, Dery et al. 2023 ("No-GP"); BalancingGroups' `--selector avg_acc_va`.
    Details: docs/methods.md#val_avg.
    """

    metric = "val/avg_acc"
    label = "No-GP"
