"""L1 penalty: mean absolute activation of the shared representation (paper eq. 1)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..backbones.base import Backbone
from ..data.base import DataInfo
from ..hparams import Choice, hp
from ..registry import OBJECTIVES
from ..types import Outputs
from .base import PAPER_WEIGHT_GRID, Penalty

@dataclass(frozen=True)
class L1HParams:
    weight: float = hp(PAPER_WEIGHT_GRID[0], Choice(PAPER_WEIGHT_GRID),
                       ge=0, help="w_reg; the paper's grid is e^k, k in {-1, 0, 1}")
    target: Literal["all_tokens", "cls"] = hp(
        "all_tokens", help="all_tokens: the whole final-layer sequence (released code); cls: the pooled/CLS vector")
    normalizer: Literal["first_batch", "batch"] = hp(
        "first_batch", help="divide |H|_1 by numel of the first batch of each pass (released code) or of this batch")


@OBJECTIVES.register("l1")
class L1(Penalty):
    """L1 on the shared representation of the end-task pass and of each auxiliary objective's passes.

    Reference: Kulkarni, Dery et al. 2023 (arXiv 2312.03151) eq. 1 and the released code
    (docs/methods.md#l1): |H|_1 / numel(H of the first batch), cached per pass. Eq. 1 has one term per
    task, w_reg (|h_end|_1 + |h_aux|_1): an auxiliary objective with several passes (SimCLR's two views)
    contributes the mean of its passes' terms, so it counts once; the terms are summed.
    """

    HParams = L1HParams

    def __init__(self, hparams: L1HParams, backbone: Backbone, info: DataInfo) -> None:
        super().__init__(hparams, backbone, info)
        self.normalizers: dict[str, int] = {}

    def _target(self, out: Outputs) -> Tensor:
        if out.tokens is None:
            return out.pooled
        return out.tokens if self.hparams.target == "all_tokens" else out.tokens[:, 0]

    def _term(self, key: str, out: Outputs) -> Tensor:
        h = self._target(out)
        norm = self.normalizers.setdefault(key, h.numel()) if self.hparams.normalizer == "first_batch" else h.numel()
        return h.float().abs().sum() / norm

    def loss(self, reps: dict[str, Outputs]) -> Tensor:
        """Sum over tasks ('end' and each objective, keys 'name/i') of the mean term of that task's passes."""
        by_task: dict[str, list[Tensor]] = {}
        for key, out in reps.items():
            by_task.setdefault(key.partition("/")[0], []).append(self._term(key, out))
        return torch.stack([torch.stack(terms).mean() for terms in by_task.values()]).sum()

    # The cached normalizers are state: a resumed run must keep dividing by the same numbers.
    def get_extra_state(self) -> Any:
        return dict(self.normalizers)

    def set_extra_state(self, state: Any) -> None:
        self.normalizers = dict(state or {})
