"""GroupDRO: online worst-group reweighting with an exponentiated-gradient adversary over training groups."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.base import TensorSplit
from ..hparams import Choice, hp
from ..registry import ALGORITHMS
from ..types import Batch
from ._group_weights import inverse_frequency
from .base import Algorithm


@dataclass(frozen=True)
class GroupDROHParams:
    eta: float = hp(0.01, Choice((0.001, 0.01, 0.1)),
                    ge=0, help="step size of the group weights q (original code's robust_step_size 0.01; the released "
                         "MTL code uses 0.1, fixed)")
    adjustment: float = hp(0.0, Choice((0.0, 1.0, 2.0, 3.0, 4.0, 5.0)),
                           ge=0, help="generalization adjustment C: the q update sees loss_g + C/sqrt(n_g) (0 = off)")
    group_balanced: bool = hp(True, help="sample training examples with probability 1/n_g (--reweight_groups, used "
                                         "by every README command of the original and the MTL code)")


@ALGORITHMS.register("group_dro")
class GroupDRO(Algorithm):
    """GroupDRO: minimise a q-weighted sum of per-group losses, q updated by exponentiated gradient.

    Reference: Sagawa et al., "Distributionally Robust Neural Networks for Group Shifts", ICLR 2020
    (kohpangwei/group_DRO loss.py); the released MTL code's variant (docs/methods.md#group_dro). Per step, with
    l_g the mean end-task loss of group g over the batch: for every group *present* in the batch
    q_g <- q_g * exp(eta * (l_g + C / sqrt(n_g))), absent groups keep their q; then q /= sum(q); the loss
    is sum over present groups of q_g * l_g with q detached (the MTL code's update; the original code
    updates absent groups with l_g = 0, which is the same unless C > 0). n_g are the training group
    counts. The adjustment is added when C > 0 (with one scalar C this is the original's "only if all
    adj > 0"); it enters the q update only, not the returned loss (in the original it also shifts the
    loss by a constant, which changes no gradient). No loss normalisation. q is checkpointed.
    """

    HParams = GroupDROHParams
    uses_train_groups = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        n_groups = len(self.info.group_names)
        device = next(self.model.parameters()).device
        self.q = torch.full((n_groups,), 1.0 / n_groups, device=device)
        counts = torch.tensor(self.info.train_group_counts, dtype=torch.float32, device=device)
        c = self.hparams.adjustment
        # Groups without training examples never appear in a batch; their adjustment is irrelevant.
        self.adj = c / counts.clamp_min(1).sqrt() if c > 0 else torch.zeros_like(counts)

    def sampler_weights(self, train: TensorSplit) -> Tensor | None:
        return inverse_frequency(train.g, self.info.train_group_counts) if self.hparams.group_balanced else None

    def aggregate(self, losses: Tensor, batch: Batch) -> Tensor:
        valid = batch.g >= 0
        if not bool(valid.any()):
            raise ValueError("group_dro needs training group ids in its batches")
        # A one-hot matmul, not index_add: deterministic on CUDA as well.
        onehot = F.one_hot(batch.g[valid], len(self.q)).to(losses.dtype)
        counts = onehot.sum(0)
        group_loss = (onehot.t() @ losses[valid]) / counts.clamp_min(1)
        present = counts > 0
        with torch.no_grad():
            step = torch.exp(self.hparams.eta * (group_loss.detach() + self.adj))
            self.q = torch.where(present, self.q * step, self.q)
            self.q = self.q / self.q.sum()
        return (self.q * group_loss * present).sum()

    def extra_state(self) -> dict[str, Any]:
        return {"q": self.q.detach().cpu().clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "q" in state:
            self.q = state["q"].to(self.q.device, self.q.dtype)
