"""Select by the smallest difference between per-class validation accuracies (class labels only)."""
from __future__ import annotations

from ..registry import SELECTIONS
from .base import Selection


@SELECTIONS.register("val_class_diff")
class ValClassDiff(Selection):
    """The epoch with the lowest validation class difference (`val/class_diff` = Σ_{i<j} |acc_i - acc_j|
    over the classes' recalls; for two classes, max minus min): it minimises its metric (`minimize`).
    Needs no group labels.

    Reference: Li, Liu & Hu, "Bias Amplification Enhances Minority Group Performance" (BAM's ClassDiff
    stopping criterion), TMLR 2024; as in SubpopBench (Yang et al., ICML 2023), `ValClassDiff` in
    `subpopbench/learning/model_selection.py`.
    Details: docs/methods.md#val_class_diff.
    """

    metric = "val/class_diff"
    label = "Val-CDiff"
    minimize = True
