"""Oracle: select on the test set's average accuracy (an upper bound, never a real protocol)."""
from __future__ import annotations

from ..registry import SELECTIONS
from .base import Selection


@SELECTIONS.register("oracle_avg")
class OracleAvg(Selection):
    """ORACLE: the epoch with the best test average (per-example) accuracy, over all epochs; uses test class
    labels but no group labels.

    Reference: Yang et al., "Change is Hard: A Closer Look at Subpopulation Shift", ICML 2023 (SubpopBench),
    `OracleMeanAcc` in `subpopbench/learning/model_selection.py`; an upper bound only.
    Details: docs/methods.md#oracle_avg.
    """

    metric = "test/avg_acc"
    oracle = True
    uses_val_groups = False  # it reads test class labels, which `oracle` declares
    label = "Oracle avg (test)"
