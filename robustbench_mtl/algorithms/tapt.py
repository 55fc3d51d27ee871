"""TAPT: task-adaptive pretraining, the auxiliary objectives alone on the training inputs (no labels)."""
from __future__ import annotations

from torch import Tensor

from ..registry import ALGORITHMS
from ..types import Batch
from .base import Algorithm


@ALGORITHMS.register("tapt")
class TAPT(Algorithm):
    """Task-adaptive pretraining: minimise only the weighted --aux objectives; end-task labels unused.

    Reference: Gururangan et al. 2020, "Don't Stop Pretraining" (TAPT); the released mt_l1 code's `tapt`
    method (unused there) and the paper's from-scratch vs pretrained ablation. Each step: the auxiliary
    objectives on the auxiliary batch (and any penalty, e.g. l1, on their passes), one step; the
    end-task heads are never trained, so the val/test metrics of a tapt run are those of untrained heads
    and mean nothing. `robustbench-mtl pretrain` runs it and saves the backbone for `backbone.init`.
    Details: docs/methods.md#tapt.
    """

    requires_auxiliary = True

    def compute_loss(self, batch: Batch, aux_batch: Batch | None) -> tuple[Tensor, dict[str, Tensor]]:
        # The end-task pass is still made (penalties read it; it is cheap next to the auxiliary passes), but
        # it carries no labels' loss.
        terms = self.objective_terms(batch, aux_batch, self.model(batch.x, heads=False))
        total = sum(self.model.objectives[n].weight * t for n, t in terms.items())
        return total, {f"loss_{n}": t for n, t in terms.items()}  # type: ignore[return-value]
