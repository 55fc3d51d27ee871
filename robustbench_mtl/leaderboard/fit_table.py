"""A multi-task dataset's fit-and-generalisation table: training-subset, validation and test accuracy, ρ_spur."""
from __future__ import annotations

from typing import Any, Callable

from ..saliency import MAX_EXAMPLES

Cell = Callable[[Any, Any], str]

FIT_PROTOCOL = "val_avg"  # in-distribution validation accuracy: how multi-task studies select (MT-CRL's analysis)


def fit_table(mine: list[dict[str, Any]], tasks: list[str], task_pct: Cell, rho_text: Cell) -> list[str]:
    """A multi-task dataset's fit and generalisation table: per method, the training-subset, validation and test
    accuracy and ρ_spur of each task, for one protocol's selected models ([] when no row has training accuracy).
    `task_pct` and `rho_text` format one statistics cell (the main table's formatting)."""
    rows = [r for r in mine if r["protocol"] == FIT_PROTOCOL] or [
        r for r in mine if not r["oracle"] and r["protocol"] == mine[0]["protocol"]]
    if not rows or not any(r["train_task_acc"] for r in rows):
        return []
    fields = (("Train", "train_task_acc"), ("Val", "val_task_acc"), ("Test", "test_task_acc"))
    cols = ["Method", "Backbone", *[f"{name} acc. {t}" for name, _ in fields for t in tasks],
            *[f"ρ_spur {t}" for t in tasks]]
    body = ["| " + " | ".join([r["method"], r["backbone"],
                               *[task_pct((r[f] or {}).get(t), r["n_seeds"]) for _, f in fields for t in tasks],
                               *[rho_text((r["test_rho_spur"] or {}).get(t), r["n_seeds"]) for t in tasks]]) + " |"
            for r in rows]
    return [f"**Fit and generalisation** ({rows[0]['selection']} selection): each task's accuracy on a fixed subset "
            f"of at most {MAX_EXAMPLES:,} training examples, on validation (in distribution) and on test, and ρ_spur, "
            "for the selected models; mean ± std over seeds.", "", "| " + " | ".join(cols) + " |",
            "|" + "---|" * len(cols), *body, ""]


__all__ = ["FIT_PROTOCOL", "fit_table"]
