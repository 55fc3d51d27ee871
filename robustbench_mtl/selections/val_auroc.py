"""Select by validation AUROC (class labels only)."""
from __future__ import annotations

from ..registry import SELECTIONS
from .base import Selection


@SELECTIONS.register("val_auroc")
class ValAuroc(Selection):
    """The epoch with the best validation AUROC (`val/auroc`: of the positive-class score for binary tasks,
    the macro one-vs-rest mean for more classes). It ranks the model's scores rather than its argmax
    predictions; needs no group labels.

    Reference: Yang et al., "Change is Hard: A Closer Look at Subpopulation Shift", ICML 2023 (SubpopBench),
    `ValAUROC` in `subpopbench/learning/model_selection.py`.
    Details: docs/methods.md#val_auroc.
    """

    metric = "val/auroc"
    label = "Val-AUROC"
