"""RWY: class-balanced training by loss weights (or sampling probabilities) 1/n_y; no group labels."""
from __future__ import annotations

from typing import Any

from torch import Tensor

from ..data.base import TensorSplit
from ..registry import ALGORITHMS
from ..types import Batch
from ._group_weights import ReweightHParams, bincount, inverse_frequency, weighted_mean
from .base import Algorithm


@ALGORITHMS.register("reweight_classes")
class ReweightClasses(Algorithm):
    """Class reweighting (RWY): each example's loss weighted by 1/n_y of its training class.

    Reference: Idrissi et al., "Simple data balancing achieves competitive worst-group-accuracy",
    CLeaR 2022 (RWY). Uses labels only, no group ids. `mode=loss` (default): loss = sum_i w_i l_i /
    sum_i w_i with w_i = 1/n_{y(i)} (weights rescaled to mean 1 over the batch); `mode=sampling`:
    examples drawn with probability proportional to 1/n_{y(i)}, plain mean loss. With several tasks
    the classes are those of the first task; examples missing its label (-1) form one more class.
    n_y are counted on the training split (in `setup`/`sampler_weights`, and checkpointed).
    Details: docs/methods.md#reweight_classes.
    """

    HParams = ReweightHParams
    uses_train_groups = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task = next(iter(self.info.tasks))
        self.class_counts: list[int] = []

    def _class_ids(self, y: dict[str, Tensor]) -> Tensor:
        labels = y[self.task]
        return labels.where(labels >= 0, self.info.tasks[self.task])  # missing labels: the last bin

    def _count(self, train: TensorSplit) -> None:
        self.class_counts = bincount(self._class_ids(train.y), self.info.tasks[self.task] + 1)

    def setup(self, train: TensorSplit) -> None:
        self._count(train)

    def sampler_weights(self, train: TensorSplit) -> Tensor | None:
        self._count(train)  # also on resume, where setup is not called
        if self.hparams.mode == "sampling":
            return inverse_frequency(self._class_ids(train.y), self.class_counts)
        return None

    def aggregate(self, losses: Tensor, batch: Batch) -> Tensor:
        if self.hparams.mode == "sampling":
            return losses.mean()
        if not self.class_counts:
            raise RuntimeError("reweight_classes: class counts unknown; call setup(train) or sampler_weights first")
        return weighted_mean(losses, inverse_frequency(self._class_ids(batch.y), self.class_counts))

    def extra_state(self) -> dict[str, Any]:
        return {"class_counts": list(self.class_counts)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.class_counts = [int(c) for c in state.get("class_counts", [])]
