"""SUBG: train on a fixed random subset holding min_g n_g examples of every training group."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..data.base import TensorSplit
from ..hparams import NoHParams
from ..registry import ALGORITHMS
from ._group_weights import balanced_subset
from .base import Algorithm


@ALGORITHMS.register("subsample_groups")
class SubsampleGroups(Algorithm):
    """Group subsampling (SUBG): ERM on a fixed group-balanced random subset of the training set.

    Reference: Idrissi et al., "Simple data balancing achieves competitive worst-group-accuracy",
    CLeaR 2022 (SUBG; BalancingGroups `subsample_`, drawn once before training). What is computed here:
    a subset S with exactly m = min_g n_g examples of every non-empty training group, drawn uniformly
    once per run from a generator seeded by the run seed (the same S after a resume); `sampler_weights`
    is 1 on S and 0 elsewhere, so each harness epoch is N draws *with replacement*, uniform over S
    (every draw's group is uniform over the groups). Difference from SUBG: SUBG makes passes over S
    without replacement, |S|/batch steps an epoch; here an epoch has ERM's N/batch steps, i.e. about
    N/|S| passes over S, so `train.epochs` counts far more passes over S than SUBG's epochs do.
    Details: docs/methods.md#subsample_groups.
    """

    HParams = NoHParams
    uses_train_groups = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The runner seeds torch with the run seed just before building: S depends on the run seed only,
        # and drawing it from its own generator leaves the global RNG streams untouched.
        self.subset_seed = torch.initial_seed()
        self.subset: Tensor | None = None

    def sampler_weights(self, train: TensorSplit) -> Tensor | None:
        if self.subset is None or len(self.subset) != len(train):
            gen = torch.Generator().manual_seed(self.subset_seed)
            self.subset = balanced_subset(train.g, len(self.info.group_names), gen)
        return self.subset
