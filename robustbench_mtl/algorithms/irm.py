"""IRM (IRMv1): per-environment risks plus the squared gradient of each risk wrt a dummy logit scale."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..hparams import Choice, LogUniform, hp
from ..registry import ALGORITHMS
from ..types import Batch, Outputs
from ._envs import AnnealedPenalty, env_masks


@dataclass(frozen=True)
class IRMHParams:
    penalty_weight: float = hp(1e4, LogUniform(1e-1, 1e5),
                               ge=0, help="lambda after the anneal step (reference code default 1e4; its tuned "
                                    "Colored-MNIST value is 91257; space = DomainBed's 10^U(-1,5))")
    anneal_steps: int = hp(100, Choice((0, 10, 100, 190, 500, 1000)),
                           ge=0, help="updates with lambda = 1 before switching to penalty_weight (reference 100, tuned 190)")
    rescale: bool = hp(True, help="divide the whole loss by lambda when lambda > 1 (reference code)")
    reset_optimizer: bool = hp(True, help="clear the optimizer state (e.g. Adam moments) at the anneal step "
                                          "(DomainBed); the lr schedule continues")


def irm_terms(logits: dict[str, Tensor], y: dict[str, Tensor], e: Tensor) -> tuple[Tensor, Tensor]:
    """(mean_e R^e, mean_e P^e) with P^e = sum_t (d/dw R^e_t(w * logits_t) at w = 1)^2.

    One dummy scale per task on that task's logits (docs/methods.md#irm, multi-task use [RECON]), so the penalty is
    sum_t mean_e P_{t,e}; R^e is the mean over env e's examples of the per-example loss summed over tasks (missing
    labels count 0), as `Algorithm.task_losses`. With one task this is IRMv1 exactly.
    """
    device = next(iter(logits.values())).device
    scales = [torch.ones((), device=device, requires_grad=True) for _ in logits]
    per_example = torch.stack([F.cross_entropy(z.float() * s, y[t], ignore_index=-1, reduction="none")
                               for (t, z), s in zip(logits.items(), scales)]).sum(0)
    risks, penalties = [], []
    for mask in env_masks(e):
        risk = per_example[mask].mean()
        grads = torch.autograd.grad(risk, scales, create_graph=True)  # create_graph: the penalty is trained
        risks.append(risk)
        penalties.append(torch.stack([g.pow(2) for g in grads]).sum())
    return torch.stack(risks).mean(), torch.stack(penalties).mean()


@ALGORITHMS.register("irm")
class IRM(AnnealedPenalty):
    """IRM (IRMv1 penalty over the batch's environments); composes with --aux objectives.

    Reference: Arjovsky et al. 2019, "Invariant Risk Minimization"; facebookresearch/InvariantRiskMinimization
    colored_mnist/main.py (docs/methods.md#irm). loss = mean_e R^e + lambda(step) * mean_e ||grad_{w=1} R^e(w*logits)||^2
    (+ weighted --aux terms), lambda = 1 before `anneal_steps` updates, then `penalty_weight`; with
    `rescale` the whole loss is divided by lambda when lambda > 1. Environments are the batch's `e` ids:
    the dataset's declared environments, or, where it declares none, its training groups (SubpopBench uses the
    spurious attribute instead), which makes IRM a training-group-label user there. See docs/methods.md#irm.
    """

    HParams = IRMHParams
    uses_environments = True

    penalty_key = "irm_penalty"

    def penalty_terms(self, out: Outputs, batch: Batch) -> tuple[Tensor, Tensor]:
        return irm_terms(out.logits, batch.y, batch.e)
