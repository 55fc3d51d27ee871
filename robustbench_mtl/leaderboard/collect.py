"""Collect: finished run directories -> one record per (run, selection protocol) -> leaderboard rows."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import pandas as pd

from ..errors import ConfigError
from ..registry import CORE_DIST
from ..results import FINAL, RunRecord, SkippedRun, scan_runs
from .multitask import add_delta_m, entry_task_values, run_tasks
from .select import plural, protocol_order, summarise

Warn = Callable[[SkippedRun], None]


def _method(config: dict[str, Any], split_by: Sequence[str] = ()) -> str:
    """The algorithm with its --aux objectives (its own extra objectives, l1 of *_l1, are in its name), and the
    values of the `split_by` hparams the run has: `erm + mtcrl [mtcrl.girm=var]`. Runs that differ in those
    values are separate methods (rows), not configurations that selection chooses between."""
    aux = config["spec"].get("aux") or []
    name = " + ".join([config["spec"]["algorithm"], *[o for o in config["objectives"] if o in aux]])
    hparams = _obj(config, "hparams")
    found = [(key, _obj(hparams, key.partition(".")[0])) for key in split_by]
    parts = [f"{key}={_text(fields[key.partition('.')[2]])}" for key, fields in found
             if key.partition(".")[2] in fields]
    return f"{name} [{', '.join(parts)}]" if parts else name


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def check_split_by(split_by: Sequence[str], bases: list[dict[str, Any]]) -> None:
    """Each split_by key is `scope.field` and some collected run has it (else it is a typo: one line)."""
    for key in split_by:
        scope, _, field = key.partition(".")
        if not scope or not field or "." in field:
            raise ConfigError(f"split-by key {key!r} must look like scope.field (e.g. mtcrl.girm)")
        if bases and not any(f"[{key}=" in b["method"] or f", {key}=" in b["method"] for b in bases):
            raise ConfigError(f"split-by key {key!r}: no collected run has this hparam; `robustbench-mtl show` "
                              f"lists a component's hparams")


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


def _obj(parent: Any, key: str) -> dict[str, Any]:
    value = parent.get(key) if isinstance(parent, dict) else None
    return value if isinstance(value, dict) else {}


def _provenance(config: dict[str, Any]) -> dict[str, Any]:
    """The provenance a row shows (config.json `provenance`); None where the run did not record it."""
    prov = _obj(config, "provenance")
    versions, git = _obj(prov, "versions"), _obj(prov, "git")
    found = {"version": versions.get(CORE_DIST), "git_commit": git.get("commit"), "git_dirty": git.get("dirty"),
             "torch": versions.get("torch"), "device_name": prov.get("device_name")}
    # Rows list distinct values, so only plain scalars are kept; anything else was not a real record.
    return {f"prov_{k}": v if isinstance(v, (str, bool)) else None for k, v in found.items()}


def _run_base(runs_dir: Path, run: RunRecord, split_by: Sequence[str] = ()) -> dict[str, Any]:
    """What one run contributes to every protocol's record (config.json's shape is checked by scan_runs)."""
    cfg = run.config
    key, seed = _config_key(cfg)
    fingerprint = _obj(cfg, "data").get("fingerprint")
    return {"dataset": cfg["spec"]["data"], "method": _method(cfg, split_by), "backbone": _backbone(cfg),
            "config_key": key, "seed": seed, "run": run.path.relative_to(runs_dir).as_posix(),
            "uses_train_groups": cfg["algorithm_flags"]["uses_train_groups"],
            "algorithm_uses_val_groups": cfg["algorithm_flags"]["uses_val_groups"],
            "components": cfg["components"], "fingerprint": fingerprint if isinstance(fingerprint, str) else None,
            "tasks": run_tasks(cfg), **_provenance(cfg)}


def _run_records(base: dict[str, Any], final: dict[str, Any], metrics: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One record per usable selection protocol of one run; a protocol missing a metric is skipped. Each of
    `metrics` (test metric names, e.g. macro_f1) is kept as `metric:<name>` (None where the run lacks it)."""
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
                    "score": score, "wg": wg, "avg": avg, "epoch": epoch if isinstance(epoch, int) else None,
                    **{f"metric:{m}": _value(entry, f"test/{m}") for m in metrics},
                    **entry_task_values(entry, base["tasks"])})
    return out


