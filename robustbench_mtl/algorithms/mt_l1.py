"""MT + L1: the paper's regularized multitask method."""
from __future__ import annotations

from ..registry import ALGORITHMS
from .base import Algorithm


@ALGORITHMS.register("mt_l1")
class MTL1(Algorithm):
    """Regularized multitask learning: end task + auxiliary objective(s) + L1 on the shared representation.

    Reference: Kulkarni, Dery et al., "Multitask Learning Can Improve Worst-Group Outcomes" (arXiv 2312.03151),
    eq. 1: L = L_end + w_aux * L_aux + w_reg * (|h_end|_1 + |h_aux|_1); one auxiliary batch from an
    independently shuffled loader, one summed loss, one optimizer step. Needs --aux.
    Details: docs/methods.md#mt_l1.
    """

    requires_auxiliary = True
    extra_objectives = ("l1",)
