"""Classifier re-training (CRT, ReWeightCRT, VanillaCRT): ERM, then the task heads re-initialised and retrained
on frozen training features, class-balanced by sampling, by loss weights, or not at all."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.base import DataInfo, TensorSplit
from ..hparams import Choice, hp
from ..loaders import epoch_order, steps_per_epoch
from ._group_weights import bincount, inverse_frequency, weighted_mean
from ._last_layer import head_optimizer, pooled_features, refuse_head_objectives, schedule_factor
from .base import Algorithm

Balance = Literal["sampling", "loss", "none"]


@dataclass(frozen=True)
class CRTHParams:
    retrain_epochs: int = hp(10, Choice((5, 10, 20, 50)), ge=1,
                             help="epochs of stage 2 (head retraining) after the train.epochs of ERM; Kang et al. "
                                  "retrain the classifier for 10 epochs, SubpopBench as long as stage 1")


def class_weights(y: Tensor, n_classes: int) -> Tensor:
    """Per-example 1 / n_{y_i}, the counts taken over `y` (all labels >= 0)."""
    return inverse_frequency(y, bincount(y, n_classes))


def stage2_loss(logits: Tensor, y: Tensor, weights: Tensor, balance: Balance) -> Tensor:
    """Cross-entropy of one stage-2 batch: weighted by 1/n_y (sum w l / sum w) for `loss`, else the mean."""
    losses = F.cross_entropy(logits, y, reduction="none")
    return weighted_mean(losses, weights) if balance == "loss" else losses.mean()


class ClassifierRetraining(Algorithm):
    """Stage 1: the default update (ERM with any --aux terms) for train.epochs. Stage 2 (`after_training`):
    every task head re-initialised and retrained for `retrain_epochs` on the frozen pooled features of the
    training split (eval mode, no augmentation), examples missing the task's label left out; `balance` says
    how classes are balanced. Subclasses set `balance`; see docs/methods.md#crt."""

    HParams = CRTHParams
    balance: ClassVar[Balance]

    @classmethod
    def check(cls, name: str, info: DataInfo, objectives: tuple[str, ...]) -> None:
        refuse_head_objectives(name, objectives)

    def after_training(self, val: TensorSplit) -> bool:
        train = self.train_split
        if train is None:
            raise RuntimeError(f"{type(self).__name__}: after_training needs train_split (set by the runner)")
        seed = int(torch.randint(0, 2**62, (1,)))  # from the run's seeded generator: deterministic per run
        feats = pooled_features(self, train)
        for task, n_classes in self.info.tasks.items():
            keep = torch.nonzero(train.y[task] >= 0).flatten()
            if len(keep):
                self.retrain_head(task, feats[keep], train.y[task][keep], n_classes, seed)
        return True  # stage 2 never saw val: all of val is evaluated

    def retrain_head(self, task: str, feats: Tensor, y: Tensor, n_classes: int, seed: int) -> None:
        """Re-initialise the task's head and train it on (feats, y) with the run's optimizer settings."""
        head: nn.Linear = self.model.heads[task]
        head.reset_parameters()  # draws from the run's seeded generator
        self.model.post_step()  # a new head obeys the model's head-norm constraint from the start
        t, weights = self.train_hp, class_weights(y, n_classes)
        total = self.hparams.retrain_epochs * steps_per_epoch(len(y), t.batch_size)
        optimizer = head_optimizer(self, list(head.parameters()))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule_factor(t.scheduler, s, total))
        sampling = weights if self.balance == "sampling" else None
        for epoch in range(self.hparams.retrain_epochs):
            order = epoch_order(len(y), seed, f"retrain/{task}", epoch, sampling).to(y.device)
            for start in range(0, len(order), t.batch_size):
                idx = order[start:start + t.batch_size]
                loss = stage2_loss(head(feats[idx]), y[idx], weights[idx], self.balance)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if t.grad_clip > 0:
                    nn.utils.clip_grad_norm_(head.parameters(), t.grad_clip)
                optimizer.step()
                schedule.step()
                self.model.post_step()  # the model's head-norm constraint holds in stage 2 too
