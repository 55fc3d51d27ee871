"""MT: ERM multitasked with the auxiliary objective(s) from --aux, without the L1 penalty."""
from __future__ import annotations

from ..registry import ALGORITHMS
from .base import Algorithm


@ALGORITHMS.register("mt")
class MT(Algorithm):
    """Multitask learning: end task + auxiliary objective(s) with the paper's batching, no L1 penalty.

    Reference: Kulkarni, Dery et al. 2023 (arXiv 2312.03151), the `erm_mt` ablation. Needs --aux.
    Details: docs/methods.md#mt.
    """

    requires_auxiliary = True
