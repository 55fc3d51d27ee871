"""Select: per protocol, the configuration with the best mean validation score, summarised over its seeds."""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

import pandas as pd

from ..errors import ConfigError, PluginError
from ..registry import SELECTIONS
from .multitask import seed_stats, task_summary

# Every row, reproduced or reported, has exactly these keys (a reported row leaves unknown ones null).
ROW_KEYS = (
    "dataset", "method", "backbone", "source", "protocol", "selection", "selection_metric",
    "selection_score_mean", "selection_rule", "oracle", "uses_val_groups", "uses_train_groups",
    "algorithm_uses_val_groups", "uses_val_groups_any",
    "test_worst_group_acc_mean", "test_worst_group_acc_std", "test_worst_group_acc_sem",
    "test_avg_acc_mean", "test_avg_acc_std", "test_avg_acc_sem", "avg_metric",
    "n_seeds", "seeds", "epochs", "test_worst_group_acc_per_seed", "test_avg_acc_per_seed", "test_metrics",
    "configuration", "selected_hparams", "searched_hparams", "n_configurations", "n_configurations_incomplete",
    "n_runs_compared", "n_run_dirs", "n_distinct_runs", "components", "data_fingerprints", "provenance", "runs",
    "citation", "reported_as",
    # Multi-task datasets (null on one-task rows and reported rows): see multitask.py.
    "tasks", "test_task_acc", "val_task_acc", "train_task_acc", "test_rho_spur", "delta_m_mean", "delta_m_std",
    "delta_m_seeds", "delta_m_per_seed",
    "delta_m_note",
)
PROVENANCE_FIELDS = ("version", "git_commit", "git_dirty", "torch", "device_name")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# Built-in protocols in display order: the paper's and Val-WC first, then SubpopBench's class-level criteria.
PROTOCOL_ORDER = ("val_worst_group", "val_avg", "val_worst_class", "val_balanced", "val_avg_precision",
                  "val_worst_precision", "val_avg_f1", "val_worst_f1", "val_auroc", "val_class_diff",
                  "oracle_worst_group", "oracle_avg")


def protocol_order(row: dict[str, Any]) -> tuple[Any, ...]:
    """Non-oracle before oracle, Val-GP (the protocol that uses val group labels) first, then the built-in
    protocols in `PROTOCOL_ORDER`, then any other (a plugin's) by label."""
    known = PROTOCOL_ORDER.index(row["protocol"]) if row["protocol"] in PROTOCOL_ORDER else len(PROTOCOL_ORDER)
    return (row["oracle"], not row["uses_val_groups"], known, row["selection"], row["protocol"])


def minimises(protocol: str) -> bool:
    """Whether `protocol` chooses the lowest value of its metric (its registered `minimize`, e.g.
    `val_class_diff`); a protocol not installed here is taken to maximise, as every protocol did before."""
    try:
        return bool(getattr(SELECTIONS.get(protocol), "minimize", False))
    except (ConfigError, PluginError):
        return False


def _stats(values: pd.Series) -> tuple[float, float | None, float | None]:
    """(mean, sample std, standard error); one seed has no spread, so None rather than a fake 0.0."""
    n = len(values)
    if n < 2:
        return float(values.mean()), None, None
    std = float(values.std(ddof=1))
    return float(values.mean()), std, std / math.sqrt(n)


def _choose(group: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series, int, str]:
    """(chosen configuration's runs, compared configurations' mean scores, configurations left out, rule).

    Only configurations with the group's largest number of seeds are compared: a mean over one lucky
    seed must not beat a mean over five."""
    seeds = group.groupby("config_key", sort=True)["seed"].nunique()
    most = int(seeds.max())
    compared = group[group["config_key"].isin(seeds.index[seeds == most])]
    # Sorted keys make ties deterministic: the first configuration (in key order) wins.
    means = compared.groupby("config_key", sort=True)["score"].mean()
    lowest = minimises(str(group["protocol"].iloc[0]))
    chosen = compared[compared["config_key"] == (means.idxmin() if lowest else means.idxmax())].sort_values("seed")
    n_out = len(seeds) - len(means)
    among = f"the {plural(len(means), 'configuration')}" if len(means) > 1 else "the one configuration"
    rule = (f"{'lowest' if lowest else 'best'} mean {chosen.iloc[0]['selection_metric']} over "
            f"{plural(most, 'seed')} among {among} with {plural(most, 'seed')}")
    rule += f"; {plural(n_out, 'configuration')} with fewer seeds not compared" if n_out else ""
    return chosen, means, n_out, rule


def flat_configuration(config_key: str) -> dict[str, Any]:
    """A configuration as flat keys: hparams as `scope.field` (the `--set` spelling), the rest by name."""
    identity = json.loads(config_key)
    flat = {k: v for k, v in identity.items() if k != "hparams"}
    for scope, fields in (identity.get("hparams") or {}).items():
        for field, value in (fields.items() if isinstance(fields, dict) else [("", fields)]):
            flat[f"{scope}.{field}" if field else scope] = value
    return flat


