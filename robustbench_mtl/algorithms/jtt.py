"""JTT: train an identification model with ERM, then train a fresh model with its errors upsampled."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import copy_state
from ..data.base import TensorSplit
from ..hparams import Choice, hp
from ..loaders import epoch_batches, steps_per_epoch
from ..registry import ALGORITHMS
from .base import Algorithm


@dataclass(frozen=True)
class JTTHParams:
    first_stage_epochs: int = hp(2, Choice((1, 2, 5, 10)), ge=1,
                                 help="T: ERM epochs of the identification model (JTT README: CelebA 1, "
                                      "MultiNLI/CivilComments 2; MTL code: 5 / 10)")
    lambda_up: int = hp(6, Choice((4, 6, 20, 50, 100)), ge=1,
                        help="upsampling factor: each error-set example appears lambda_up times per epoch")
    select_phase2_only: bool = hp(True, help="True: protocols select among stage-2 epochs only (the JTT paper); "
                                             "False: also among the stage-1 ERM epochs (the released mt_l1 code)")


@ALGORITHMS.register("jtt")
class JTT(Algorithm):
    """JTT (Just Train Twice): ERM identification model, then a fresh model with its error set upsampled.

    Reference: Liu et al. 2021, "Just Train Twice", ICML; anniesch/jtt (docs/methods.md#jtt). In `setup`
    (fresh runs only) the model trains with plain ERM (end-task loss only, no --aux terms) for
    `first_stage_epochs`; the error set E = {i : argmax f(x_i) != y_i on any labelled task} is computed
    on the training split in eval mode without augmentation; the model is reset to its initial weights.
    Stage 2 trains on the upsampled dataset, as the official code builds it: every epoch is a shuffled
    pass over N + (lambda_up - 1)|E| examples, each example of E appearing lambda_up times, and the
    optimizer and lr schedule are rebuilt with total steps = train.epochs x that epoch's batches.
    E is checkpointed, so a resumed run keeps it and never reruns stage 1. Training group labels are not
    used; validation groups only select the model.

    Stage 1 runs in addition to `train.epochs` (stage 2 trains the full `train.epochs`; the MTL code
    instead counts both stages in one epoch budget) and follows the first steps of a schedule sized for
    N examples an epoch.

    Selection: every stage-1 epoch is evaluated and recorded in metrics.jsonl with `"phase": "setup"`
    (epochs numbered 0..T-1 within the stage). `select_phase2_only=True` (default, the JTT paper) lets
    protocols choose among stage-2 epochs only; False lets them choose among all epochs, stage-1 ERM
    models included, as the released mt_l1 code does (docs/methods.md#jtt: 4 of its 5 JTT "best" checkpoints
    were ERM models).
    """

    HParams = JTTHParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Kept on the CPU: the fresh model of stage 2 starts from exactly these weights.
        self._initial = copy_state(self.model, "cpu")
        self.error: Tensor | None = None

    @torch.no_grad()
    def error_set(self, train: TensorSplit) -> Tensor:
        """1.0 where the current model misclassifies example i on any labelled task, else 0.0; [N]."""
        wrong = torch.zeros(len(train), dtype=torch.bool, device=train.g.device)
        bs = self.train_hp.eval_batch_size
        for start in range(0, len(train), bs):
            part = slice(start, start + bs)
            for task, logits in self.predict(train.inputs(part)).items():
                y = train.y[task][part]
                wrong[part] |= (logits.argmax(1) != y) & (y >= 0)
        return wrong.float()

    def setup(self, train: TensorSplit) -> None:
        # The shuffling seed comes from the global generator that the runner seeded: deterministic per run.
        seed = int(torch.randint(0, 2**62, (1,)))
        for epoch in range(self.hparams.first_stage_epochs):
            for batch in epoch_batches(train, self.train_hp.batch_size, seed, epoch):
                self.erm_step(batch, "JTT's first stage")
            self.evaluate_now("setup")
        self.error = self.error_set(train)
        self.model.load_state_dict(self._initial)
        self._size_schedule()
        self.configure_optimizers()

    def _size_schedule(self) -> None:
        """Total steps of stage 2's schedule: train.epochs passes over the upsampled dataset."""
        n = int(self.sampler_repeats(None).sum())
        self.total_steps = self.train_hp.epochs * steps_per_epoch(n, self.train_hp.batch_size)

    def selectable(self, record: dict[str, Any]) -> bool:
        return not (self.hparams.select_phase2_only and record.get("phase") == "setup")

    def sampler_repeats(self, train: TensorSplit | None) -> Tensor:
        """1 copy of each example, lambda_up copies of each error-set example (the upsampled dataset)."""
        if self.error is None:
            raise RuntimeError("JTT: sampler_repeats before setup() or a restored error set")
        return 1 + (self.hparams.lambda_up - 1) * self.error.long()

    def extra_state(self) -> dict[str, Any]:
        return {} if self.error is None else {"error": self.error}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "error" in state:
            self.error = state["error"]
            self._size_schedule()  # the restored scheduler's lambda reads total_steps
