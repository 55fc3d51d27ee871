"""Leaderboards from finished run directories: per-protocol hparam selection, mean ± std over seeds."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import ConfigError
from .registry import CORE_DIST
from .results import FINAL, RunRecord, atomic_write_json, atomic_write_text, finished_runs


def _method(config: dict[str, Any]) -> str:
    """The algorithm with its --aux objectives; its own extra objectives (l1 of *_l1) are in its name."""
    aux = config["spec"].get("aux") or []
    return " + ".join([config["spec"]["algorithm"], *[o for o in config["objectives"] if o in aux]])


def _config_key(config: dict[str, Any]) -> tuple[str, int]:
    """(configuration key, seed): runs that differ only in seed share the key."""
    identity = copy.deepcopy(config["identity"])
    seed = identity.pop("seed")
    return json.dumps(identity, sort_keys=True), int(seed)


def _value(entry: dict[str, Any], metric: str | None) -> float | None:
    """`metric` ("split/name") looked up in a final.json selection entry; None where absent or NaN."""
    split, _, name = (metric or "").partition("/")
    value = (entry.get(split) or {}).get(name)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _run_records(runs_dir: Path, run: RunRecord) -> list[dict[str, Any]]:
    """One record per usable selection protocol of one run; a protocol missing a metric is skipped."""
    cfg = run.config
    key, seed = _config_key(cfg)
    base = {"dataset": cfg["spec"]["data"], "method": _method(cfg), "backbone": cfg["backbone"],
            "config_key": key, "seed": seed, "run": run.path.relative_to(runs_dir).as_posix(),
            "uses_train_groups": bool(cfg["algorithm_flags"]["uses_train_groups"]),
            "algorithm_uses_val_groups": bool(cfg["algorithm_flags"].get("uses_val_groups")),
            "components": cfg["components"], "fingerprint": cfg.get("data", {}).get("fingerprint")}
    out = []
    for protocol, entry in (run.final.get("selections") or {}).items():
        score = _value(entry, entry.get("metric"))
        wg, avg = _value(entry, "test/worst_group_acc"), _value(entry, "test/avg_acc")
        if score is None or wg is None or avg is None:
            continue
        out.append({**base, "protocol": protocol, "selection": entry.get("label") or protocol,
                    "selection_metric": entry["metric"], "oracle": bool(entry.get("oracle")),
                    "uses_val_groups": bool(entry.get("uses_val_groups")), "score": score,
                    "wg": wg, "avg": avg, "epoch": entry.get("epoch")})
    return out


def _stats(values: pd.Series) -> tuple[float, float, float]:
    """(mean, sample std, standard error); std and s.e. are 0.0 for a single seed."""
    n = len(values)
    std = float(values.std(ddof=1)) if n > 1 else 0.0
    return float(values.mean()), std, std / math.sqrt(n)


def _row(group: pd.DataFrame) -> dict[str, Any]:
    """Pick the configuration with the best mean selection score, then summarise its seeds."""
    # Sorted keys make ties deterministic: the first configuration (in key order) wins.
    means = group.groupby("config_key", sort=True)["score"].mean()
    chosen = group[group["config_key"] == means.idxmax()].sort_values("seed")
    first = chosen.iloc[0]
    wg, avg = _stats(chosen["wg"]), _stats(chosen["avg"])
    return {
        "dataset": first["dataset"], "method": first["method"], "backbone": first["backbone"],
        "protocol": first["protocol"], "selection": first["selection"],
        "selection_metric": first["selection_metric"], "selection_score_mean": float(means.max()),
        "oracle": bool(first["oracle"]), "uses_val_groups": bool(first["uses_val_groups"]),
        "uses_train_groups": bool(first["uses_train_groups"]),
        "algorithm_uses_val_groups": bool(first["algorithm_uses_val_groups"]),
        "test_worst_group_acc_mean": wg[0], "test_worst_group_acc_std": wg[1], "test_worst_group_acc_sem": wg[2],
        "test_avg_acc_mean": avg[0], "test_avg_acc_std": avg[1], "test_avg_acc_sem": avg[2],
        "n_seeds": len(chosen), "seeds": [int(s) for s in chosen["seed"]],
        "epochs": [int(e) if pd.notna(e) else None for e in chosen["epoch"]],
        "configuration": json.loads(first["config_key"]), "n_configurations": len(means),
        "n_runs_compared": len(group), "components": first["components"],
        "data_fingerprints": sorted({f for f in group["fingerprint"] if f}),
        "runs": list(chosen["run"]),
    }


def _protocol_order(row: dict[str, Any]) -> tuple[Any, ...]:
    """Non-oracle before oracle, Val-GP (the protocol that uses val group labels) first, then by label."""
    return (row["oracle"], not row["uses_val_groups"], row["selection"], row["protocol"])


def collect_rows(runs_dir: Path) -> list[dict[str, Any]]:
    """One row per (dataset, method, backbone, selection protocol) over the finished runs under runs_dir."""
    runs_dir = Path(runs_dir)
    records = [rec for run in finished_runs(runs_dir) for rec in _run_records(runs_dir, run)]
    if not records:
        return []
    df = pd.DataFrame(records).sort_values("run")
    # The same configuration and seed finished twice (e.g. two --out dirs) is one seed, not two.
    df = df.drop_duplicates(subset=["config_key", "seed", "protocol"], keep="first")
    rows = [_row(g) for _, g in df.groupby(["dataset", "method", "backbone", "protocol"], sort=True)]
    return sorted(rows, key=lambda r: (r["dataset"], *_protocol_order(r), -r["test_worst_group_acc_mean"],
                                       r["method"], r["backbone"]))


def _pct(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _selection_cell(row: dict[str, Any]) -> str:
    """Oracle rows are italic and always say "oracle", whatever a plugin protocol calls itself."""
    label = row["selection"]
    if not row["oracle"]:
        return label
    return f"*{label}*" if "oracle" in label.lower() else f"*{label} (oracle)*"


def _providers(row: dict[str, Any]) -> str:
    outside = [f"{kind}: {c['dist']} {c['version']}" for kind, c in row["components"].items()
               if c["dist"] != CORE_DIST]
    return "; ".join(outside) or CORE_DIST


def _n_runs(rows: list[dict[str, Any]]) -> int:
    """Runs behind a table: per (method, backbone), the most runs any protocol compared."""
    per_group: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r["method"], r["backbone"])
        per_group[key] = max(per_group.get(key, 0), r["n_runs_compared"])
    return sum(per_group.values())


def render_markdown(rows: list[dict[str, Any]], dataset: str) -> str:
    """One Markdown table for one dataset (rows as from `collect_rows`)."""
    rows = sorted((r for r in rows if r["dataset"] == dataset),
                  key=lambda r: (*_protocol_order(r), -r["test_worst_group_acc_mean"], r["method"]))
    show_providers = any(c["dist"] != CORE_DIST for r in rows for c in r["components"].values())
    cols = ["Method", "Backbone", "Selection", "Test worst-group acc.", "Test avg acc.", "Seeds", "Train groups"]
    cols += ["Providers"] if show_providers else []
    n = _n_runs(rows)
    lines = [
        f"### {dataset}", "",
        f"{n} finished run{'s' if n != 1 else ''}. For each selection protocol, the epoch of every run is the "
        "one the protocol chose, and the hyperparameter configuration is the one with the best mean of the protocol's "
        "selection metric over seeds.", "",
        "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
    ]
    for r in rows:
        cells = [r["method"], r["backbone"], _selection_cell(r),
                 _pct(r["test_worst_group_acc_mean"], r["test_worst_group_acc_std"]),
                 _pct(r["test_avg_acc_mean"], r["test_avg_acc_std"]), str(r["n_seeds"]),
                 "yes" if r["uses_train_groups"] else "no"]
        lines.append("| " + " | ".join(cells + ([_providers(r)] if show_providers else [])) + " |")
    lines += ["", "Worst-group acc. = min over groups of per-group test accuracy; avg acc. = per-example test "
              "accuracy (with several tasks, each is the mean over tasks); both in percent, mean ± sample std over "
              "seeds. Val-GP selects with validation group labels, No-GP and Val-WC without; *italic* oracle "
              "rows select on test labels and are upper bounds, not results.", ""]
    return "\n".join(lines)


def checked_rows(runs_dir: Path) -> list[dict[str, Any]]:
    """Rows, or a ConfigError saying why there are none and what to do."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ConfigError(f"runs directory {runs_dir} does not exist; pass the directory the runs were written "
                          f"under (by default ./runs)")
    rows = collect_rows(runs_dir)
    if not rows:
        raise ConfigError(f"no finished runs under {runs_dir} (a run is finished when its directory holds "
                          f"{FINAL} with selection results); run `robustbench-mtl run ...` first")
    return rows


def write_leaderboards(runs_dir: Path, out_dir: Path) -> list[Path]:
    """Write `<dataset>.md` and `<dataset>.json` (the rows) per dataset into out_dir; return the paths."""
    rows = checked_rows(runs_dir)
    paths = []
    for dataset in sorted({r["dataset"] for r in rows}):
        md, js = Path(out_dir) / f"{dataset}.md", Path(out_dir) / f"{dataset}.json"
        atomic_write_text(md, render_markdown(rows, dataset))
        atomic_write_json(js, [r for r in rows if r["dataset"] == dataset])
        paths += [md, js]
    return paths


def leaderboard_markdown(runs_dir: Path) -> str:
    """Every dataset's table, one after another (for printing)."""
    rows = checked_rows(runs_dir)
    return "\n".join(render_markdown(rows, d) for d in sorted({r["dataset"] for r in rows}))


__all__ = ["collect_rows", "checked_rows", "render_markdown", "write_leaderboards", "leaderboard_markdown"]
