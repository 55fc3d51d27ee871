"""Alpha-balanced focal loss: ERM with per-example cross-entropy down-weighted on well-classified examples."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_mtl.algorithms.base import Algorithm
from robustbench_mtl.data.base import DataInfo
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.hparams import Choice, hp
from robustbench_mtl.types import Batch, Outputs


@dataclass(frozen=True)
class FocalAlphaHParams:
    gamma: float = hp(2.0, Choice((0.5, 1.0, 2.0, 5.0)), ge=0, help="focusing parameter; 0 is plain cross-entropy")
    alpha: float = hp(0.25, Choice((0.25, 0.5, 0.75)), ge=0, le=1,
                      help="weight of class 1 (class 0 gets 1 - alpha); 0.5 weighs both alike (the paper: 0.25)")


def focal_alpha_loss(logits: Tensor, y: Tensor, gamma: float, alpha: float) -> Tensor:
    """-alpha_t (1 - p_t)^gamma log p_t per example, alpha_t = alpha for y = 1 and 1 - alpha for y = 0; 0 where
    the label is missing (-1). The factor is part of the graph, as in the paper (not a detached weight)."""
    logp = F.log_softmax(logits.float(), dim=1).gather(1, y.clamp_min(0).unsqueeze(1)).squeeze(1)
    alpha_t = torch.where(y == 1, alpha, 1 - alpha)
    focal = alpha_t * (1 - logp.exp()).clamp_min(0).pow(gamma) * -logp
    return torch.where(y >= 0, focal, torch.zeros_like(focal))


class FocalAlpha(Algorithm):
    """Alpha-balanced focal loss: mean of alpha_t (1 - p_t)^gamma CE per example; binary tasks; composes with --aux.

    Reference: Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), eq. 5, the alpha-balanced form
    (robustbench-mtl's own `focal` is eq. 4, without alpha, as SubpopBench). Easy examples (p_t near 1)
    contribute little, and alpha shifts weight between the two classes, without group labels.
    """

    HParams = FocalAlphaHParams
    uses_train_groups = False

    @classmethod
    def check(cls, name: str, info: DataInfo, objectives: tuple[str, ...]) -> None:
        wide = [t for t, n in info.tasks.items() if n != 2]
        if wide:
            raise ConfigError(f"{name} weighs class 1 by alpha and class 0 by 1 - alpha, so it needs binary tasks; "
                              f"task '{wide[0]}' of dataset '{info.name}' has {info.tasks[wide[0]]} classes; use "
                              f"focal there")

    def task_losses(self, out: Outputs, batch: Batch) -> Tensor:
        h = self.hparams
        losses = [focal_alpha_loss(logits, batch.y[task], h.gamma, h.alpha) for task, logits in out.logits.items()]
        return losses[0] if len(losses) == 1 else torch.stack(losses).sum(0)
