"""Leaderboards from finished run directories: per-protocol hparam selection, mean ± std over seeds."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Callable, Collection

import pandas as pd

from .errors import ConfigError
from .registry import CORE_DIST
from .results import FINAL, RunRecord, SkippedRun, atomic_write_json, atomic_write_text, scan_runs


def _method(config: dict[str, Any]) -> str:
    """The algorithm with its --aux objectives; its own extra objectives (l1 of *_l1) are in its name."""
    aux = config["spec"].get("aux") or []
    return " + ".join([config["spec"]["algorithm"], *[o for o in config["objectives"] if o in aux]])


def _config_key(config: dict[str, Any]) -> tuple[str, int]:
    """(configuration key, seed): runs that differ only in seed share the key."""
    identity = copy.deepcopy(config["identity"])
    seed = identity.pop("seed")
    return json.dumps(identity, sort_keys=True), int(seed)


def _value(entry: dict[str, Any], metric: Any) -> float | None:
    """`metric` ("split/name") looked up in a final.json selection entry; None where absent or NaN."""
    split, _, name = (metric if isinstance(metric, str) else "").partition("/")
    view = entry.get(split)
    value = view.get(name) if isinstance(view, dict) else None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _backbone(config: dict[str, Any]) -> str:
    """The backbone's name, and where its weights started when a run began from `pretrain` (backbone.init):
    a pretrained and a from-scratch backbone are different rows, never two configurations of one."""
    hp = config.get("hparams", {}).get("backbone", {})
    init = hp.get("init") if isinstance(hp, dict) else None
    return f"{config['backbone']} from {Path(str(init)).name}" if init else config["backbone"]


def _run_base(runs_dir: Path, run: RunRecord) -> dict[str, Any]:
    """What one run contributes to every protocol's record (config.json's shape is checked by scan_runs)."""
    cfg = run.config
    key, seed = _config_key(cfg)
    fingerprint = (cfg.get("data") if isinstance(cfg.get("data"), dict) else {}).get("fingerprint")
    return {"dataset": cfg["spec"]["data"], "method": _method(cfg), "backbone": _backbone(cfg),
            "config_key": key, "seed": seed, "run": run.path.relative_to(runs_dir).as_posix(),
            "uses_train_groups": cfg["algorithm_flags"]["uses_train_groups"],
            "algorithm_uses_val_groups": cfg["algorithm_flags"]["uses_val_groups"],
            "components": cfg["components"], "fingerprint": fingerprint if isinstance(fingerprint, str) else None}


def _run_records(base: dict[str, Any], final: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per usable selection protocol of one run; a protocol missing a metric is skipped."""
    out = []
    for protocol, entry in final["selections"].items():
        score = _value(entry, entry.get("metric"))
        wg, avg = _value(entry, "test/worst_group_acc"), _value(entry, "test/avg_acc")
        flags = (entry.get("oracle"), entry.get("uses_val_groups"))
        # Without its flags a protocol's row could not say truthfully whether it used group or test labels.
        if score is None or wg is None or avg is None or not all(isinstance(f, bool) for f in flags):
            continue
        epoch = entry.get("epoch")
        out.append({**base, "protocol": protocol, "selection": str(entry.get("label") or protocol),
                    "selection_metric": entry["metric"], "oracle": flags[0], "uses_val_groups": flags[1],
                    "score": score, "wg": wg, "avg": avg, "epoch": epoch if isinstance(epoch, int) else None})
    return out


