"""AFR: ERM on part of train, then each head retrained on the rest with weights exp(-gamma p_correct)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.base import DataInfo, TensorSplit
from ..hparams import Choice, hp
from ..loaders import steps_per_epoch
from ..registry import ALGORITHMS
from ._group_weights import bincount
from ._last_layer import pooled_features, refuse_head_objectives, worst_class_accuracy
from .base import Algorithm

# Spans the official notebooks' grids: Waterbirds linspace(4, 20, 33), CelebA linspace(1, 3, 10).
AFR_GAMMA_GRID = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0)


@dataclass(frozen=True)
class AFRHParams:
    erm_fraction: float = hp(0.8, Choice((0.5, 0.7, 0.8, 0.9)), gt=0, lt=1,
                             help="share of the training split for stage-1 ERM, the rest is the reweighting set "
                                  "(official train_prop 80 for every dataset)")
    gamma: tuple[float, ...] = hp(AFR_GAMMA_GRID, ge=0,
                                  help="gamma grid, tuned by val worst-class accuracy; one value = that gamma, no "
                                       "tuning (official grids: Waterbirds linspace(4, 20, 33), CelebA linspace(1, 3, 10))")
    reg: tuple[float, ...] = hp((0.0,), ge=0,
                                help="lambda grid of the L2 pull toward the ERM head, tuned with gamma (official "
                                     "README: 0; Waterbirds notebook grid {0, 0.1, 0.2, 0.3})")
    balance_classes: bool = hp(True, help="also weight each example by 1/n_y of the reweighting set "
                                          "(official rebalance_weights, default True)")
    lr: float = hp(1e-2, gt=0, help="stage-2 lr of full-batch SGD, no momentum, no weight decay (official 0.01)")
    epochs: int = hp(500, ge=1, help="stage-2 full-batch gradient steps (official num_epochs 500)")
    grad_clip: float = hp(1.0, ge=0, help="stage-2 gradient-norm cap, 0 = off (official grad_norm 1.0)")
    split_seed: int = hp(0, help="seed of the fixed random split of train into the ERM and reweighting parts")


def erm_split(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(ERM, reweighting) indices of n examples: a seeded permutation, its first floor(fraction n) for ERM
    (at least 1, and at least 1 left to reweight when n > 1)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = min(max(1, int(n * fraction)), max(1, n - 1))
    return perm[:cut].sort().values, perm[cut:].sort().values


def afr_weights(p_true: Tensor, y: Tensor, gamma: float, balance_classes: bool, n_classes: int) -> Tensor:
    """w_i proportional to exp(-gamma p_i) (times 1/n_{y_i} when balancing classes), normalised to sum 1."""
    w = torch.exp(-gamma * p_true)
    if balance_classes:
        w = w / torch.as_tensor(bincount(y, n_classes), dtype=w.dtype, device=w.device)[y]
    return w / w.sum()


def afr_loss(logits: Tensor, y: Tensor, weights: Tensor, head: nn.Linear, w0: Tensor, b0: Tensor,
             reg: float) -> Tensor:
    """sum_i w_i CE_i + lambda (||W - W0||^2 + ||b - b0||^2): the weighted risk and the pull to the ERM head."""
    ce = F.cross_entropy(logits, y, reduction="none")
    return (weights * ce).sum() + reg * ((head.weight - w0).pow(2).sum() + (head.bias - b0).pow(2).sum())


def fit_head(head: nn.Linear, w0: Tensor, b0: Tensor, feats: Tensor, y: Tensor, weights: Tensor, reg: float,
             lr: float, steps: int, grad_clip: float, after_step: Callable[[], None] | None = None) -> None:
    """Reset `head` to (w0, b0), then `steps` full-batch SGD steps on `afr_loss` (the official stage 2)."""
    with torch.no_grad():
        head.weight.copy_(w0)
        head.bias.copy_(b0)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
    with torch.enable_grad():
        for _ in range(steps):
            loss = afr_loss(head(feats), y, weights, head, w0, b0, reg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(head.parameters(), grad_clip)
            optimizer.step()
            if after_step is not None:
                after_step()


@ALGORITHMS.register("afr")
class AFR(Algorithm):
    """AFR (Automatic Feature Reweighting): ERM on part of train, then heads retrained on the rest, reweighted.

    Reference: Qiu, Potapczynski, Izmailov & Wilson, "Simple and Fast Group Robustness by Automatic Feature
    Reweighting", ICML 2023; its train_embeddings.py, losses/__init__.py and notebooks (docs/methods.md#afr).
    The training split is split once at random (`split_seed`): stage 1 (the main loop) is the default update
    (ERM with any --aux terms) for train.epochs passes over the `erm_fraction` part only, the schedule sized
    for it. Stage 2 (`after_training`), per task, on the frozen pooled features of the reweighting part (eval
    mode, no augmentation): p_i = the last-epoch ERM model's probability of the true class,
    w_i = exp(-gamma p_i) [/ n_{y_i}] normalised to sum 1, and the head, started from the ERM head
    (W0, b0), takes `epochs` full-batch SGD steps on sum_i w_i CE_i + lambda ||(W, b) - (W0, b0)||^2.
    Over the grids of gamma and lambda the fit with the best worst-class accuracy on val is kept (ties:
    the first). Uses no group labels, neither in training nor for tuning (val class labels only).
    """

    HParams = AFRHParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.erm_examples: int | None = None  # size of the ERM part; sizes the schedule (checkpointed)
        self.chosen: dict[str, tuple[float, float]] = {}  # per task, (gamma, lambda) of the kept fit

    @classmethod
    def check(cls, name: str, info: DataInfo, objectives: tuple[str, ...]) -> None:
        refuse_head_objectives(name, objectives)

    def split(self, n: int) -> tuple[Tensor, Tensor]:
        """(ERM, reweighting) indices of the n training examples."""
        return erm_split(n, self.hparams.erm_fraction, self.hparams.split_seed)

    def _size_schedule(self) -> None:
        """The schedule spans train.epochs passes over the ERM part."""
        assert self.erm_examples is not None
        self.total_steps = self.train_hp.epochs * steps_per_epoch(self.erm_examples, self.train_hp.batch_size)

    def setup(self, train: TensorSplit) -> None:
        self.erm_examples = len(self.split(len(train))[0])
        self._size_schedule()

    def sampler_repeats(self, train: TensorSplit) -> Tensor:
        """One copy of each ERM-part example, none of the reweighting part: stage 1 never sees the latter."""
        repeats = torch.zeros(len(train), dtype=torch.long)
        repeats[self.split(len(train))[0]] = 1
        return repeats.to(train.g.device)

    def after_training(self, val: TensorSplit) -> dict[str, Any]:
        train = self.train_split
        if train is None:
            raise RuntimeError("AFR: after_training needs train_split (set by the runner)")
        rw = self.split(len(train))[1].to(train.g.device)
        feats, val_feats = pooled_features(self, train, rw), pooled_features(self, val)
        for task, n_classes in self.info.tasks.items():
            y = train.y[task][rw]
            keep = y >= 0
            if bool(keep.any()):
                self.chosen[task] = self.reweight_head(task, feats[keep], y[keep], val_feats, val.y[task], n_classes)
        # Stage 2 fit no val data (val chose gamma, as a protocol would): the runner evaluates all of val, with
        # its group labels, and records the choice beside it.
        one = len(self.info.tasks) == 1
        return {f"afr/{name}" + ("" if one else f"/{task}"): value for task, pair in self.chosen.items()
                for name, value in zip(("gamma", "lambda"), pair)}

    def reweight_head(self, task: str, feats: Tensor, y: Tensor, val_feats: Tensor, val_y: Tensor,
                      n_classes: int) -> tuple[float, float]:
        """Fit the task's head for every (gamma, lambda) of the grids; keep the best by val worst-class accuracy."""
        h, head = self.hparams, self.model.heads[task]
        w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()
        with torch.no_grad():
            p_true = head(feats).softmax(1).gather(1, y[:, None]).squeeze(1)  # of the ERM head
        grid = [(g, r) for g in h.gamma for r in h.reg]
        tune = len(grid) > 1 and bool((val_y >= 0).any())
        best: tuple[float, float, float, Tensor, Tensor] | None = None
        for gamma, reg in grid:
            weights = afr_weights(p_true, y, gamma, h.balance_classes, n_classes)
            fit_head(head, w0, b0, feats, y, weights, reg, h.lr, h.epochs, h.grad_clip, self.model.post_step)
            with torch.no_grad():
                score = worst_class_accuracy(head(val_feats), val_y) if tune else 0.0
            if best is None or score > best[0]:
                best = (score, gamma, reg, head.weight.detach().clone(), head.bias.detach().clone())
        assert best is not None
        with torch.no_grad():
            head.weight.copy_(best[3])
            head.bias.copy_(best[4])
        return best[1], best[2]

    def extra_state(self) -> dict[str, Any]:
        return {} if self.erm_examples is None else {"erm_examples": self.erm_examples}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "erm_examples" in state:
            self.erm_examples = int(state["erm_examples"])
            self._size_schedule()
