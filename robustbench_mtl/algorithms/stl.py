"""STL: the single-task baseline, one backbone and head per task, each trained on its own task's loss only."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..backbones.base import Backbone
from ..data.base import DataInfo
from ..errors import ConfigError
from ..registry import ALGORITHMS
from ..types import Batch, Outputs
from .base import Algorithm


@ALGORITHMS.register("stl")
class STL(Algorithm):
    """Single-task learning: a separate model (backbone + head) per task, each trained on its task's loss alone.

    Reference: the single-task baseline of multi-task learning (e.g. the STL row of MT-CRL, Hu et al.,
    NeurIPS 2022; docs/methods.md#stl). The first task uses the run's backbone; every other task gets a new
    backbone of the same class and hparams (from `backbone.init` or the pretrained weights where those apply),
    initialised from the run's seed after the first, so independently; each reads its own task's head. The
    loss is sum_t R_t, whose gradient reaches each model from its own task only; gradient clipping is per task.
    On a one-task dataset this is exactly ERM. Takes no --aux objectives.
    """

    @classmethod
    def check(cls, name: str, info: DataInfo, objectives: tuple[str, ...]) -> None:
        if objectives:
            raise ConfigError(f"{name} trains one model per task and takes no objectives, but this run has "
                              f"{', '.join(objectives)}; drop --aux, or use erm or mt with it")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first, *rest = self.info.tasks
        # Inside the model, so that selected/<protocol>.pt (the model's state_dict) holds every task's network.
        self.model.add_module("task_backbones", nn.ModuleDict({t: self._new_backbone() for t in rest}))

    def _new_backbone(self) -> Backbone:
        base = self.model.backbone
        new = type(base)(base.hparams, base.info)  # draws its initial weights from the seeded global generator
        if getattr(base.hparams, "init", ""):  # as trainer.assemble: weights saved by `robustbench-mtl pretrain`
            new.load_init(base.hparams.init)
        return new.to(next(base.parameters()).device)

    def backbone_of(self, task: str) -> Backbone:
        return self.model.backbone if task == self.first else self.model.task_backbones[task]

    def task_outputs(self, x: Tensor) -> Outputs:
        """Each task's logits from its own backbone and head (pooled: the first task's representation)."""
        reps = {t: self.backbone_of(t)(x).pooled for t in self.info.tasks}
        return Outputs(reps[self.first], logits={t: self.model.heads[t](z) for t, z in reps.items()})

    def compute_loss(self, batch: Batch, aux_batch: Batch | None) -> tuple[Tensor, dict[str, Tensor]]:
        task = self.aggregate(self.task_losses(self.task_outputs(batch.x), batch), batch)
        return task, {"loss_task": task}

    def step(self, total: Tensor) -> None:
        # As the base step, but clipping each task's model on its own: one global norm would let one task's
        # gradient shrink another task's step.
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.train_hp.grad_clip > 0:
            for t in self.info.tasks:
                params = [*self.backbone_of(t).parameters(), *self.model.heads[t].parameters()]
                nn.utils.clip_grad_norm_(params, self.train_hp.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.model.post_step()

    @torch.no_grad()
    def predict(self, x: Tensor) -> dict[str, Tensor]:
        self.model.eval()
        with self._ctx():
            return {t: v.float() for t, v in self.task_outputs(x).logits.items()}