def _distinct_sorted(values: list[Any]) -> list[Any]:
    unique = list({json.dumps(v, sort_keys=True): v for v in values}.values())
    try:
        return sorted(unique)
    except TypeError:  # mixed types (e.g. None and numbers): a stable order is enough
        return sorted(unique, key=lambda v: json.dumps(v, sort_keys=True))


def hparam_choice(keys: list[str], chosen: str) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """(selected, searched): the chosen configuration's values of the keys on which the compared
    configurations differ, and every value each such key took among them."""
    flats = {k: flat_configuration(k) for k in keys}
    names = sorted(set().union(*flats.values()))
    differing = [n for n in names if len({json.dumps(f.get(n), sort_keys=True) for f in flats.values()}) > 1]
    return ({n: flats[chosen].get(n) for n in differing},
            {n: _distinct_sorted([f.get(n) for f in flats.values()]) for n in differing})


def _distinct(values: pd.Series) -> list[Any]:
    """Distinct values in run order (one value when every seed's run agrees); None = not recorded."""
    return list(dict.fromkeys(None if pd.isna(v) else v for v in values))


def metric_summary(chosen: pd.DataFrame, metrics: Sequence[str]) -> dict[str, Any] | None:
    """`seed_stats` of each extra test metric over the chosen runs (aligned with their seeds); None when none
    was asked for."""
    if not metrics:
        return None
    return {m: seed_stats([None if pd.isna(v) else float(v) for v in chosen[f"metric:{m}"]]) for m in metrics}


def summarise(group: pd.DataFrame, metrics: Sequence[str] = ()) -> dict[str, Any]:
    """One row: pick the configuration with the best mean selection score (see `_choose`), then summarise
    its seeds (the run counts n_run_dirs and n_distinct_runs are added by the caller)."""
    chosen, means, n_out, rule = _choose(group)
    compared = group[group["config_key"].isin(means.index)]
    first = chosen.iloc[0]
    tasks = first["tasks"] if isinstance(first["tasks"], list) else None
    wg, avg = _stats(chosen["wg"]), _stats(chosen["avg"])
    selected, searched = hparam_choice(list(means.index), first["config_key"])
    return {
        "dataset": first["dataset"], "method": first["method"], "backbone": first["backbone"],
        "source": "reproduced", "protocol": first["protocol"], "selection": first["selection"],
        "selection_metric": first["selection_metric"], "selection_score_mean": float(means[first["config_key"]]),
        "selection_rule": rule, "oracle": bool(first["oracle"]), "uses_val_groups": bool(first["uses_val_groups"]),
        "uses_train_groups": bool(first["uses_train_groups"]),
        "algorithm_uses_val_groups": bool(first["algorithm_uses_val_groups"]),
        "uses_val_groups_any": bool(first["uses_val_groups"] or first["algorithm_uses_val_groups"]),
        "test_worst_group_acc_mean": wg[0], "test_worst_group_acc_std": wg[1], "test_worst_group_acc_sem": wg[2],
        "test_avg_acc_mean": avg[0], "test_avg_acc_std": avg[1], "test_avg_acc_sem": avg[2],
        "avg_metric": "avg_acc", "n_seeds": len(chosen), "seeds": [int(s) for s in chosen["seed"]],
        "epochs": [int(e) if pd.notna(e) else None for e in chosen["epoch"]],
        "test_worst_group_acc_per_seed": [float(v) for v in chosen["wg"]],
        "test_avg_acc_per_seed": [float(v) for v in chosen["avg"]],
        "test_metrics": metric_summary(chosen, metrics),
        "configuration": json.loads(first["config_key"]), "selected_hparams": selected,
        "searched_hparams": searched, "n_configurations": len(means), "n_configurations_incomplete": n_out,
        "n_runs_compared": len(compared), "n_run_dirs": None, "n_distinct_runs": None,
        "components": first["components"], "data_fingerprints": sorted({f for f in compared["fingerprint"] if f}),
        "provenance": {f: _distinct(chosen[f"prov_{f}"]) for f in PROVENANCE_FIELDS},
        "runs": list(chosen["run"]), "citation": None, "reported_as": None,
        "tasks": tasks, "test_task_acc": task_summary(chosen, "task_acc", tasks),
        "val_task_acc": task_summary(chosen, "val_task_acc", tasks),
        "train_task_acc": task_summary(chosen, "train_task_acc", tasks),
        "test_rho_spur": task_summary(chosen, "rho", tasks),
        # Δm needs the ERM row of the same protocol: `multitask.add_delta_m` fills these once every row exists.
        "delta_m_mean": None, "delta_m_std": None, "delta_m_seeds": None, "delta_m_per_seed": None,
        "delta_m_note": None,
    }
