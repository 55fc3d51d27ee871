"""Reported: the papers' own numbers (package data reported.toml) as rows beside the reproduced ones."""
from __future__ import annotations

import functools
from importlib import resources
from typing import Any, Collection

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .select import ROW_KEYS

# The protocols the papers report, as the built-in selections define them (kept here so that reading
# the data imports no component).
_PROTOCOLS = {"val_worst_group": ("Val-GP", "val/worst_group_acc", True), "val_avg": ("No-GP", "val/avg_acc", False)}
_NEEDED = ("dataset", "method", "backbone", "protocol", "worst_group", "source", "tables")


@functools.lru_cache(maxsize=1)
def load_reported() -> dict[str, Any]:
    """reported.toml, checked: `sources` (citations) and `rows` (the numbers, in percent as printed)."""
    data = tomllib.loads(resources.files(__package__).joinpath("reported.toml").read_text(encoding="utf-8"))
    for i, entry in enumerate(data["rows"]):
        missing = [k for k in _NEEDED if k not in entry]
        # Package data, not user input: a bad entry is a bug in this package, said precisely.
        if missing or entry["protocol"] not in _PROTOCOLS or entry["source"] not in data["sources"]:
            raise ValueError(f"reported.toml rows[{i}] is malformed (missing {missing}, or unknown protocol/source)")
    return data


def _fraction(pair: list[float] | None, i: int) -> float | None:
    # Rounded so that 85.4 % reads back as 0.854, not 0.8540000000000001.
    return None if pair is None else round(pair[i] / 100, 6)


def _row(entry: dict[str, Any], sources: dict[str, Any]) -> dict[str, Any]:
    label, metric, uses_val_groups = _PROTOCOLS[entry["protocol"]]
    source = sources[entry["source"]]
    wg, avg = entry["worst_group"], entry.get("avg")
    train_groups = bool(entry.get("train_groups", False))
    return {**dict.fromkeys(ROW_KEYS), **{
        "dataset": entry["dataset"], "method": entry["method"], "backbone": entry["backbone"], "source": "reported",
        "protocol": entry["protocol"], "selection": label, "selection_metric": metric, "oracle": False,
        "uses_val_groups": uses_val_groups, "uses_train_groups": train_groups, "algorithm_uses_val_groups": False,
        "uses_val_groups_any": uses_val_groups,
        "test_worst_group_acc_mean": _fraction(wg, 0), "test_worst_group_acc_std": _fraction(wg, 1),
        "test_avg_acc_mean": _fraction(avg, 0), "test_avg_acc_std": _fraction(avg, 1),
        "avg_metric": entry.get("avg_metric", "avg_acc") if avg is not None else None,
        "n_seeds": source.get("seeds"), "reported_as": entry.get("reported_as"),
        "citation": {"source": entry["source"], "short": source["short"], "paper": source["paper"],
                     "tables": entry["tables"], "note": entry.get("note")},
    }}


def reported_rows(datasets: Collection[str] | None = None) -> list[dict[str, Any]]:
    """The reported rows (fields as leaderboard rows; what a paper does not report is null), of `datasets`
    when given."""
    data = load_reported()
    return [_row(e, data["sources"]) for e in data["rows"] if datasets is None or e["dataset"] in datasets]