def _stats(values: pd.Series) -> tuple[float, float | None, float | None]:
    """(mean, sample std, standard error); one seed has no spread, so None rather than a fake 0.0."""
    n = len(values)
    if n < 2:
        return float(values.mean()), None, None
    std = float(values.std(ddof=1))
    return float(values.mean()), std, std / math.sqrt(n)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _choose(group: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series, int, str]:
    """(chosen configuration's runs, compared configurations' mean scores, configurations left out, rule).

    Only configurations with the group's largest number of seeds are compared: a mean over one lucky
    seed must not beat a mean over five."""
    seeds = group.groupby("config_key", sort=True)["seed"].nunique()
    most = int(seeds.max())
    compared = group[group["config_key"].isin(seeds.index[seeds == most])]
    # Sorted keys make ties deterministic: the first configuration (in key order) wins.
    means = compared.groupby("config_key", sort=True)["score"].mean()
    chosen = compared[compared["config_key"] == means.idxmax()].sort_values("seed")
    n_out = len(seeds) - len(means)
    among = f"the {_plural(len(means), 'configuration')}" if len(means) > 1 else "the one configuration"
    rule = (f"best mean {chosen.iloc[0]['selection_metric']} over {_plural(most, 'seed')} among {among} "
            f"with {_plural(most, 'seed')}")
    rule += f"; {_plural(n_out, 'configuration')} with fewer seeds not compared" if n_out else ""
    return chosen, means, n_out, rule


def _row(group: pd.DataFrame) -> dict[str, Any]:
    """Pick the configuration with the best mean selection score (see `_choose`), then summarise its seeds."""
    chosen, means, n_out, rule = _choose(group)
    compared = group[group["config_key"].isin(means.index)]
    first = chosen.iloc[0]
    wg, avg = _stats(chosen["wg"]), _stats(chosen["avg"])
    return {
        "dataset": first["dataset"], "method": first["method"], "backbone": first["backbone"],
        "protocol": first["protocol"], "selection": first["selection"],
        "selection_metric": first["selection_metric"], "selection_score_mean": float(means.max()),
        "oracle": bool(first["oracle"]), "uses_val_groups": bool(first["uses_val_groups"]),
        "uses_train_groups": bool(first["uses_train_groups"]),
        "algorithm_uses_val_groups": bool(first["algorithm_uses_val_groups"]),
        "uses_val_groups_any": bool(first["uses_val_groups"] or first["algorithm_uses_val_groups"]),
        "test_worst_group_acc_mean": wg[0], "test_worst_group_acc_std": wg[1], "test_worst_group_acc_sem": wg[2],
        "test_avg_acc_mean": avg[0], "test_avg_acc_std": avg[1], "test_avg_acc_sem": avg[2],
        "n_seeds": len(chosen), "seeds": [int(s) for s in chosen["seed"]],
        "epochs": [int(e) if pd.notna(e) else None for e in chosen["epoch"]],
        "configuration": json.loads(first["config_key"]), "selection_rule": rule,
        "n_configurations": len(means), "n_configurations_incomplete": n_out,
        "n_runs_compared": len(compared), "components": first["components"],
        "data_fingerprints": sorted({f for f in compared["fingerprint"] if f}),
        "runs": list(chosen["run"]),
    }


def _protocol_order(row: dict[str, Any]) -> tuple[Any, ...]:
    """Non-oracle before oracle, Val-GP (the protocol that uses val group labels) first, then by label."""
    return (row["oracle"], not row["uses_val_groups"], row["selection"], row["protocol"])


def _run_counts(bases: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, int]]:
    """Per (dataset, method, backbone): finished run directories read, and distinct (configuration, seed)."""
    dirs: dict[tuple[str, str, str], int] = {}
    distinct: dict[tuple[str, str, str], set[tuple[str, int]]] = {}
    for b in bases:
        key = (b["dataset"], b["method"], b["backbone"])
        dirs[key] = dirs.get(key, 0) + 1
        distinct.setdefault(key, set()).add((b["config_key"], b["seed"]))
    return {k: {"n_run_dirs": n, "n_distinct_runs": len(distinct[k])} for k, n in dirs.items()}


