"""V-REx: mean environment risk plus beta times the variance of the environment risks."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..hparams import Choice, LogUniform, hp
from ..registry import ALGORITHMS
from ..types import Batch, Outputs
from ._envs import AnnealedPenalty, env_risks


@dataclass(frozen=True)
class VRExHParams:
    penalty_weight: float = hp(10.0, LogUniform(1e-1, 1e5),
                               ge=0, help="beta after the anneal step (DomainBed default 10, space 10^U(-1,5))")
    anneal_steps: int = hp(500, Choice((0, 10, 100, 500, 1000)),
                           ge=0, help="updates with beta = 1 before switching to penalty_weight (DomainBed default 500)")
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
class VREx(AnnealedPenalty):
    """V-REx: variance of per-environment risks as a penalty; composes with --aux objectives.

    Reference: Krueger et al. 2021, "Out-of-Distribution Generalization via Risk Extrapolation (REx)", ICML;
    DomainBed's VREx. loss = mean_e R^e + beta(step) * Var_e(R^e) (+ weighted --aux terms), beta = 1 before
    `anneal_steps` updates, then `penalty_weight`; with `rescale` the loss is divided by beta when beta > 1.
    Environments are the batch's `e` ids: the dataset's declared environments, or, where it declares none,
    its training groups (SubpopBench uses the spurious attribute instead), which makes V-REx a
    training-group-label user there. See docs/methods.md#vrex.
    """

    HParams = VRExHParams
    uses_environments = True

    penalty_key = "vrex_penalty"

    def penalty_terms(self, out: Outputs, batch: Batch) -> tuple[Tensor, Tensor]:
        return vrex_terms(self.task_losses(out, batch), batch.e)
