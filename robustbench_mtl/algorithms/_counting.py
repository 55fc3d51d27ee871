"""Algorithms whose schedule follows training progress: a checkpointed count of completed updates."""
from __future__ import annotations

from typing import Any

from ..types import Batch
from .base import Algorithm


class CountsUpdates(Algorithm):
    """`self.updates`: the `update` calls completed so far (0 during the first), kept in `extra_state` (key
    "updates") so that a resumed run continues its schedule (DANN's reversal, an anneal, LDAM's DRW switch).

    Put it first among the bases: `class X(CountsUpdates, OtherBase)`; its extra state is merged with theirs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.updates = 0

    def update(self, batch: Batch, aux_batch: Batch | None = None) -> dict[str, float]:
        losses = super().update(batch, aux_batch)
        self.updates += 1
        return losses

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "updates": self.updates}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.updates = int(state.get("updates", 0))