def scan_rows(runs_dir: Path, only: Collection[Path] | None = None) -> tuple[list[dict[str, Any]], list[SkippedRun]]:
    """(rows, skipped): one row per (dataset, method, backbone, selection protocol) over the usable
    finished runs under runs_dir (only the run directories in `only`, when given: e.g. one sweep's jobs),
    and the damaged run directories left out with the reason."""
    runs_dir = Path(runs_dir)
    runs, skipped = scan_runs(runs_dir)
    if only is not None:
        keep = {Path(d).resolve() for d in only}
        runs = [r for r in runs if r.path.resolve() in keep]
        skipped = [s for s in skipped if s.path.resolve() in keep]
    bases = [_run_base(runs_dir, run) for run in runs]
    records = [rec for base, run in zip(bases, runs) for rec in _run_records(base, run.final)]
    if not records:
        return [], skipped
    counts = _run_counts(bases)
    df = pd.DataFrame(records).sort_values("run")
    # The same configuration and seed finished twice (e.g. two --out dirs) is one seed, not two.
    df = df.drop_duplicates(subset=["config_key", "seed", "protocol"], keep="first")
    rows = [{**_row(g), **counts[key[:3]]}
            for key, g in df.groupby(["dataset", "method", "backbone", "protocol"], sort=True)]
    return sorted(rows, key=lambda r: (r["dataset"], *_protocol_order(r), -r["test_worst_group_acc_mean"],
                                       r["method"], r["backbone"])), skipped


def collect_rows(runs_dir: Path) -> list[dict[str, Any]]:
    """The rows of `scan_rows`, without the skipped runs."""
    return scan_rows(runs_dir)[0]


def _pct(mean: float, std: float | None) -> str:
    """Percent, `mean ± std`; a single seed has no std, so only its value."""
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def _selection_cell(row: dict[str, Any]) -> str:
    """Oracle rows are italic and always say "oracle", whatever a plugin protocol calls itself."""
    label = row["selection"]
    if not row["oracle"]:
        return label
    return f"*{label}*" if "oracle" in label.lower() else f"*{label} (oracle)*"


def _providers(row: dict[str, Any]) -> str:
    outside = [f"{kind}: {c.get('dist')} {c.get('version')}" for kind, c in row["components"].items()
               if c.get("dist") != CORE_DIST]
    return "; ".join(outside) or CORE_DIST


def _run_count_sentence(rows: list[dict[str, Any]]) -> str:
    """Runs behind a table: the (method, backbone) groups' counts summed (each run is in one group)."""
    groups = {(r["method"], r["backbone"]): (r["n_run_dirs"], r["n_distinct_runs"]) for r in rows}
    dirs, distinct = (sum(c[i] for c in groups.values()) for i in (0, 1))
    if dirs == distinct:
        return f"{_plural(distinct, 'finished run')}."
    # dirs > distinct >= 1 here, so "directories" is always plural.
    return (f"{dirs} run directories, {_plural(distinct, 'distinct run')} (the same configuration and seed "
            "finished in several directories counts once).")


def _left_out_sentence(rows: list[dict[str, Any]]) -> str:
    """Which rows compared fewer configurations than were run, and how many were left out."""
    per: dict[tuple[str, str], dict[str, int]] = {}
    for r in rows:
        per.setdefault((r["method"], r["backbone"]), {})[r["selection"]] = r["n_configurations_incomplete"]
    parts = []
    for (method, backbone), counts in per.items():
        if len(set(counts.values())) == 1:  # the same for every protocol: say it once
            parts += [f"{method} ({backbone}): {n}" for n in set(counts.values()) if n]
        else:
            parts += [f"{method} ({backbone}, {sel}): {n}" for sel, n in counts.items() if n]
    return f" Configurations not compared for having fewer seeds: {'; '.join(parts)}." if parts else ""


def _cells(r: dict[str, Any]) -> list[str]:
    return [r["method"], r["backbone"], _selection_cell(r),
            _pct(r["test_worst_group_acc_mean"], r["test_worst_group_acc_std"]),
            _pct(r["test_avg_acc_mean"], r["test_avg_acc_std"]), str(r["n_seeds"]),
            "yes" if r["uses_train_groups"] else "no",
            ("yes" if r["uses_val_groups_any"] else "no") + (" (test groups)" if r["oracle"] else "")]


