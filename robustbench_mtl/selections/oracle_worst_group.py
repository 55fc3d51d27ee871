"""Oracle: select on the test set's worst-group accuracy (an upper bound, never a real protocol)."""
from __future__ import annotations

from ..registry import SELECTIONS
from .base import Selection


@SELECTIONS.register("oracle_worst_group")
class OracleWorstGroup(Selection):
    """ORACLE: the epoch with the best test worst-group accuracy, over all epochs; uses test labels.

    Reference: Gulrajani & Lopez-Paz 2021 (DomainBed's test-domain oracle); an upper bound only.
    Details: docs/methods.md#oracle_worst_group.
    """

    metric = "test/worst_group_acc"
    oracle = True
    uses_val_groups = False  # it reads test group labels, which `oracle` declares
    label = "Oracle (test)"
