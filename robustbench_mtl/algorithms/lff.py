"""LfF: a GCE-trained biased twin; the debiased model's loss weighted by relative difficulty L_b / (L_b + L_d)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backbones.base import Backbone
from ..data.base import TensorSplit
from ..hparams import Choice, Uniform, hp
from ..model import Model
from ..registry import ALGORITHMS
from ..types import Batch
from .base import Algorithm


@dataclass(frozen=True)
class LfFHParams:
    q: float = hp(0.7, Uniform(0.05, 0.95), gt=0, le=1,
                  help="GCE exponent of the biased model (LfF and SubpopBench default 0.7; SubpopBench space "
                       "U(0.05, 0.95))")
    ema_alpha: float = hp(0.7, Choice((0.0, 0.5, 0.7, 0.9)), ge=0, lt=1,
                          help="per-example EMA of both models' losses (official LfF 0.7); 0 = this batch's losses, "
                               "as SubpopBench")
    class_norm: bool = hp(False, help="divide each EMA loss by the maximum EMA loss of its class before weighting "
                                      "(the official LfF code); SubpopBench does not")


def gce_loss(logits: Tensor, y: Tensor, q: float) -> Tensor:
    """Per-example generalized cross-entropy (1 - p_y^q) / q, 0 where y < 0. Its gradient wrt the logits is
    p_y^q times that of the cross-entropy: confident (easy) examples weigh more."""
    log_p = F.log_softmax(logits.float(), 1).gather(1, y.clamp_min(0)[:, None]).squeeze(1)
    return -torch.expm1(q * log_p) / q * (y >= 0)


def ema_update(ema: Tensor, idx: Tensor, losses: Tensor, first: Tensor, alpha: float) -> None:
    """In place: ema[i] = alpha ema[i] + (1 - alpha) loss_i, or loss_i where `first` (an example's first visit)."""
    ema[idx] = torch.where(first, losses, alpha * ema[idx] + (1 - alpha) * losses)


def class_max(ema: Tensor, classes: Tensor, n_bins: int) -> Tensor:
    """The maximum EMA loss of each class bin over all training examples ([n_bins])."""
    return torch.zeros(n_bins, dtype=ema.dtype, device=ema.device).scatter_reduce(0, classes, ema, "amax")


def relative_difficulty(loss_b: Tensor, loss_d: Tensor) -> Tensor:
    """W = L_b / (L_b + L_d): near 1 where the biased model fails and the debiased one does not."""
    return loss_b / (loss_b + loss_d + 1e-8)


@ALGORITHMS.register("lff")
class LfF(Algorithm):
    """LfF (Learning from Failure): a biased twin trained with GCE, the model trained on W(x)-weighted CE.

    Reference: Nam et al., "Learning from Failure: Training Debiased Classifier from Biased Classifier",
    NeurIPS 2020 (alinlab/LfF train.py); SubpopBench `subpopbench/learning/algorithms.py` LfF
    (docs/methods.md#lff). The twin (`biased`: a new backbone of the run's class and hparams, independently
    initialised, with its own linear heads) minimises GCE(q) = (1 - p_y^q) / q summed over tasks. Per step,
    the per-example CE (summed over tasks) of both models enters a per-example EMA (`ema_alpha`) over the
    training split (batch.idx); with `class_norm` each EMA is divided by its class maximum (first task's
    classes); W = L_b / (L_b + L_d) of the EMA losses, detached. Loss = mean_i W_i CE_d(x_i) + mean_i GCE_b(x_i)
    (+ weighted --aux terms on the debiased model), one optimizer over both models. Prediction: the debiased
    model. The twin's weights are in the checkpoint (module state) and the EMAs in `extra_state`. Uses no
    group labels.
    """

    HParams = LfFHParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        device = next(self.model.parameters()).device
        # An attribute set here: its parameters are optimized with the model's (optimized_parameters).
        self.biased = Model(self._new_backbone(), self.info.tasks, {}, self.model.head_norm).to(device)
        self.task = next(iter(self.info.tasks))
        self.ema_b: Tensor | None = None  # [N] EMA of the biased model's loss per training example
        self.ema_d: Tensor | None = None  # [N] the same for the debiased model
        self.seen: Tensor | None = None  # [N] bool: visited at least once
        self.classes: Tensor | None = None  # [N] first task's class per example (missing label: last bin)

    def _new_backbone(self) -> Backbone:
        base = self.model.backbone
        new = type(base)(base.hparams, base.info)  # independent initial weights, from the seeded generator
        if getattr(base.hparams, "init", ""):  # weights saved by `robustbench-mtl pretrain`, as the run's
            new.load_init(base.hparams.init)
        return new

    def setup(self, train: TensorSplit) -> None:
        n, device = len(train), train.g.device
        self.ema_b, self.ema_d = torch.zeros(n, device=device), torch.zeros(n, device=device)
        self.seen = torch.zeros(n, dtype=torch.bool, device=device)
        labels = train.y[self.task]
        self.classes = labels.where(labels >= 0, self.info.tasks[self.task])

    def difficulty(self, idx: Tensor, loss_b: Tensor, loss_d: Tensor) -> Tensor:
        """Update both EMAs at the batch's examples, then their relative difficulty weights W [B]."""
        if self.ema_b is None or self.ema_d is None or self.seen is None or self.classes is None:
            raise RuntimeError("lff: EMA state missing; call setup(train) or load_extra_state first")
        alpha, first = self.hparams.ema_alpha, ~self.seen[idx]
        ema_update(self.ema_b, idx, loss_b, first, alpha)
        ema_update(self.ema_d, idx, loss_d, first, alpha)
        self.seen[idx] = True
        lb, ld = self.ema_b[idx], self.ema_d[idx]
        if self.hparams.class_norm:
            bins = self.info.tasks[self.task] + 1
            c = self.classes[idx]
            lb = lb / class_max(self.ema_b, self.classes, bins)[c].clamp_min(1e-12)
            ld = ld / class_max(self.ema_d, self.classes, bins)[c].clamp_min(1e-12)
        return relative_difficulty(lb, ld)

    def compute_loss(self, batch: Batch, aux_batch: Batch | None) -> tuple[Tensor, dict[str, Tensor]]:
        if not self.biased.training:
            self.biased.train()
        out, out_b = self.model(batch.x), self.biased(batch.x)
        ce_d, ce_b = self.task_losses(out, batch), self.task_losses(out_b, batch)
        gce = torch.stack([gce_loss(z, batch.y[t], self.hparams.q) for t, z in out_b.logits.items()]).sum(0)
        w = self.difficulty(batch.idx, ce_b.detach().float(), ce_d.detach().float())
        task, biased = (w * ce_d).mean(), gce.mean()
        total, parts = self.with_objectives(task + biased, batch, aux_batch, out)
        return total, {"loss_task": task, "loss_gce": biased, "lff_weight": w.mean(), **parts}

    def step(self, total: Tensor) -> None:
        super().step(total)
        self.biased.post_step()  # the twin's heads keep the same head-norm constraint as the model's

    def extra_state(self) -> dict[str, Any]:
        if self.ema_b is None:
            return {}
        return {"ema_b": self.ema_b, "ema_d": self.ema_d, "seen": self.seen, "classes": self.classes}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "ema_b" in state:
            device = next(self.model.parameters()).device
            self.ema_b, self.ema_d = state["ema_b"].to(device), state["ema_d"].to(device)
            self.seen, self.classes = state["seen"].to(device), state["classes"].to(device)
