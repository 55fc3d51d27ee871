"""Paired comparison of two methods over the seeds both ran: per-seed differences, mean, 95% t interval."""
from __future__ import annotations

import difflib
import math
import statistics
from typing import Any

from ..errors import ConfigError
from .markdown import selection_cell
from .select import protocol_order

LEVEL = 0.95
METRICS = {"worst_group": "test_worst_group_acc_per_seed", "avg": "test_avg_acc_per_seed"}


def _unknown(method: str, methods: list[str]) -> ConfigError:
    close = difflib.get_close_matches(method, methods, n=2, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return ConfigError(f"unknown method {method!r} in --compare; {hint}methods with finished runs: "
                       f"{', '.join(repr(m) for m in methods)}")


def _filter(rows: list[dict[str, Any]], key: str, wanted: str | None, option: str) -> list[dict[str, Any]]:
    if wanted is None:
        return rows
    keep = [r for r in rows if wanted in (r[key], r.get("selection") if key == "protocol" else None)]
    if not keep:
        names = sorted({r[key] for r in rows})
        raise ConfigError(f"no finished runs for {option} {wanted!r}; found: {', '.join(names)}")
    return keep


def interval(diffs: list[float]) -> dict[str, Any]:
    """Mean difference, sample std, standard error and the two-sided 95% Student-t interval (none for n < 2)."""
    n, mean = len(diffs), statistics.fmean(diffs)
    if n < 2:
        return {"n": n, "mean_diff": mean, "std": None, "sem": None, "t": None, "ci_low": None, "ci_high": None}
    from scipy import stats  # imported on use: scipy.stats is slow to import and only comparisons need it

    std = statistics.stdev(diffs)
    sem, t = std / math.sqrt(n), float(stats.t.ppf(0.5 + LEVEL / 2, n - 1))
    return {"n": n, "mean_diff": mean, "std": std, "sem": sem, "t": t, "ci_low": mean - t * sem,
            "ci_high": mean + t * sem}


def _pair(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """One protocol's comparison of two rows (their selected configurations), or None without shared seeds."""
    shared = sorted(set(a["seeds"]) & set(b["seeds"]))
    if not shared:
        return None
    per_seed = []
    for s in shared:
        i, j = a["seeds"].index(s), b["seeds"].index(s)
        entry: dict[str, Any] = {"seed": s, "run_a": a["runs"][i], "run_b": b["runs"][j]}
        for metric, col in METRICS.items():
            va, vb = a[col][i], b[col][j]
            entry.update({f"{metric}_a": va, f"{metric}_b": vb, f"{metric}_diff": va - vb})
        per_seed.append(entry)
    return {"dataset": a["dataset"], "backbone": a["backbone"], "protocol": a["protocol"],
            "selection": a["selection"], "oracle": a["oracle"], "seeds": shared, "n": len(shared),
            "seeds_a_only": sorted(set(a["seeds"]) - set(shared)),
            "seeds_b_only": sorted(set(b["seeds"]) - set(shared)),
            **{metric: interval([e[f"{metric}_diff"] for e in per_seed]) for metric in METRICS},
            "per_seed": per_seed}


def compare_rows(rows: list[dict[str, Any]], method_a: str, method_b: str, protocol: str | None = None,
                 dataset: str | None = None) -> dict[str, Any]:
    """`method_a` minus `method_b`, per (dataset, backbone, protocol) both have, over their shared seeds.

    Each method's configuration is the one its leaderboard row selected (on all its seeds); only the
    seeds both ran are paired. A ConfigError when a method is unknown or no seed is shared anywhere."""
    rows = [r for r in rows if r["source"] == "reproduced"]
    if method_a == method_b:
        raise ConfigError(f"--compare needs two different methods (got {method_a!r} twice)")
    methods = sorted({r["method"] for r in rows})
    for m in (method_a, method_b):
        if m not in methods:
            raise _unknown(m, methods)
    rows = _filter(_filter(rows, "dataset", dataset, "--dataset"), "protocol", protocol, "--protocol")
    index = {(r["dataset"], r["backbone"], r["protocol"], r["method"]): r for r in rows}
    both = sorted(((d, bb, p) for d, bb, p, m in index if m == method_a and (d, bb, p, method_b) in index),
                  key=lambda k: (k[0], k[1], protocol_order(index[(*k, method_a)])))
    if not both:
        raise ConfigError(f"{method_a!r} and {method_b!r} share no dataset, backbone and selection protocol; "
                          "both must have finished runs on the same dataset with the same backbone")
    pairs = [(_pair(index[(*k, method_a)], index[(*k, method_b)]), k) for k in both]
    done = [p for p, _ in pairs if p is not None]
    skipped = [f"{d} ({bb}, {p}): no shared seeds" for q, (d, bb, p) in pairs if q is None]
    if not done:
        a, b = index[(*both[0], method_a)], index[(*both[0], method_b)]
        raise ConfigError(f"no shared seeds: {method_a!r} has seeds {a['seeds']} and {method_b!r} has "
                          f"{b['seeds']} ({both[0][0]}, {both[0][1]}); run both with the same --seed values")
    return {"method_a": method_a, "method_b": method_b, "difference": "method_a - method_b", "level": LEVEL,
            "comparisons": done, "skipped": skipped}


def _pts(x: float | None, signed: bool = False) -> str:
    return "" if x is None else f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _ci(s: dict[str, Any]) -> str:
    return "" if s["ci_low"] is None else f"[{_pts(s['ci_low'], True)}, {_pts(s['ci_high'], True)}]"


def comparison_markdown(result: dict[str, Any]) -> str:
    """The summary table (one line per dataset, backbone and protocol), then the per-seed differences."""
    a, b, level = result["method_a"], result["method_b"], int(100 * result["level"])
    lines = [f"### {a} − {b}", "",
             f"Paired over the seeds both methods ran, each with the configuration its leaderboard row selected; "
             f"differences in percentage points, {level}% Student-t interval over seeds.", "",
             f"| Dataset | Backbone | Selection | n | Δ worst-group | {level}% CI | Δ avg | {level}% CI |",
             "|---|---|---|---|---|---|---|---|"]
    for c in result["comparisons"]:
        wg, avg = c["worst_group"], c["avg"]
        lines.append(f"| {c['dataset']} | {c['backbone']} | {selection_cell(c)} | {c['n']} | "
                     f"{_pts(wg['mean_diff'], True)} | {_ci(wg)} | {_pts(avg['mean_diff'], True)} | {_ci(avg)} |")
    lines += ["", *[f"Skipped: {s}." for s in result["skipped"]]] if result["skipped"] else []
    for c in result["comparisons"]:
        lines += ["", f"{c['dataset']} ({c['backbone']}, {c['selection']}), per seed:", "",
                  f"| Seed | WG {a} | WG {b} | Δ WG | Avg {a} | Avg {b} | Δ avg |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {e['seed']} | {_pts(e['worst_group_a'])} | {_pts(e['worst_group_b'])} | "
                  f"{_pts(e['worst_group_diff'], True)} | {_pts(e['avg_a'])} | {_pts(e['avg_b'])} | "
                  f"{_pts(e['avg_diff'], True)} |" for e in c["per_seed"]]
    return "\n".join(lines) + "\n"
