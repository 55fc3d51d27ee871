"""Mixup: train on convex combinations of pairs of the batch's examples and of their labels' losses."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hparams import LogUniform, hp
from ..registry import ALGORITHMS
from ..types import Batch
from ._mixing import MixingAlgorithm, MixPlan, sample_beta


@dataclass(frozen=True)
class MixupHParams:
    alpha: float = hp(0.2, LogUniform(0.1, 10.0), ge=0,
                      help="lambda ~ Beta(alpha, alpha); 0 = no mixing (SubpopBench mixup_alpha: default 0.2, "
                           "space 10^U(-1,1))")


def mixup_plan(n: int, alpha: float) -> MixPlan:
    """One lambda ~ Beta(alpha, alpha) for the whole batch, then a random permutation: row i mixes example i
    (weight lambda) with example perm[i] (SubpopBench's `mixup_data`, same draw order)."""
    lam = sample_beta(alpha, 1).expand(n)
    return MixPlan(torch.arange(n), torch.randperm(n), lam)


@ALGORITHMS.register("mixup")
class Mixup(MixingAlgorithm):
    """Mixup: x~ = lam x_i + (1 - lam) x_perm(i), loss = lam CE(f(x~), y_i) + (1 - lam) CE(f(x~), y_perm(i)).

    Reference: Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018; SubpopBench's `Mixup`
    (Yang et al., ICML 2023; `subpopbench/learning/algorithms.py`, `utils/misc.py` `mixup_data`). One
    lam ~ Beta(alpha, alpha) per step and a random permutation of the batch; images and tables mix their
    inputs, text (token ids) mixes the pooled representation before the heads, as SubpopBench does for text.
    Per task, summed over tasks; a missing label (-1) contributes nothing (its partner's term still counts).
    No group or environment labels. --aux objectives read the unmixed pass. See docs/methods.md#mixup.
    """

    HParams = MixupHParams

    def plan(self, batch: Batch) -> MixPlan | None:
        return mixup_plan(len(batch), self.hparams.alpha)
