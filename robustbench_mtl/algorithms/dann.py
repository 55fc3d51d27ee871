"""DANN: an environment discriminator on the shared representation, trained through a gradient-reversal layer."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hparams import Choice, hp
from ..registry import ALGORITHMS
from ..types import Batch
from ._counting import CountsUpdates

HIDDEN = 256  # discriminator width: rep_dim -> 256 -> 256 -> |E|
GAMMA = 10.0  # steepness of the reversal schedule (Ganin et al.)


@dataclass(frozen=True)
class DANNHParams:
    domain_weight: float = hp(1.0, Choice((0.01, 0.1, 1.0)), ge=0,
                              help="lambda_d, the weight of the discriminator's cross-entropy (Ganin et al.: 1)")


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, coeff: float) -> Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.coeff * grad, None


def reverse_gradient(x: Tensor, coeff: float) -> Tensor:
    """Identity forward; the backward multiplies the gradient by -coeff."""
    return _ReverseGradient.apply(x, coeff)


def reversal_coefficient(progress: float) -> float:
    """2 / (1 + exp(-10 p)) - 1 at training progress p in [0, 1]: 0 at the start, about 1 from p = 0.5 on."""
    return 2.0 / (1.0 + math.exp(-GAMMA * min(max(progress, 0.0), 1.0))) - 1.0


@ALGORITHMS.register("dann")
class DANN(CountsUpdates):
    """DANN: the representation is trained to fool an environment discriminator (gradient reversal).

    Reference: Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016; its multi-task use as
    an MT-CRL baseline (Hu et al., NeurIPS 2022) is a reconstruction (docs/methods.md#dann). A discriminator
    MLP (rep_dim -> 256 -> ReLU -> 256 -> ReLU -> |E|) reads the pooled representation through a
    gradient-reversal layer whose coefficient is 2/(1+exp(-10p))-1, p = updates / total steps; loss =
    sum_t R_t + domain_weight * CE(D(GRL(z)), e) (+ weighted --aux terms), one optimizer for all. Environments
    are the batch's `e` ids: the dataset's declared environments or, where it declares none, its training
    groups (then a training-group-label user). The update count is checkpointed.
    """

    HParams = DANNHParams
    uses_environments = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Environments index the declared names, or the groups where the dataset declares none (labels.py).
        n_envs = len(self.info.environment_names or self.info.group_names)
        dim = self.model.backbone.out_dim
        device = next(self.model.parameters()).device
        self.discriminator = nn.Sequential(nn.Linear(dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                                           nn.Linear(HIDDEN, n_envs)).to(device)

    def reversal(self) -> float:
        return reversal_coefficient(self.updates / max(1, self.total_steps))

    def compute_loss(self, batch: Batch, aux_batch: Batch | None) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.model(batch.x)
        task = self.aggregate(self.task_losses(out, batch), batch)
        scores = self.discriminator(reverse_gradient(out.pooled, self.reversal()))
        domain = F.cross_entropy(scores.float(), batch.e, ignore_index=-1)
        total, parts = self.with_objectives(task + self.hparams.domain_weight * domain, batch, aux_batch, out)
        return total, {"loss_task": task, "loss_domain": domain, **parts}

