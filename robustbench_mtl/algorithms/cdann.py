"""CDANN: DANN whose environment discriminator also reads the class, with class-balanced discriminator loss."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import ALGORITHMS
from ..types import Batch
from .dann import DANN, reverse_gradient


def conditional_input(z: Tensor, y: dict[str, Tensor], embeddings: nn.ModuleDict) -> Tensor:
    """z + sum_t E_t(y_t): each task's class embedding added to the representation; a missing label (-1) adds 0."""
    total = z
    for task, emb in embeddings.items():
        labels = y[task]
        known = (labels >= 0).unsqueeze(1).to(z.dtype)
        total = total + known * emb(labels.clamp_min(0)).to(z.dtype)
    return total


def class_keys(y: dict[str, Tensor]) -> Tensor:
    """One id per distinct label combination (over all tasks, -1 included) in the batch, [B]."""
    return torch.unique(torch.stack(list(y.values()), 1), dim=0, return_inverse=True)[1]


def class_balanced_weights(keys: Tensor) -> Tensor:
    """w_i = 1 / (K n_{k_i}): n_k the batch count of class k, K the number of classes present; sum_i w_i = 1."""
    _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    return 1.0 / (counts[inverse] * len(counts)).float()


@ALGORITHMS.register("cdann")
class CDANN(DANN):
    """CDANN: the discriminator reads GRL(z) + class embedding; its loss is class-balanced (gradient reversal).

    Reference: Li et al., "Deep Domain Generalization via Conditional Invariant Adversarial Networks", ECCV 2018;
    DomainBed's `CDANN` (Gulrajani & Lopez-Paz, ICLR 2021; `domainbed/algorithms.py` AbstractDANN with
    conditional=True, class_balance=True). Built on dann: the same discriminator, reversal layer and schedule
    (docs/methods.md#dann), but the discriminator reads GRL_c(z) + sum_t E_t(y_t) (E_t a learned embedding
    of task t's classes, as DomainBed's `class_embeddings`; a missing label adds nothing), and its
    cross-entropy is sum_i w_i CE_i with w_i = 1 / (K n_{y_i}) over the batch's examples with an environment
    id, classes = label combinations over tasks. Environments as dann (declared, else training groups: then a
    training-group-label user). The update count is checkpointed. See docs/methods.md#cdann.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        dim = self.model.backbone.out_dim
        device = next(self.model.parameters()).device
        self.class_embeddings = nn.ModuleDict({t: nn.Embedding(c, dim) for t, c in self.info.tasks.items()}).to(device)

    def domain_loss(self, z: Tensor, batch: Batch) -> Tensor:
        """The class-balanced discriminator cross-entropy of the examples with an environment id."""
        known = batch.e >= 0
        if not bool(known.any()):  # no environment ids in this batch: nothing to discriminate
            return z.new_zeros((), dtype=torch.float32)
        y = {t: v[known] for t, v in batch.y.items()}
        disc_in = conditional_input(reverse_gradient(z[known], self.reversal()), y, self.class_embeddings)
        ce = F.cross_entropy(self.discriminator(disc_in).float(), batch.e[known], reduction="none")
        return (class_balanced_weights(class_keys(y)) * ce).sum()

    def compute_loss(self, batch: Batch, aux_batch: Batch | None) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.model(batch.x)
        task = self.aggregate(self.task_losses(out, batch), batch)
        domain = self.domain_loss(out.pooled, batch)
        total, parts = self.with_objectives(task + self.hparams.domain_weight * domain, batch, aux_batch, out)
        return total, {"loss_task": task, "loss_domain": domain, **parts}
