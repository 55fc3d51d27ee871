"""Render: leaderboard rows as Markdown, JSON, CSV (pandas) or a LaTeX booktabs tabular, one dataset at a time."""
from __future__ import annotations

import re
from typing import Any, Callable

import pandas as pd

from ..errors import ConfigError
from ..results import dumps
from .markdown import (hparams_text, ordered, pct, provenance_text, render_markdown, selection_cell,
                       test_labels_text, value_text)
from .multitask import dataset_tasks

FORMATS = ("md", "json", "csv", "tex")


def parse_formats(text: str) -> tuple[str, ...]:
    """`md,json,...` -> the formats, in order without repeats; an unknown one is a ConfigError."""
    names = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    bad = [f for f in names if f not in FORMATS]
    if bad or not names:
        what = f"unknown format {bad[0]!r} in --format" if bad else "--format names no format"
        raise ConfigError(f"{what}; choose from {', '.join(FORMATS)} (comma-separated)")
    return names


def _joined(values: list[Any] | None) -> str:
    # str() for scalars, so a list of booleans reads False/True like pandas' own boolean columns.
    return "; ".join("" if v is None else str(v) if isinstance(v, (str, bool, int, float)) else value_text(v)
                     for v in values or [])


def _csv_record(r: dict[str, Any]) -> dict[str, Any]:
    """One flat CSV line: fractions at full precision, lists joined with `; `."""
    cite = r["citation"] or {}
    prov = r["provenance"] or {}
    return {
        **{k: r[k] for k in ("dataset", "method", "backbone", "source", "protocol", "selection", "oracle",
                             "test_worst_group_acc_mean", "test_worst_group_acc_std", "test_worst_group_acc_sem",
                             "test_avg_acc_mean", "test_avg_acc_std", "test_avg_acc_sem", "avg_metric",
                             "n_seeds")},
        "seeds": _joined(r["seeds"]), "uses_train_groups": r["uses_train_groups"],
        "uses_val_groups_any": r["uses_val_groups_any"], "n_configurations": r["n_configurations"],
        "selected_hparams": hparams_text(r), "selection_rule": r["selection_rule"],
        **{f"provenance_{k}": _joined(v) for k, v in prov.items()},
        "citation": f"{cite['paper']}, {cite['tables']}" if cite else None, "runs": _joined(r["runs"]),
    }


def _task_record(r: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """A multi-task dataset's extra columns: per task test, validation and training-subset accuracy and ρ_spur
    (mean, std), and Δm."""
    out: dict[str, Any] = {}
    for name, field in (("test_acc", "test_task_acc"), ("val_acc", "val_task_acc"), ("train_acc", "train_task_acc"),
                        ("rho_spur", "test_rho_spur")):
        for t in tasks:
            stats = (r[field] or {}).get(t) or {}
            out.update({f"{name}_{t}_mean": stats.get("mean"), f"{name}_{t}_std": stats.get("std")})
    return {**out, "delta_m_mean": r["delta_m_mean"], "delta_m_std": r["delta_m_std"],
            "delta_m_seeds": _joined(r["delta_m_seeds"]), "delta_m_note": r["delta_m_note"]}


def _metric_record(r: dict[str, Any]) -> dict[str, Any]:
    """The extra test metrics (`--metric`): `test_<name>_mean`, `_std`."""
    return {f"test_{m}_{k}": (s or {}).get(k) for m, s in (r.get("test_metrics") or {}).items() for k in ("mean", "std")}


def render_csv(rows: list[dict[str, Any]], dataset: str, command: str | None = None) -> str:
    """One line per row (`command` has no place in CSV and is not written); a multi-task dataset's rows
    also have the columns of `_task_record`."""
    mine = ordered([r for r in rows if r["dataset"] == dataset])
    tasks = dataset_tasks(mine)
    records = [{**_csv_record(r), **_metric_record(r), **(_task_record(r, tasks) if tasks else {})} for r in mine]
    return pd.DataFrame(records).to_csv(index=False)


def _group_labels(r: dict[str, Any]) -> str:
    """Where group labels were used: train, val, and test for an oracle whose metric reads test groups."""
    test_groups = r["oracle"] and test_labels_text(r) == " (test groups)"
    used = {"train": r["uses_train_groups"], "val": r["uses_val_groups_any"], "test": test_groups}
    return "+".join(name for name, yes in used.items() if yes) or "none"


def _tex_record(r: dict[str, Any]) -> dict[str, str]:
    reported = r["source"] == "reported"
    return {"Method": r["method"], "Backbone": r["backbone"],
            "Selection": selection_cell(r).strip("*"),
            "Worst-group acc.": pct(r["test_worst_group_acc_mean"], r["test_worst_group_acc_std"]),
            "Avg acc.": pct(r["test_avg_acc_mean"], r["test_avg_acc_std"]),
            "Seeds": "" if r["n_seeds"] is None else str(r["n_seeds"]),
            "Group labels": _group_labels(r),
            "Source": f"reported ({r['citation']['tables']})" if reported else "reproduced"}


def render_tex(rows: list[dict[str, Any]], dataset: str, command: str | None = None) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}); every cell escaped by pandas, ± as $\\pm$."""
    df = pd.DataFrame([_tex_record(r) for r in ordered([r for r in rows if r["dataset"] == dataset])])
    # Escaping happens first, so this is the only LaTeX markup in the cells; ± never comes from escaping.
    body = df.to_latex(index=False, escape=True, column_format="lllrrrll").replace("±", r"$\pm$")
    head = [f"% {dataset}: test accuracy in percent, mean $\\pm$ sample std over seeds. "
            "Needs \\usepackage{booktabs}."]
    provs = sorted({provenance_text(r) for r in rows if r["dataset"] == dataset and r["source"] != "reported"})
    head += [f"% Reproduced rows' provenance: {p}" for p in provs]
    head += [f"% Regenerate: {command}"] if command else []
    return "\n".join(head) + "\n" + body


def render_json(rows: list[dict[str, Any]], dataset: str, command: str | None = None) -> str:
    """The rows, complete (`command` has no place in a JSON list and is not written)."""
    return dumps(ordered([r for r in rows if r["dataset"] == dataset])) + "\n"


# (rows, dataset, command) -> text, per format.
RENDERERS: dict[str, Callable[[list[dict[str, Any]], str, str | None], str]] = {
    "md": render_markdown, "json": render_json, "csv": render_csv, "tex": render_tex}


def file_stem(text: str) -> str:
    """A method or dataset name as part of a file name (`mt_l1 + simclr` -> `mt_l1+simclr`)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text.replace(" + ", "+")).strip("_")
