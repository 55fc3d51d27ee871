"""EIIL: two training environments inferred to maximise a reference ERM model's IRMv1 penalty, then IRM on them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import copy_state
from ..data.base import TensorSplit
from ..hparams import Choice, hp
from ..loaders import epoch_batches
from ..registry import ALGORITHMS
from ..types import Batch, Outputs
from ._envs import AnnealedPenalty
from .irm import IRMHParams, irm_terms


@dataclass(frozen=True)
class EIILHParams(IRMHParams):
    reference_epochs: int = hp(2, Choice((1, 2, 5, 10)), ge=1,
                               help="ERM epochs of the reference model, in addition to train.epochs (the official "
                                    "CMNIST code trains it as long as the IRM stage)")
    infer_steps: int = hp(10000, ge=1, help="Adam steps on the soft environment assignment (official n_steps 10000)")
    infer_lr: float = hp(1e-3, gt=0, help="Adam lr of the environment inference (official 0.001)")


def scale_gradients(logits: dict[str, Tensor], y: dict[str, Tensor]) -> Tensor:
    """[T, N]: per task and example, d/dw CE(w z_i, y_i) at w = 1 = <softmax(z_i) - onehot(y_i), z_i>;
    0 where the label is missing (< 0)."""
    rows = []
    for task, z in logits.items():
        z, labels = z.float(), y[task]
        g = (z.softmax(1) * z).sum(1) - z.gather(1, labels.clamp_min(0)[:, None]).squeeze(1)
        rows.append(g * (labels >= 0))
    return torch.stack(rows)


def soft_penalty(q: Tensor, grads: Tensor) -> Tensor:
    """The IRMv1 penalty of the soft split (q, 1 - q): mean over the two environments of
    sum_t ((1/N) sum_i q_i(e) g_ti)^2, each environment's risk a q-weighted mean over all N examples (official)."""
    n = grads.shape[1]
    a, b = (grads * q).sum(1) / n, (grads * (1 - q)).sum(1) / n
    return (a.pow(2).sum() + b.pow(2).sum()) / 2


def infer_environments(grads: Tensor, steps: int, lr: float) -> Tensor:
    """Environment ids [N]: Adam ascent of `soft_penalty` over the logits of q (started N(0, 1) from the
    seeded global generator), then 0 where q > 0.5, else 1 (the official thresholding)."""
    logits = torch.randn(grads.shape[1]).to(grads.device).requires_grad_()
    optimizer = torch.optim.Adam([logits], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = -soft_penalty(logits.sigmoid(), grads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return (logits.detach().sigmoid() <= 0.5).long()


@ALGORITHMS.register("eiil")
class EIIL(AnnealedPenalty):
    """EIIL (Environment Inference for Invariant Learning): IRM on two environments inferred from a reference model.

    Reference: Creager, Jacobsen & Zemel, "Environment Inference for Invariant Learning", ICML 2021;
    ecreager/eiil opt_env/utils/opt_utils.py split_data_opt (docs/methods.md#eiil). In `setup` (fresh runs
    only) a reference model trains with plain ERM (end-task loss only) for `reference_epochs`, each epoch
    recorded with "phase": "setup" and never selected. On the training split (eval mode, no augmentation)
    its per-example scale gradients g_ti = d/dw CE(w z_ti, y_ti) at w = 1 give the soft penalty
    P(q) = mean over (q, 1 - q) of sum_t ((1/N) sum_i q_i g_ti)^2; Adam maximises it over the logits of q
    for `infer_steps`, and example i goes to environment 0 if q_i > 0.5, else 1. The model is reset to its
    initial weights and trains IRMv1 (irm's loss, anneal and rescale) with each example's inferred
    environment (batch.idx). The environments are checkpointed, so a resume never repeats the inference.
    Uses no group labels and no declared environments.
    """

    HParams = EIILHParams

    penalty_key = "irm_penalty"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Kept on the CPU: IRM starts from exactly these weights, not from the reference model's.
        self._initial = copy_state(self.model, "cpu")
        self.envs: Tensor | None = None  # [N] inferred environment of each training example

    def setup(self, train: TensorSplit) -> None:
        seed = int(torch.randint(0, 2**62, (1,)))  # from the run's seeded generator: deterministic per run
        for epoch in range(self.hparams.reference_epochs):
            for batch in epoch_batches(train, self.train_hp.batch_size, seed, epoch):
                self.erm_step(batch, "EIIL's reference model")
            self.evaluate_now("setup")
        h = self.hparams
        self.envs = infer_environments(self.reference_gradients(train), h.infer_steps, h.infer_lr)
        self.model.load_state_dict(self._initial)
        self.configure_optimizers()  # no reference-model moments, a fresh schedule

    @torch.no_grad()
    def reference_gradients(self, train: TensorSplit) -> Tensor:
        """`scale_gradients` of the current (reference) model over the training split, [T, N]."""
        bs, logits = self.train_hp.eval_batch_size, {t: [] for t in self.info.tasks}
        for start in range(0, len(train), bs):
            for task, z in self.predict(train.inputs(slice(start, start + bs))).items():
                logits[task].append(z)
        return scale_gradients({t: torch.cat(v) for t, v in logits.items()}, train.y)

    def selectable(self, record: dict[str, Any]) -> bool:
        return record.get("phase") != "setup"  # the reference model is not EIIL's model

    def penalty_terms(self, out: Outputs, batch: Batch) -> tuple[Tensor, Tensor]:
        if self.envs is None:
            raise RuntimeError("eiil: no inferred environments; call setup(train) or load_extra_state first")
        return irm_terms(out.logits, batch.y, self.envs[batch.idx])

    def extra_state(self) -> dict[str, Any]:
        state = super().extra_state()
        return state if self.envs is None else {**state, "envs": self.envs}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        if "envs" in state:
            self.envs = state["envs"].to(next(self.model.parameters()).device)
