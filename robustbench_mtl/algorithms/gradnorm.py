"""GradNorm: learnable task weights trained to balance the tasks' weighted gradient norms by training rate."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..hparams import Choice, hp
from ..registry import ALGORITHMS
from ..types import Batch
from ._surgery import GradientSurgery
from ._weighting import without_decay


@dataclass(frozen=True)
class GradNormHParams:
    alpha: float = hp(1.5, Choice((0.5, 1.0, 1.5, 2.0)), ge=0,
                      help="asymmetry alpha: how strongly slow tasks are pulled up (LibMTL's default 1.5; the space "
                           "is the harness's)")


def gradnorm_targets(grad_norms: Tensor, losses: Tensor, initial: Tensor, alpha: float) -> Tensor:
    """The target norms [T]: mean_j G_j * r_t^alpha, with G_t the weighted gradient norms [T], r_t = L~_t / mean_j
    L~_j the relative inverse training rate and L~_t = L_t / L_t(0) (losses and initial losses [T]); detached."""
    ratios = losses / initial.clamp_min(1e-12)
    return (grad_norms.mean() * (ratios / ratios.mean()) ** alpha).detach()


def gradnorm_loss(weights: Tensor, grad_norms: Tensor, losses: Tensor, initial: Tensor, alpha: float) -> Tensor:
    """L_grad = sum_t |G_t - target_t| with G_t = w_t |g_t| (weights [T] with graph, unweighted gradient norms [T]);
    the targets are constants, so its gradient reaches only the weights."""
    weighted = weights * grad_norms.detach()
    return (weighted - gradnorm_targets(weighted, losses, initial, alpha)).abs().sum()


@ALGORITHMS.register("gradnorm")
class GradNorm(GradientSurgery):
    """GradNorm: shared gradient sum_t w_t g_t, with w = T softmax(theta) trained to balance the weighted norms.

    Reference: Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss
    Balancing in Deep Multitask Networks", ICML 2018; LibMTL `LibMTL/weighting/GradNorm.py`
    (docs/methods.md#gradnorm). On the backbone's parameters (all of them, as LibMTL; not only the paper's last
    shared layer): g_t = grad of task t's mean loss R_t (one backward each), G_t = w_t |g_t|; L_grad = sum_t
    |G_t - mean_j G_j r_t^alpha| with the target constant, r_t = L~_t / mean_j L~_j and L~_t = R_t / R_t(0), R_t(0)
    the task losses of the first update (checkpointed). The weights w = T softmax(theta) always sum to T;
    theta (a parameter of this algorithm, checkpointed with it, without weight decay) gets L_grad's gradient
    and is stepped by the run's optimizer with the model; the shared gradient is sum_t w_t g_t with the weights
    before that step. Heads keep their ordinary (unweighted) gradients; --aux objectives add their ordinary
    gradient outside. Each step reports the weights as `weight_<task>`. Needs at least 2 tasks.
    """

    HParams = GradNormHParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        device = next(self.model.parameters()).device
        self.theta = nn.Parameter(torch.zeros(len(self.info.tasks), device=device))  # w = T softmax(theta)
        self.initial_losses: Tensor | None = None  # R_t(0); checkpointed

    def decay_groups(self, params: list[nn.Parameter]) -> list[dict[str, Any]]:
        return without_decay(super().decay_groups(params), [self.theta])

    def weights(self) -> Tensor:
        """w = T softmax(theta) [T], with graph."""
        return len(self.theta) * torch.softmax(self.theta, 0)

    def compute_loss(self, batch: Batch, aux_batch: Batch | None) -> tuple[Tensor, dict[str, Tensor]]:
        total, parts = super().compute_loss(batch, aux_batch)
        return total, {**parts, **{f"weight_{t}": w for t, w in zip(self.info.tasks, self.weights().detach())}}

    def weighting_loss(self, grads: Tensor, losses: Tensor) -> Tensor:
        if self.initial_losses is None:
            self.initial_losses = losses.clone()
        return gradnorm_loss(self.weights(), grads.norm(dim=1), losses, self.initial_losses, self.hparams.alpha)

    def combine(self, grads: Tensor) -> Tensor:
        return self.weights().detach().to(grads.dtype) @ grads

    def extra_state(self) -> dict[str, Any]:
        return {"initial_losses": [] if self.initial_losses is None else self.initial_losses.detach().cpu().tolist()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        initial = state.get("initial_losses") or []
        self.initial_losses = torch.tensor(initial, device=self.theta.device) if initial else None
