"""Shared helpers of last-layer retraining (CRT family, AFR): frozen features, worst-class accuracy, schedules."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..data.base import TensorSplit
from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import Algorithm


def refuse_head_objectives(name: str, objectives: tuple[str, ...]) -> None:
    """ConfigError if an objective replaces the linear task heads that last-layer retraining refits."""
    heads = [o for o in objectives if OBJECTIVES.get(o).provides_heads]
    if heads:
        raise ConfigError(f"{name} retrains the linear task heads on the pooled features, but objective "
                          f"'{heads[0]}' replaces those heads with its own; use erm with --aux {heads[0]}, or "
                          f"{name} without it")


@torch.no_grad()
def pooled_features(algo: Algorithm, split: TensorSplit, idx: Tensor | None = None) -> Tensor:
    """Pooled backbone features of split[idx] in eval mode, without augmentation; float32 on the split's device."""
    algo.model.eval()
    idx = torch.arange(len(split), device=split.g.device) if idx is None else idx.to(split.g.device)
    bs, out = algo.train_hp.eval_batch_size, []
    for start in range(0, len(idx), bs):
        with algo._ctx():
            out.append(algo.model(split.inputs(idx[start:start + bs]), heads=False).pooled.float())
    if not out:
        return torch.zeros(0, algo.model.backbone.out_dim, device=split.g.device)
    return torch.cat(out)


def worst_class_accuracy(logits: Tensor, y: Tensor) -> float:
    """The lowest per-class accuracy (recall) over the classes present in `y` (labels >= 0 only)."""
    keep = y >= 0
    correct = (logits[keep].argmax(1) == y[keep]).double()
    return min(float(correct[y[keep] == c].mean()) for c in torch.unique(y[keep]))


def schedule_factor(kind: str, step: int, total: int) -> float:
    """The lr multiplier of `train.scheduler` at `step` of a `total`-step stage, without warm-up."""
    frac = min(1.0, step / max(1, total))
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * frac))
    return 1.0 - frac if kind == "linear" else 1.0


def head_optimizer(algo: Algorithm, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """An optimizer over `params` with the run's settings (train.optimizer, lr, momentum, weight decay groups)."""
    t = algo.train_hp
    groups = algo.decay_groups(params)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=t.lr, eps=t.adam_eps)
