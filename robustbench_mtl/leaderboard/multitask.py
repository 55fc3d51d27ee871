"""Multi-task rows: per-task test accuracy and ρ_spur over seeds, and Δm against vanilla multi-task ERM."""
from __future__ import annotations

import math
import statistics
from typing import Any

import pandas as pd

BASELINE = "erm"  # vanilla multi-task ERM: the `erm` algorithm without --aux objectives (its method name)


def run_tasks(config: dict[str, Any]) -> list[str] | None:
    """The run's task names (config.json `data.tasks`) when it has several; None for one task."""
    data = config.get("data")
    tasks = data.get("tasks") if isinstance(data, dict) else None
    return list(tasks) if isinstance(tasks, dict) and len(tasks) > 1 else None


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _view(entry: dict[str, Any], key: str) -> dict[str, Any]:
    value = entry.get(key)
    return value if isinstance(value, dict) else {}


def entry_task_values(entry: dict[str, Any], tasks: list[str] | None) -> dict[str, Any]:
    """From one final.json selections entry: test, validation and training-subset accuracy and ρ_spur per task
    (None where absent: `train` is missing from runs made before it was measured)."""
    if not tasks:
        return {"task_acc": None, "val_task_acc": None, "train_task_acc": None, "rho": None}
    accs = {f"{prefix}task_acc": {t: _number(_view(entry, split).get(f"avg_acc/{t}")) for t in tasks}
            for prefix, split in (("", "test"), ("val_", "val"), ("train_", "train"))}
    saliency = _view(entry, "saliency")
    return {**accs, "rho": {t: _number(saliency.get(f"test/rho_spur/{t}")) for t in tasks}}


def seed_stats(per_seed: list[float | None]) -> dict[str, Any]:
    """mean, sample std, standard error and n over the seeds that have a value; per_seed as given."""
    values = [v for v in per_seed if v is not None]
    n = len(values)
    std = statistics.stdev(values) if n > 1 else None
    return {"mean": statistics.fmean(values) if n else None, "std": std,
            "sem": std / math.sqrt(n) if std is not None else None, "n": n, "per_seed": per_seed}


def task_summary(chosen: pd.DataFrame, column: str, tasks: list[str] | None) -> dict[str, Any] | None:
    """Per task, `seed_stats` of `column` over the chosen runs (aligned with their seeds); None when the rows have
    one task, or (ρ_spur of runs written before it existed) no run has any value."""
    if not tasks:
        return None
    # A run whose config.json lacks data.tasks has no dict here (pandas may hold it as NaN): no values.
    per_task = {t: [v.get(t) if isinstance(v, dict) else None for v in chosen[column]] for t in tasks}
    if not any(v is not None for vs in per_task.values() for v in vs):
        return None
    return {t: seed_stats(vs) for t, vs in per_task.items()}


def _delta_m_per_seed(row: dict[str, Any], base: dict[str, Any]) -> dict[int, float]:
    """Δm of each seed both rows ran: (1/T) Σ_t (M_t − M_t^ERM) / M_t^ERM over test accuracies (higher is
    better for every task, so l_t = 0); a seed missing a task's accuracy, or with M_t^ERM = 0, is left out."""
    tasks, out = row["tasks"], {}
    mine, theirs = row["test_task_acc"] or {}, base["test_task_acc"] or {}
    for i, seed in enumerate(row["seeds"]):
        if seed not in base["seeds"] or not all(t in mine and t in theirs for t in tasks):
            continue
        j = base["seeds"].index(seed)
        pairs = [(mine[t]["per_seed"][i], theirs[t]["per_seed"][j]) for t in tasks]
        if all(m is not None and b for m, b in pairs):
            out[seed] = statistics.fmean((m - b) / b for m, b in pairs)
    return out


def _no_delta(row: dict[str, Any], note: str) -> None:
    row.update(delta_m_mean=None, delta_m_std=None, delta_m_seeds=[], delta_m_per_seed=[], delta_m_note=note)


def add_delta_m(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill the Δm fields of every reproduced multi-task row against the `erm` row with the same dataset, backbone
    and protocol, paired over shared seeds (Δm per seed, then mean ± std); a note says why where there is none."""
    base = {(r["dataset"], r["backbone"], r["protocol"]): r for r in rows
            if r["method"] == BASELINE and r["source"] == "reproduced" and r["tasks"]}
    for row in rows:
        if row["source"] != "reproduced" or not row["tasks"]:
            continue
        erm = base.get((row["dataset"], row["backbone"], row["protocol"]))
        if erm is None:
            _no_delta(row, f"no vanilla multi-task ERM runs ({BASELINE} without --aux) with this backbone and "
                           "selection protocol to compare with.")
            continue
        per_seed = _delta_m_per_seed(row, erm)
        if not per_seed:
            _no_delta(row, f"no seed shared with {BASELINE}'s selected configuration (with every task's accuracy).")
            continue
        stats = seed_stats(list(per_seed.values()))
        row.update(delta_m_mean=stats["mean"], delta_m_std=stats["std"], delta_m_seeds=list(per_seed),
                   delta_m_per_seed=list(per_seed.values()), delta_m_note=None)
    return rows


def dataset_tasks(rows: list[dict[str, Any]]) -> list[str]:
    """The tasks of a dataset's reproduced multi-task rows, in first-seen order ([] for a one-task dataset)."""
    return list(dict.fromkeys(t for r in rows if r["source"] != "reported" for t in r["tasks"] or []))


def has_rho(rows: list[dict[str, Any]]) -> bool:
    return any(r.get("test_rho_spur") for r in rows)


__all__ = ["BASELINE", "seed_stats", "run_tasks", "entry_task_values", "task_summary", "add_delta_m", "dataset_tasks", "has_rho"]