def _run_counts(bases: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, int]]:
    """Per (dataset, method, backbone): finished run directories read, and distinct (configuration, seed)."""
    dirs: dict[tuple[str, str, str], int] = {}
    distinct: dict[tuple[str, str, str], set[tuple[str, int]]] = {}
    for b in bases:
        key = (b["dataset"], b["method"], b["backbone"])
        dirs[key] = dirs.get(key, 0) + 1
        distinct.setdefault(key, set()).add((b["config_key"], b["seed"]))
    return {k: {"n_run_dirs": n, "n_distinct_runs": len(distinct[k])} for k, n in dirs.items()}


def _scan(runs_dir: Path, only: Collection[Path] | None, split_by: Sequence[str] = (),
          metrics: Sequence[str] = ()) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[SkippedRun]]:
    """(run bases, per-protocol records, skipped runs) of the finished runs under runs_dir (or in `only`),
    methods split by the `split_by` hparams (see `_method`)."""
    runs, skipped = scan_runs(runs_dir)
    if only is not None:
        keep = {Path(d).resolve() for d in only}
        runs = [r for r in runs if r.path.resolve() in keep]
        skipped = [s for s in skipped if s.path.resolve() in keep]
    bases = [_run_base(runs_dir, run, split_by) for run in runs]
    check_split_by(split_by, bases)
    return bases, [rec for base, run in zip(bases, runs) for rec in _run_records(base, run.final, metrics)], skipped


def run_records(runs_dir: Path, only: Collection[Path] | None = None, split_by: Sequence[str] = ()) -> pd.DataFrame:
    """Every usable (run, protocol) record under runs_dir, duplicates included (e.g. for hparam plots):
    the test metrics at the protocol's epoch (`wg`, `avg`), its selection `score`, and `config_key`."""
    return pd.DataFrame(_scan(Path(runs_dir), only, split_by)[1])


def scan_rows(runs_dir: Path, only: Collection[Path] | None = None, split_by: Sequence[str] = (),
              metrics: Sequence[str] = ()) -> tuple[list[dict[str, Any]], list[SkippedRun]]:
    """(rows, skipped): one row per (dataset, method, backbone, selection protocol) over the usable
    finished runs under runs_dir (only the run directories in `only`, when given: e.g. one sweep's jobs),
    and the damaged run directories left out with the reason."""
    runs_dir = Path(runs_dir)
    bases, records, skipped = _scan(runs_dir, only, split_by, metrics)
    if not records:
        return [], skipped
    counts = _run_counts(bases)
    df = pd.DataFrame(records).sort_values("run")
    # The same configuration and seed finished twice (e.g. two --out dirs) is one seed, not two.
    df = df.drop_duplicates(subset=["config_key", "seed", "protocol"], keep="first")
    rows = add_delta_m([{**summarise(g, metrics), **counts[key[:3]]}
                        for key, g in df.groupby(["dataset", "method", "backbone", "protocol"], sort=True)])
    return sorted(rows, key=lambda r: (r["dataset"], *protocol_order(r), -r["test_worst_group_acc_mean"],
                                       r["method"], r["backbone"])), skipped


def collect_rows(runs_dir: Path) -> list[dict[str, Any]]:
    """The rows of `scan_rows`, without the skipped runs."""
    return scan_rows(runs_dir)[0]


def checked_rows(runs_dir: Path, warn: Warn | None = None, only: Collection[Path] | None = None,
                 split_by: Sequence[str] = (), metrics: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows, or a ConfigError saying why there are none and what to do. Each damaged run directory that
    was skipped is passed to `warn` (before any error, so the caller can say why runs are missing)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ConfigError(f"runs directory {runs_dir} does not exist; pass the directory the runs were written "
                          f"under (by default ./runs)")
    rows, skipped = scan_rows(runs_dir, only, split_by, metrics)
    for skip in skipped if warn is not None else []:
        warn(skip)
    missing = [m for m in metrics if rows and not any((r["test_metrics"] or {}).get(m, {}).get("n") for r in rows)]
    if missing:
        raise ConfigError(f"metric {missing[0]!r}: no collected run has test/{missing[0]} (names as in final.json's "
                          f"`test` entries, e.g. macro_f1, auroc, ece)")
    if not rows:
        damaged = f"; {plural(len(skipped), 'damaged run')} skipped" if skipped else ""
        raise ConfigError(f"no finished runs under {runs_dir} (a run is finished when its directory holds "
                          f"{FINAL} with selection results){damaged}; run `robustbench-mtl run ...` first")
    return rows


__all__ = ["Warn", "scan_rows", "collect_rows", "checked_rows", "run_records"]
