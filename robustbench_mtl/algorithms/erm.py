"""ERM: the mean end-task loss, plus any objectives given with --aux."""
from __future__ import annotations

from ..registry import ALGORITHMS
from .base import Algorithm


@ALGORITHMS.register("erm")
class ERM(Algorithm):
    """Empirical risk minimization (mean cross-entropy); composes with --aux objectives.

    Reference: Vapnik 1992; the baseline of every group-robustness benchmark.
    Details: docs/methods.md#erm.
    """
