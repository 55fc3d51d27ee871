"""The model-selection contract: pick one evaluation record (epoch) post hoc from metrics.jsonl."""
from __future__ import annotations

import math
from typing import Any, ClassVar


def best_with_patience(values: list[float], patience: int) -> int:
    """Index of the best value, re-simulating early stopping on this metric alone.

    Strict improvement (`>`, first best wins ties), as the released code; training on this metric
    alone would have stopped after `patience` epochs without improvement (0 = never).
    """
    best_i, best, stale = -1, -math.inf, 0
    for i, v in enumerate(values):
        if v is not None and not math.isnan(v) and v > best:
            best_i, best, stale = i, v, 0
        else:
            stale += 1
            if patience and stale >= patience:
                break
    return max(best_i, 0)


def _oriented(value: Any, minimize: bool) -> Any:
    """The value to maximise: negated for a protocol that minimises its metric; None and NaN stay as they are."""
    return -value if minimize and isinstance(value, (int, float)) else value


class Selection:
    """A protocol that chooses the checkpoint (epoch) to report from one run's records.

    `minimize = True` chooses the lowest value of `metric` instead of the highest (e.g. a class difference);
    ties, patience and null values are handled as for the highest."""

    metric: ClassVar[str]
    oracle: ClassVar[bool] = False
    uses_val_groups: ClassVar[bool] = False
    label: ClassVar[str] = ""
    minimize: ClassVar[bool] = False

    def select(self, records: list[dict[str, Any]], patience: int) -> int:
        """Index into `records` of the chosen evaluation."""
        return best_with_patience([_oriented(r.get(self.metric, math.nan), self.minimize) for r in records],
                                  0 if self.oracle else patience)
