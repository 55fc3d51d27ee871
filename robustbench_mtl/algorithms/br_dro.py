"""BR-DRO (reimplementation): DRO against a bitrate-constrained (VIB) adversary on detached features."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..errors import RunFailedError
from ..hparams import Choice, hp
from ..registry import ALGORITHMS
from ..types import Batch
from ._group_weights import weighted_mean
from .base import Algorithm


@dataclass(frozen=True)
class BRDROHParams:
    alpha: float = hp(0.2, Choice((0.1, 0.2, 0.5)), gt=0, le=1, help="target mean adversary weight (CVaR-style group mass)")
    beta: float = hp(0.01, Choice((1e-3, 1e-2, 1e-1, 1.0)), ge=0, help="weight of the adversary's KL (bitrate) term")
    mass_weight: float = hp(10.0, ge=0, help="lambda_alpha: weight of (mean w - alpha)^2 in the adversary objective")
    code_dim: int = hp(32, ge=1, help="d_u: dimension of the adversary's stochastic code u")
    adv_lr_mult: float = hp(10.0, gt=0, help="adversary lr = learner lr x this")
    erm_mix: float = hp(0.0, Choice((0.0, 0.5)), ge=0, le=1, help="learner loss = (1 - mix) * reweighted + mix * mean loss")


class VIBAdversary(nn.Module):
    """q(u|z) = N(mu(z), diag sigma^2(z)); w(x, y) = sigmoid(<v_y, u> + b_y); returns (w [B], mean KL)."""

    def __init__(self, in_dim: int, code_dim: int, n_classes: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(in_dim, 2 * code_dim)
        self.v = nn.Parameter(torch.zeros(n_classes, code_dim))
        self.b = nn.Parameter(torch.zeros(n_classes))

    def forward(self, z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(z).chunk(2, dim=1)
        logvar = logvar.clamp(-10, 10)
        u = mu + (0.5 * logvar).exp() * torch.randn_like(mu)  # reparameterized sample
        w = torch.sigmoid((self.v[y] * u).sum(1) + self.b[y])
        kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(1).mean()
        return w, kl


@ALGORITHMS.register("br_dro")
class BRDRO(Algorithm):
    """BR-DRO (reimplementation, not the official method): reweighting by a bitrate-constrained adversary.

    Reference: Setlur et al. 2023, "Bitrate-Constrained DRO", ICLR; no public code exists, so this follows
    the harness's low-confidence reconstruction (docs/methods.md#br_dro [RECON/MEM]); report results as "BR-DRO
    (reimplementation)", never as the paper's. Per update: the adversary (a VIB head on the learner's
    detached pooled features, conditioned on the first task's label) takes one Adam step maximizing
    sum w l / sum w - beta KL(q(u|z) || N(0, I)) - mass_weight (mean w - alpha)^2 on the detached losses;
    then the learner takes one step on sum w l / sum w with w redrawn from the updated adversary and
    detached (mixed with the mean loss by `erm_mix`), plus weighted --aux terms. Needs no group labels.
    The adversary is a submodule (its weights are in the checkpoint); its optimizer state is extra_state.
    """

    HParams = BRDROHParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        h, device = self.hparams, next(self.model.parameters()).device
        self.task = next(iter(self.info.tasks))  # the adversary conditions on the first (end) task's label
        self.adversary = VIBAdversary(self.model.backbone.out_dim, h.code_dim, self.info.tasks[self.task]).to(device)
        self.adv_optimizer = torch.optim.Adam(self.adversary.parameters(), lr=self.train_hp.lr * h.adv_lr_mult)

    def optimized_parameters(self) -> Iterator[nn.Parameter]:
        """The learner's parameters only: the adversary has its own optimizer (gradient ascent)."""
        return (p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("adversary."))

    def update(self, batch: Batch, aux_batch: Batch | None = None) -> dict[str, float]:
        h = self.hparams
        if not self.model.training:
            self.model.train()
        with self._ctx():
            out = self.model(batch.x)
            losses = self.task_losses(out, batch)
            terms = self.objective_terms(batch, aux_batch, out)
        z, y = out.pooled.detach().float(), batch.y[self.task].clamp_min(0)
        w, kl = self.adversary(z, y)
        adv_objective = weighted_mean(losses.detach(), w) - h.beta * kl - h.mass_weight * (w.mean() - h.alpha) ** 2
        self.adv_optimizer.zero_grad(set_to_none=True)
        (-adv_objective).backward()  # gradient ascent for the max player; touches only the adversary
        self.adv_optimizer.step()
        with torch.no_grad():
            w_bar, _ = self.adversary(z, y)
        task = (1 - h.erm_mix) * weighted_mean(losses, w_bar) + h.erm_mix * losses.mean()
        total = task
        for name, term in terms.items():
            total = total + self.model.objectives[name].weight * term
        parts = {"loss_task": task, "adv_objective": adv_objective, "adv_kl": kl, "adv_w_mean": w_bar.mean(),
                 **{f"loss_{n}": t for n, t in terms.items()}}
        values = torch.stack([total.detach().float(), *(p.detach().float() for p in parts.values())]).tolist()
        if not all(math.isfinite(v) for v in values):
            raise RunFailedError("non-finite loss in BR-DRO; lower train.lr, adv_lr_mult or set train.grad_clip")
        self.step(total)
        return dict(zip(["loss", *parts], values))

    def extra_state(self) -> dict[str, Any]:
        return {"adv_optimizer": self.adv_optimizer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "adv_optimizer" in state:
            self.adv_optimizer.load_state_dict(state["adv_optimizer"])
