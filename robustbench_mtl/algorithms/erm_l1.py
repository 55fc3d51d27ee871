"""ERM + L1: ERM with the L1 penalty on the shared representation and no auxiliary task."""
from __future__ import annotations

from ..registry import ALGORITHMS
from .base import Algorithm


@ALGORITHMS.register("erm_l1")
class ERML1(Algorithm):
    """ERM with the L1 penalty on the shared representation (ablation of mt_l1 without the auxiliary task).

    Reference: Kulkarni, Dery et al. 2023 (arXiv 2312.03151), the `erm_l1` ablation; weight = l1.weight.
    Details: docs/methods.md#erm_l1.
    """

    extra_objectives = ("l1",)