def render_markdown(rows: list[dict[str, Any]], dataset: str, command: str | None = None) -> str:
    """One Markdown table for one dataset (rows as from `collect_rows`), under the command that regenerates it."""
    rows = sorted((r for r in rows if r["dataset"] == dataset),
                  key=lambda r: (*_protocol_order(r), -r["test_worst_group_acc_mean"], r["method"]))
    show_providers = any(c.get("dist") != CORE_DIST for r in rows for c in r["components"].values())
    cols = ["Method", "Backbone", "Selection", "Test worst-group acc.", "Test avg acc.", "Seeds", "Train groups",
            "Val groups"] + (["Providers"] if show_providers else [])
    lines = [
        f"### {dataset}", "", *([f"Regenerate: `{command}`", ""] if command else []),
        f"{_run_count_sentence(rows)} For each selection protocol, the epoch of every run is the one the protocol "
        "chose; for each method and backbone, only its configurations with the most seeds are compared, and the one "
        f"with the best mean of the protocol's selection metric over its seeds is reported.{_left_out_sentence(rows)}",
        "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(_cells(r) + ([_providers(r)] if show_providers else [])) + " |" for r in rows]
    lines += ["", "Worst-group acc. = min over groups of per-group test accuracy; avg acc. = per-example test "
              "accuracy (with several tasks, each is the mean over tasks); both in percent, mean ± sample std over "
              "seeds (the value alone for a single seed). Train groups: the algorithm used training group labels. "
              "Val groups: validation group labels were used, by the algorithm or by the selection protocol (to "
              "choose the epoch and configuration). *Italic* oracle rows select on test labels, test group labels "
              "included, and are upper bounds, not results.", ""]
    return "\n".join(lines)


Warn = Callable[[SkippedRun], None]


def checked_rows(runs_dir: Path, warn: Warn | None = None,
                 only: Collection[Path] | None = None) -> list[dict[str, Any]]:
    """Rows, or a ConfigError saying why there are none and what to do. Each damaged run directory that
    was skipped is passed to `warn` (before any error, so the caller can say why runs are missing)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ConfigError(f"runs directory {runs_dir} does not exist; pass the directory the runs were written "
                          f"under (by default ./runs)")
    rows, skipped = scan_rows(runs_dir, only)
    for skip in skipped if warn is not None else []:
        warn(skip)
    if not rows:
        damaged = f"; {_plural(len(skipped), 'damaged run')} skipped" if skipped else ""
        raise ConfigError(f"no finished runs under {runs_dir} (a run is finished when its directory holds "
                          f"{FINAL} with selection results){damaged}; run `robustbench-mtl run ...` first")
    return rows


def write_leaderboards(runs_dir: Path, out_dir: Path, warn: Warn | None = None,
                       only: Collection[Path] | None = None, command: str | None = None) -> list[Path]:
    """Write `<dataset>.md` and `<dataset>.json` (the rows) per dataset into out_dir; return the paths.
    `command`, when given, is printed at the top of each table as the command that regenerates it."""
    rows = checked_rows(runs_dir, warn, only)
    paths = []
    for dataset in sorted({r["dataset"] for r in rows}):
        md, js = Path(out_dir) / f"{dataset}.md", Path(out_dir) / f"{dataset}.json"
        atomic_write_text(md, render_markdown(rows, dataset, command))
        atomic_write_json(js, [r for r in rows if r["dataset"] == dataset])
        paths += [md, js]
    return paths


def leaderboard_markdown(runs_dir: Path, warn: Warn | None = None, only: Collection[Path] | None = None) -> str:
    """Every dataset's table, one after another (for printing)."""
    rows = checked_rows(runs_dir, warn, only)
    return "\n".join(render_markdown(rows, d) for d in sorted({r["dataset"] for r in rows}))


__all__ = ["scan_rows", "collect_rows", "checked_rows", "render_markdown", "write_leaderboards", "leaderboard_markdown"]
