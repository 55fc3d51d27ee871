"""Per-task training class counts, checkpointed, and the class weights built on them (not an algorithm)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.base import TensorSplit
from ._group_weights import bincount
from .base import Algorithm


def count_classes(y: Mapping[str, Tensor], tasks: Mapping[str, int]) -> dict[str, list[int]]:
    """n_{t,c}: how many examples of each class each task has (missing labels, -1, are not counted)."""
    return {task: bincount(y[task], n_classes) for task, n_classes in tasks.items()}


def sum_to_classes(raw: Tensor) -> Tensor:
    """`raw` rescaled to sum to the number of classes (Cui et al.'s normalisation, also SubpopBench's)."""
    return raw * (len(raw) / raw.sum().clamp_min(1e-30))  # all zeros stay zeros; no host sync on the check


def class_balanced_weights(counts: Tensor, beta: float) -> Tensor:
    """w_c = (1 - beta) / (1 - beta^n_c), rescaled to sum to the number of classes; 0 for classes without
    training examples (SubpopBench gives them an infinite count, i.e. weight 0). beta = 0 gives equal weights."""
    n = counts.double()
    effective = 1.0 - torch.pow(torch.full_like(n, beta), n)  # (1 - beta) times Cui et al.'s effective number
    raw = torch.where(n > 0, (1.0 - beta) / effective.clamp_min(1e-300), torch.zeros_like(n))
    return sum_to_classes(raw).to(counts.dtype)


def class_weighted_ce(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Per-example w_{y_i} * CE_i; 0 where the label is missing (-1)."""
    ce = F.cross_entropy(logits.float(), labels, ignore_index=-1, reduction="none")
    return weights[labels.clamp_min(0)] * ce  # a missing label's CE is already 0: any weight leaves it 0


class ClassCountAlgorithm(Algorithm):
    """Base for the class-imbalance methods that read each task's training class counts n_{t,c}.

    The counts come from the training split's labels only (no group ids), in `setup` and again in
    `sampler_weights` (which the runner also calls on resume, where `setup` is not), and are checkpointed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.class_counts: dict[str, list[int]] = {}
        self._count_tensors: dict[str, Tensor] = {}  # the same, as float tensors on the model's device

    def _set_counts(self, counts: dict[str, list[int]]) -> None:
        device = next(self.model.parameters()).device
        self.class_counts = counts
        self._count_tensors = {t: torch.tensor(c, dtype=torch.float32, device=device) for t, c in counts.items()}

    def setup(self, train: TensorSplit) -> None:
        self._set_counts(count_classes(train.y, self.info.tasks))

    def sampler_weights(self, train: TensorSplit) -> Tensor | None:
        self._set_counts(count_classes(train.y, self.info.tasks))  # also on resume, where setup is not called
        return None

    def counts(self, task: str) -> Tensor:
        """n_{task,c} as a float tensor [C] on the model's device."""
        if task not in self._count_tensors:
            raise RuntimeError(f"{type(self).__name__}: class counts unknown; call setup(train) or sampler_weights")
        return self._count_tensors[task]

    def extra_state(self) -> dict[str, Any]:
        return {"class_counts": {t: list(c) for t, c in self.class_counts.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "class_counts" in state:
            self._set_counts({t: [int(n) for n in c] for t, c in state["class_counts"].items()})
