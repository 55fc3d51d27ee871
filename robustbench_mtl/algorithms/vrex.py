"""V-REx: mean environment risk plus beta times the variance of the environment risks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..hparams import Choice, LogUniform, hp
from ..registry import ALGORITHMS
from ..types import Batch
from ._envs import annealed_weight, env_risks
from .base import Algorithm


@dataclass(frozen=True)
class VRExHParams:
    penalty_weight: float = hp(10.0, LogUniform(1e-1, 1e5),
                               help="beta after the anneal step (DomainBed default 10, space 10^U(-1,5))")
    anneal_steps: int = hp(500, Choice((0, 10, 100, 500, 1000)),
                           help="updates with beta = 1 before switching to penalty_weight (DomainBed default 500)")
    rescale: bool = hp(True, help="divide the whole loss by beta when beta > 1 (the IRM-derived V-REx "
                                  "Colored-MNIST code; DomainBed does not)")
    reset_optimizer: bool = hp(True, help="clear the optimizer state at the anneal step (DomainBed); "
                                          "the lr schedule continues")


def vrex_terms(losses: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
    """(mean_e R^e, Var_e R^e): the population variance (divide by n_envs) of per-environment mean losses."""
    risks = env_risks(losses, e)
    mean = risks.mean()
    return mean, (risks - mean).pow(2).mean()


@ALGORITHMS.register("vrex")
class VREx(Algorithm):
    """V-REx: variance of per-environment risks as a penalty; composes with --aux objectives.

    Reference: Krueger et al. 2021, "Out-of-Distribution Generalization via Risk Extrapolation (REx)", ICML;
    DomainBed's VREx. loss = mean_e R^e + beta(step) * Var_e(R^e) (+ weighted --aux terms), beta = 1 before
    `anneal_steps` updates, then `penalty_weight`; with `rescale` the loss is divided by beta when beta > 1.
    Environments are the batch's `e` ids; a dataset without environments has one (e = 0), where the
    variance is 0 and V-REx is ERM. Training group labels are not used.
    """

    HParams = VRExHParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.updates = 0  # drives the anneal schedule; checkpointed

    def compute_loss(self, batch: Batch, aux_batch: Batch | None) -> tuple[Tensor, dict[str, Tensor]]:
        h = self.hparams
        out = self.model(batch.x)
        risk, variance = vrex_terms(self.task_losses(out, batch), batch.e)
        beta = annealed_weight(self.updates, h.anneal_steps, h.penalty_weight)
        total = risk + beta * variance
        terms = self.objective_terms(batch, aux_batch, out)
        for name, term in terms.items():
            total = total + self.model.objectives[name].weight * term
        if h.rescale and beta > 1:
            total = total / beta
        return total, {"loss_task": risk, "vrex_penalty": variance, **{f"loss_{n}": t for n, t in terms.items()}}

    def update(self, batch: Batch, aux_batch: Batch | None = None) -> dict[str, float]:
        h = self.hparams
        if h.reset_optimizer and h.anneal_steps > 0 and self.updates == h.anneal_steps:
            self.optimizer.state.clear()  # the penalty's scale jumps: stale moments would mis-scale steps
        losses = super().update(batch, aux_batch)
        self.updates += 1
        return losses

    def extra_state(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))
