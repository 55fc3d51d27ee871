"""Shared machinery of the mixing algorithms (mixup, LISA): mix plans, mixed inputs or features, the mixed loss."""
from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model import Model
from ..types import Batch, Outputs
from .base import Algorithm


@dataclass
class MixPlan:
    """The rows of a mixed batch, as batch positions.

    Without boxes, row r is lam[r] * example first[r] + (1 - lam[r]) * example second[r]. With boxes (CutMix,
    images only), row r is example first[r] with the rectangle boxes[r] = (top, bottom, left, right) (rows
    top..bottom-1, columns left..right-1) taken from example second[r], and lam[r] is the share of first[r]'s
    pixels. Either way row r's loss is lam[r] * CE(y[first[r]]) + (1 - lam[r]) * CE(y[second[r]]).
    """

    first: Tensor
    second: Tensor
    lam: Tensor
    boxes: Tensor | None = None

    def __len__(self) -> int:
        return int(self.first.shape[0])

    def take(self, idx: Tensor) -> "MixPlan":
        """The rows at `idx`."""
        return MixPlan(self.first[idx], self.second[idx], self.lam[idx],
                       None if self.boxes is None else self.boxes[idx])

    @staticmethod
    def cat(plans: list["MixPlan"]) -> "MixPlan":
        """The rows of `plans` one after the other (all with boxes, or none)."""
        boxes = [p.boxes for p in plans]
        return MixPlan(torch.cat([p.first for p in plans]), torch.cat([p.second for p in plans]),
                       torch.cat([p.lam for p in plans]),
                       None if any(b is None for b in boxes) else torch.cat(boxes))  # type: ignore[arg-type]


def sample_beta(alpha: float, n: int) -> Tensor:
    """n draws of Beta(alpha, alpha) from torch's global generator (CPU, float32); alpha = 0 gives 1 (no mixing),
    as SubpopBench's `mixup_data`. The runner seeds and checkpoints that generator, so runs resume exactly."""
    if alpha <= 0:
        return torch.ones(n)
    return torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha))).sample((n,))


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """[M, 1, H, W] bool: True inside each row's (top, bottom, left, right) rectangle."""
    rows = torch.arange(height, device=boxes.device).view(1, height, 1)
    cols = torch.arange(width, device=boxes.device).view(1, 1, width)
    top, bottom, left, right = (boxes[:, k].view(-1, 1, 1) for k in range(4))
    return ((rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)).unsqueeze(1)


def mix_rows(x: Tensor, plan: MixPlan) -> Tensor:
    """The mixed rows of `x` (inputs [B, ...] or features [B, D]) that `plan` describes."""
    first, second = plan.first.to(x.device), plan.second.to(x.device)
    a, b = x[first], x[second]
    if plan.boxes is not None:
        inside = box_masks(plan.boxes.to(x.device), x.shape[-2], x.shape[-1])
        return torch.where(inside, b, a)
    lam = plan.lam.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return lam * a + (1 - lam) * b


def mixed_losses(logits: dict[str, Tensor], y: dict[str, Tensor], plan: MixPlan) -> Tensor:
    """Per row r, summed over tasks: lam_r * CE(logits_r, y[first_r]) + (1 - lam_r) * CE(logits_r, y[second_r]).

    A missing label (-1) makes its term 0, so only the partner's label (weighted by its share) trains that row.
    """
    total: Tensor | None = None
    for task, z in logits.items():
        lam = plan.lam.to(z.device, torch.float32)
        ce = [F.cross_entropy(z.float(), y[task][idx.to(z.device)], ignore_index=-1, reduction="none")
              for idx in (plan.first, plan.second)]
        term = lam * ce[0] + (1 - lam) * ce[1]
        total = term if total is None else total + term
    assert total is not None, "mixed_losses needs the logits of at least one task"
    return total


def head_logits(model: Model, out: Outputs) -> dict[str, Tensor]:
    """The task logits for a representation `out` (as `Model.forward` computes them after the backbone)."""
    if model.head_source:
        return model.objectives[model.head_source].task_logits(out)
    return {t: head(out.pooled) for t, head in model.heads.items()}


class MixingAlgorithm(Algorithm, abc.ABC):
    """Trains on mixed pairs of the batch's examples: `plan` says which; None is a plain ERM step.

    Float inputs (images, tables) are mixed themselves. Token ids cannot be interpolated, so for them the pooled
    representation is mixed and read by the heads (SubpopBench's text Mixup and LISA mix the featurizer's
    output). Loss = mean over the plan's rows of `mixed_losses`. --aux objectives read the batch's own, unmixed
    end-task pass (with its own labels and environments): an extra forward pass when inputs are mixed.
    """

    @abc.abstractmethod
    def plan(self, batch: Batch) -> MixPlan | None:
        """The mixed rows of this step, or None to train on the batch unmixed."""

    def compute_loss(self, batch: Batch, aux_batch: Batch | None) -> tuple[Tensor, dict[str, Tensor]]:
        plan = self.plan(batch)
        if plan is None:
            return super().compute_loss(batch, aux_batch)
        out: Outputs | None = None
        if batch.x.is_floating_point():
            logits = self.model(mix_rows(batch.x, plan)).logits
            if self.model.objectives:
                out = self.model(batch.x)
        else:  # token ids: mix the pooled representation
            out = self.model(batch.x, heads=False)
            logits = head_logits(self.model, Outputs(mix_rows(out.pooled, plan)))
            out.logits = head_logits(self.model, out) if self.model.objectives else {}
        task = mixed_losses(logits, batch.y, plan).mean()
        if not self.model.objectives:
            return task, {"loss_task": task}
        assert out is not None
        total, parts = self.with_objectives(task, batch, aux_batch, out)
        return total, {"loss_task": task, **parts}
