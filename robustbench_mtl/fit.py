"""Training-subset metrics of each selected model of a multi-task run: the fit side of the generalisation gap."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from torch import nn

from .data.base import TensorSplit
from .saliency import MAX_EXAMPLES, subset
from .selection import on_selected_models

Evaluate = Callable[[TensorSplit], dict[str, float]]


def selected_train_metrics(model: nn.Module, train: TensorSplit, out: Path, selections: dict[str, Any],
                           evaluate: Evaluate) -> dict[str, Any]:
    """Each protocol's selected model (selected/<protocol>.pt) evaluated on a fixed subset of at most
    MAX_EXAMPLES training examples (the algorithm's view: group ids it may not see are -1, so group-free
    algorithms get no group metrics there), written into its selections entry as `train` (keys without the
    prefix, as `val` and `test`). Returns what was measured; `model` holds its own weights again afterwards."""
    idx = subset(len(train), MAX_EXAMPLES)
    split = train if idx is None else train.subset(idx)
    # Group metrics of hidden groups are NaN: left out rather than written as null.
    measured = on_selected_models(model, out, selections, lambda: {
        k.partition("/")[2]: v for k, v in evaluate(split).items() if math.isfinite(v)})
    for name, metrics in measured.items():
        selections[name]["train"] = metrics
    return {"split": "train", "max_examples": MAX_EXAMPLES, "examples": len(split)}


__all__ = ["selected_train_metrics"]
