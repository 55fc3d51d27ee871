"""The algorithm contract: owns the model, the optimizer and the update; ERM-style default update."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, ClassVar, ContextManager, Iterator, Union

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

# What `after_training` may return; see its docstring.
AfterTraining = Union[None, bool, TensorSplit, Tensor, dict[str, Any]]


class Algorithm(nn.Module):
    """Owns the update: `update(batch, aux_batch) -> metrics`, `predict(x) -> logits per task`.

    The default update is ERM plus weighted objectives: per-example end-task losses, `aggregate`
    (mean here; reweighted or robust in subclasses), each auxiliary task on the auxiliary batch,
    each penalty on all shared representations, one summed loss, one backward, one step
    (docs/methods.md#batching). Override points: `sampler_weights`, `sampler_repeats`, `setup`,
    `aggregate`, `task_losses`, `update`, `optimized_parameters`, `after_training`.

    Attributes a subclass may use: `model` (backbone, `heads`, `objectives`), `hparams` (its own HParams),
    `train_hp` (the `train` scope), `info` (tasks, groups; `train_group_counts` only for algorithms that
    declare `uses_train_groups`), `total_steps` (the schedule's length), `optimizer` and `scheduler`
    (built on first use over `optimized_parameters()`), `train_split` (the training split as this
    algorithm sees it, set by the runner before training, also on resume).
    """

    HParams: ClassVar[type] = NoHParams
    uses_train_groups: ClassVar[bool] = False
    uses_val_groups: ClassVar[bool] = False
    uses_environments: ClassVar[bool] = False
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
        self.split_evaluator: Callable[[TensorSplit], dict[str, float]] | None = None  # see `evaluate_split`
        # The training split as this algorithm sees it (hidden ids are -1); set by the runner, resume included.
        self.train_split: TensorSplit | None = None
        # Built on first use, so that networks a subclass adds in its __init__ are optimised too.
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    @classmethod
    def check(cls, name: str, info: DataInfo, objectives: tuple[str, ...]) -> None:
        """Raise ConfigError (one line) if this algorithm cannot run on this dataset with these objectives
        (e.g. gradient surgery on a one-task dataset); called when the run resolves, before anything is written."""

    # -- optimization --------------------------------------------------------------------
    def optimized_parameters(self) -> Iterator[nn.Parameter]:
        """What the main optimizer updates: every trainable parameter of this module, i.e. the model's and
        those of any network a subclass assigns as an attribute in `__init__`. Override it to leave out a
        network that has its own optimizer (BR-DRO's adversary)."""
        return (p for p in self.parameters() if p.requires_grad)

    def configure_optimizers(self) -> None:
        """(Re)build the optimizer and schedule over `optimized_parameters()` (JTT calls this again)."""
        t = self.train_hp
        groups = self.decay_groups(list(self.optimized_parameters()))
        if t.optimizer == "sgd":
            self._optimizer = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
        else:
            cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
            self._optimizer = cls(groups, lr=t.lr, eps=t.adam_eps)
        self._scheduler = torch.optim.lr_scheduler.LambdaLR(self._optimizer, self._lr_factor)

    def decay_groups(self, params: list[nn.Parameter]) -> list[dict[str, Any]]:
        """Parameter groups with their weight decay: one group, or (train.no_decay) biases and LayerNorm
        weights apart from the rest; `inverted` swaps the two (the released text code's inverted mask)."""
        t = self.train_hp
        if t.no_decay == "none":
            return [{"params": params, "weight_decay": t.weight_decay}]
        exempt = {id(p) for m in self.modules() for name, p in m.named_parameters(recurse=False)
                  if name == "bias" or isinstance(m, nn.LayerNorm)}
        rest = [p for p in params if id(p) not in exempt]
        special = [p for p in params if id(p) in exempt]
        decay_rest, decay_special = (t.weight_decay, 0.0) if t.no_decay == "bias_norm" else (0.0, t.weight_decay)
        return [{"params": rest, "weight_decay": decay_rest}, {"params": special, "weight_decay": decay_special}]

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            self.configure_optimizers()
        assert self._optimizer is not None
        return self._optimizer

    @optimizer.setter
    def optimizer(self, value: torch.optim.Optimizer) -> None:  # subclasses that build their own
        self._optimizer, self._scheduler = value, None

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        if self._scheduler is None:  # over the optimizer a subclass may have set itself
            self._scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        return self._scheduler

    @scheduler.setter
    def scheduler(self, value: torch.optim.lr_scheduler.LRScheduler) -> None:
        self._scheduler = value

    def warmup(self) -> int:
        """Warm-up steps: train.warmup_steps, or train.warmup_ratio of the schedule's total steps."""
        t = self.train_hp
        return t.warmup_steps or math.ceil(t.warmup_ratio * self.total_steps)

    def _lr_factor(self, step: int) -> float:
        t, warm = self.train_hp, self.warmup()
        if warm and step < warm:
            return (step + 1) / warm
        if t.scheduler == "constant":
            return 1.0
        frac = min(1.0, (step - warm) / max(1, self.total_steps - warm))
        return 0.5 * (1 + math.cos(math.pi * frac)) if t.scheduler == "cosine" else 1.0 - frac

    # -- hooks ---------------------------------------------------------------------------
    def sampler_weights(self, train: TensorSplit) -> Tensor | None:
        """Per-example sampling weights for the end-task loader: an epoch is N draws with replacement
        (None = a shuffled pass over the N examples)."""
        return None

    def sampler_repeats(self, train: TensorSplit) -> Tensor | None:
        """Integer copies per example, an upsampled dataset (JTT): an epoch is a shuffled pass without
        replacement over sum(repeats) examples, and the schedule must be sized for it (`total_steps`).
        None = no upsampling. Do not return both weights and repeats."""
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

    def evaluate_split(self, split: TensorSplit, name: str = "val") -> dict[str, float]:
        """The runner's metrics (`<name>/...` keys) of the current model on `split`; {} outside a run."""
        if self.split_evaluator is None:
            return {}
        return {f"{name}/{k.partition('/')[2]}": v for k, v in self.split_evaluator(split).items()}

    def after_training(self, val: TensorSplit) -> AfterTraining:
        """Called once after training; may use validation data (e.g. last-layer retraining). Validation
        group ids are -1 unless the algorithm declares `uses_val_groups`.

        Return None/False if the model is unchanged. Otherwise the runner evaluates test once more and
        writes one `"phase": "after_training"` record, whose val part is: all of val (return True); the
        rows of val whose indices you return as a LongTensor (e.g. the half the algorithm did not fit on),
        evaluated with their group labels; a TensorSplit, evaluated as given; or, if you return a dict, its
        `val/*` entries (metrics you computed with `evaluate_split` on data the final model was not fit
        on), with its other entries (e.g. `dfr/C`) recorded as given; a dict without `val/*` entries has
        all of val evaluated, as True, beside its entries (e.g. `afr/gamma`).
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
            if isinstance(obj, Penalty):  # mtcrl's G-IRM also reads the batch's labels and environments
                terms[name] = obj.batch_loss(reps, batch, self.total_steps)
        return terms

    def with_objectives(self, total: Tensor, batch: Batch, aux_batch: Batch | None,
                        out: Outputs) -> tuple[Tensor, dict[str, Tensor]]:
        """`total` plus each objective's weighted term, and the unweighted terms as `loss_<name>` parts."""
        terms = self.objective_terms(batch, aux_batch, out)
        for name, term in terms.items():
            total = total + self.model.objectives[name].weight * term
        return total, {f"loss_{n}": t for n, t in terms.items()}

    def compute_loss(self, batch: Batch, aux_batch: Batch | None) -> tuple[Tensor, dict[str, Tensor]]:
        """The total loss of one step and its parts (unweighted objective terms)."""
        out = self.model(batch.x)
        task = self.aggregate(self.task_losses(out, batch), batch)
        total, parts = self.with_objectives(task, batch, aux_batch, out)
        return total, {"loss_task": task, **parts}

    def step(self, total: Tensor) -> None:
        """Backward, clip, optimizer and schedule step, post-step projections. The loss is divided by the
        objectives' `loss_divisor` (an annealed weight > 1), and the optimizer's moments are cleared where an
        objective's anneal switches (`restarts_optimizer`), as IRM does for its own penalty."""
        self.optimizer.zero_grad(set_to_none=True)
        divisor = self.model.loss_divisor()
        (total / divisor if divisor != 1 else total).backward()
        if self.train_hp.grad_clip > 0:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(params, self.train_hp.grad_clip)
        if self.model.restarts_optimizer():  # the loss's scale jumps: stale moments would mis-scale steps
            self.optimizer.state.clear()
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

    def erm_step(self, batch: Batch, stage: str) -> None:
        """One plain ERM step (mean end-task loss, no objectives): a two-stage method's first stage (JTT's
        identification model, EIIL's reference model); `stage` names it in the non-finite-loss error."""
        if not self.model.training:
            self.model.train()
        with self._ctx():
            loss = self.task_losses(self.model(batch.x), batch).mean()
        if not math.isfinite(float(loss.detach())):
            raise RunFailedError(f"non-finite loss in {stage}; lower train.lr")
        self.step(loss)

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
