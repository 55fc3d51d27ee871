"""The algorithm contract: owns the model, the optimizer and the update; ERM-style default update."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, ClassVar, ContextManager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TrainHParams
from ..data.base import DataInfo, TensorSplit
from ..errors import RunFailedError
from ..hparams import NoHParams
from ..model import Model
from ..objectives.base import AuxiliaryTask, Penalty
from ..types import Batch, Outputs


class Algorithm(nn.Module):
    """Owns the update: `update(batch, aux_batch) -> metrics`, `predict(x) -> logits per task`.

    The default update is ERM plus weighted objectives: per-example end-task losses, `aggregate`
    (mean here; reweighted or robust in subclasses), each auxiliary task on the auxiliary batch,
    each penalty on all shared representations, one summed loss, one backward, one step
    (METHODS.md §1.2). Override points: `sampler_weights`, `setup`, `aggregate`, `update`,
    `after_training`.
    """

    HParams: ClassVar[type] = NoHParams
    uses_train_groups: ClassVar[bool] = False
    uses_val_groups: ClassVar[bool] = False
    requires_auxiliary: ClassVar[bool] = False
    extra_objectives: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: Model, hparams: Any, train: TrainHParams, info: DataInfo, total_steps: int) -> None:
        super().__init__()
        self.model = model
        self.hparams = hparams
        self.train_hp = train
        self.info = info
        self.total_steps = total_steps
        self.autocast: ContextManager[Any] | None = None  # set by the runner (bf16 on CUDA)
        self.evaluator: Callable[[str], None] | None = None  # set by the runner; see `evaluate_now`
        self.configure_optimizers()

    # -- optimization --------------------------------------------------------------------
    def configure_optimizers(self) -> None:
        """(Re)build the optimizer and schedule over all trainable parameters (JTT calls this again)."""
        t = self.train_hp
        params = [p for p in self.model.parameters() if p.requires_grad]
        if t.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        else:
            cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
            self.optimizer = cls(params, lr=t.lr, weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)

    def _lr_factor(self, step: int) -> float:
        t = self.train_hp
        if t.warmup_steps and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.scheduler == "constant":
            return 1.0
        frac = min(1.0, (step - t.warmup_steps) / max(1, self.total_steps - t.warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * frac)) if t.scheduler == "cosine" else 1.0 - frac

    # -- hooks ---------------------------------------------------------------------------
    def sampler_weights(self, train: TensorSplit) -> Tensor | None:
        """Per-example sampling weights for the end-task loader (None = uniform shuffling)."""
        return None

    def setup(self, train: TensorSplit) -> None:
        """Called once before training (two-stage methods run their first stage here)."""

    def evaluate_now(self, phase: str) -> None:
        """Ask the runner to evaluate the current model on val and test and record it with `"phase": phase`
        (e.g. after each first-stage epoch inside `setup`); a no-op outside a run."""
        if self.evaluator is not None:
            self.evaluator(phase)

    def selectable(self, record: dict[str, Any]) -> bool:
        """Whether selection protocols may choose this metrics record (all by default)."""
        return True

    def after_training(self, val: TensorSplit) -> TensorSplit | bool | None:
        """Called once after training; may use validation data (e.g. last-layer retraining).

        Return None/False if the model is unchanged; True to have the runner evaluate val and test once
        more (one `"phase": "after_training"` record); or a TensorSplit: the part of val to report as
        "val" in that record (e.g. the half the algorithm did not fit on).
        """
        return None

    def aggregate(self, losses: Tensor, batch: Batch) -> Tensor:
        """Reduce per-example end-task losses [B] to one scalar (ERM: the mean)."""
        return losses.mean()

    # -- the step ------------------------------------------------------------------------
    def _ctx(self) -> ContextManager[Any]:
        return self.autocast if self.autocast is not None else contextlib.nullcontext()

    def task_losses(self, out: Outputs, batch: Batch) -> Tensor:
        """Per-example cross-entropy summed over tasks; labels < 0 (missing) contribute nothing."""
        losses = [F.cross_entropy(logits.float(), batch.y[task], ignore_index=-1, reduction="none")
                  for task, logits in out.logits.items()]
        return losses[0] if len(losses) == 1 else torch.stack(losses).sum(0)

    def objective_terms(self, batch: Batch, aux_batch: Batch | None, out: Outputs) -> dict[str, Tensor]:
        """Unweighted loss of every objective: auxiliary tasks first, then penalties over all passes."""
        terms: dict[str, Tensor] = {}
        reps: dict[str, Outputs] = {"end": out}
        for name, obj in self.model.objectives.items():
            if isinstance(obj, AuxiliaryTask):
                if aux_batch is None:
                    raise RuntimeError("auxiliary objective without an auxiliary batch")
                terms[name], passes = obj.loss(self.model, aux_batch, out)
                reps.update({f"{name}/{i}": p for i, p in enumerate(passes)})
        for name, obj in self.model.objectives.items():
            if isinstance(obj, Penalty):
                terms[name] = obj.loss(reps)
        return terms

    def compute_loss(self, batch: Batch, aux_batch: Batch | None) -> tuple[Tensor, dict[str, Tensor]]:
        """The total loss of one step and its parts (unweighted objective terms)."""
        out = self.model(batch.x)
        task = self.aggregate(self.task_losses(out, batch), batch)
        terms = self.objective_terms(batch, aux_batch, out)
        total = task
        for name, term in terms.items():
            total = total + self.model.objectives[name].weight * term
        return total, {"loss_task": task, **{f"loss_{n}": t for n, t in terms.items()}}

    def step(self, total: Tensor) -> None:
        """Backward, clip, optimizer and schedule step, post-step projections."""
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.train_hp.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.train_hp.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.model.post_step()

    def update(self, batch: Batch, aux_batch: Batch | None = None) -> dict[str, float]:
        """One optimizer step; returns the scalar losses of this step."""
        if not self.model.training:  # evaluation switched to eval mode; a full .train() walk costs per step
            self.model.train()
        with self._ctx():
            total, parts = self.compute_loss(batch, aux_batch)
        values = torch.stack([total.detach().float(), *(p.detach().float() for p in parts.values())]).tolist()
        if not all(math.isfinite(v) for v in values):
            bad = [k for k, v in zip(["loss", *parts], values) if not math.isfinite(v)]
            raise RunFailedError(f"non-finite loss ({', '.join(bad)}); lower train.lr or the objective "
                                 f"weights, or set train.grad_clip")
        self.step(total)
        return dict(zip(["loss", *parts], values))

    @torch.no_grad()
    def predict(self, x: Tensor) -> dict[str, Tensor]:
        """Logits per task for inputs `x` (eval mode)."""
        self.model.eval()
        with self._ctx():
            return {t: v.float() for t, v in self.model(x).logits.items()}

    # -- checkpoint extras ---------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        """Algorithm state beyond module parameters (tensors, numbers, lists, dicts only)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` returned."""
