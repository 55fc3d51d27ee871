"""Markdown leaderboard tables: one per dataset, with selected hparams and footnoted provenance and sources."""
from __future__ import annotations

import json
from typing import Any

from ..metrics import GROUP_FREE_METRICS
from ..registry import CORE_DIST
from ..saliency import MAX_EXAMPLES
from .fit_table import fit_table
from .multitask import BASELINE, dataset_tasks, has_rho
from .select import plural, protocol_order


def pct(mean: float | None, std: float | None) -> str:
    """Percent, `mean ± std`; a single seed has no std, so only its value; nothing reported, blank."""
    if mean is None:
        return ""
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def selection_cell(row: dict[str, Any]) -> str:
    """Oracle rows are italic and always say "oracle", whatever a plugin protocol calls itself."""
    label = row["selection"]
    if not row["oracle"]:
        return label
    return f"*{label}*" if "oracle" in label.lower() else f"*{label} (oracle)*"


# SubpopBench's attribute-availability settings (group labels = attributes): (train, val) -> cell text.
SETTINGS = {(False, False): "none", (False, True): "val", (True, True): "train + val", (True, False): "train"}


def setting_text(row: dict[str, Any]) -> str:
    """Where group (attribute) labels were used, in training and in validation: the row's setting."""
    return SETTINGS[(bool(row["uses_train_groups"]), bool(row["uses_val_groups_any"]))]


def test_labels_text(row: dict[str, Any]) -> str:
    """What an oracle row read on test: its class labels only when its metric is a known group-free one,
    else (and for a plugin's metric, which cannot be told) test group labels."""
    name = str(row.get("selection_metric") or "").partition("/")[2].partition("@")[0]
    return " (test labels)" if name in GROUP_FREE_METRICS else " (test groups)"


def value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def hparams_text(row: dict[str, Any]) -> str:
    """`scope.field=value` of the hparams the chosen configuration was selected by ("" when nothing varied)."""
    return ", ".join(f"{k}={value_text(v)}" for k, v in (row.get("selected_hparams") or {}).items())


def provenance_text(row: dict[str, Any]) -> str:
    """One line: package version, commit (and dirty), torch, device; `a / b` where the seeds' runs disagree."""
    prov = row["provenance"]

    def one(field: str) -> str:
        values = [str(v) for v in prov.get(field, []) if v is not None]
        return " / ".join(values) or "?"

    commits = [c[:8] for c in prov.get("git_commit", []) if c]
    dirty = {True: "dirty", False: "clean"}
    state = " / ".join(dirty[d] for d in prov.get("git_dirty", []) if d in dirty)
    git = f"git {' / '.join(commits)}" + (f" ({state})" if state else "") if commits else "no git commit"
    return f"{CORE_DIST} {one('version')}, {git}, torch {one('torch')}, {one('device_name')}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a value holding a pipe would split the cell


def _providers(row: dict[str, Any]) -> str:
    outside = [f"{kind}: {c.get('dist')} {c.get('version')}" for kind, c in (row["components"] or {}).items()
               if c.get("dist") != CORE_DIST]
    return "; ".join(outside) or CORE_DIST


def ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """By protocol (see `protocol_order`), reproduced rows by descending worst-group mean, each followed by the
    reported rows of its method; reported rows of methods not run come last in their protocol."""
    out: list[dict[str, Any]] = []
    for order in sorted({protocol_order(r) for r in rows}):
        block = [r for r in rows if protocol_order(r) == order]
        mine = sorted((r for r in block if r["source"] != "reported"),
                      key=lambda r: (-r["test_worst_group_acc_mean"], r["method"], r["backbone"]))
        theirs = sorted((r for r in block if r["source"] == "reported"),
                        key=lambda r: (-r["test_worst_group_acc_mean"], r["method"], r["backbone"]))
        placed: set[int] = set()
        for row in mine:
            beside = [r for r in theirs if r["method"] == row["method"] and id(r) not in placed]
            placed.update(id(r) for r in beside)
            out += [row, *beside]
        out += [r for r in theirs if id(r) not in placed]
    return out


def _run_count_sentence(rows: list[dict[str, Any]]) -> str:
    """Runs behind a table: the (method, backbone) groups' counts summed (each run is in one group)."""
    groups = {(r["method"], r["backbone"]): (r["n_run_dirs"], r["n_distinct_runs"]) for r in rows}
    dirs, distinct = (sum(c[i] for c in groups.values()) for i in (0, 1))
    if dirs == distinct:
        return f"{plural(distinct, 'finished run')}."
    # dirs > distinct >= 1 here, so "directories" is always plural.
    return (f"{dirs} run directories, {plural(distinct, 'distinct run')} (the same configuration and seed "
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


class _Notes:
    """Numbered footnotes, one per distinct text: rows with the same provenance or source share one."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.texts = prefix, {}

    def mark(self, text: str) -> str:
        return f"[{self.prefix}{self.texts.setdefault(text, len(self.texts) + 1)}]"

    def lines(self) -> list[str]:
        return [f"- [{self.prefix}{n}] {text}" for text, n in self.texts.items()]


def _citation_text(row: dict[str, Any]) -> str:
    cite = row["citation"]
    return f"{cite['short']}, {cite['tables']}." + (f" {cite['note']}" if cite.get("note") else "")


def _references(rows: list[dict[str, Any]]) -> list[str]:
    """The full reference of each paper the reported rows cite, once."""
    papers = {r["citation"]["short"]: r["citation"]["paper"] for r in rows if r["source"] == "reported"}
    return [f"- {short}: {paper}." for short, paper in sorted(papers.items())]


def _of_seeds(s: dict[str, Any], n_seeds: int | None) -> str:
    """How many seeds a per-task value is over, when fewer than the row's (e.g. runs older than ρ_spur)."""
    return f" (n={s['n']})" if n_seeds is not None and s["n"] < n_seeds else ""


def task_pct(s: dict[str, Any] | None, n_seeds: int | None) -> str:
    return "" if not s or s["mean"] is None else pct(s["mean"], s["std"]) + _of_seeds(s, n_seeds)


def rho_text(s: dict[str, Any] | None, n_seeds: int | None) -> str:
    """ρ_spur as a fraction with three decimals (as MT-CRL prints it), `mean ± std`."""
    if not s or s["mean"] is None:
        return ""
    text = f"{s['mean']:.3f}" if s["std"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"
    return text + _of_seeds(s, n_seeds)


def delta_text(r: dict[str, Any], notes: _Notes) -> str:
    """Δm in percent, signed, `mean ± std` over shared seeds; "baseline" for ERM itself; — with a footnote."""
    if r["source"] == "reported":
        return ""
    if r["method"] == BASELINE and r["delta_m_mean"] is not None:
        return "baseline"
    if r["delta_m_mean"] is None:
        return f"— {notes.mark(r['delta_m_note'] or 'no Δm')}"
    m, s, n = r["delta_m_mean"], r["delta_m_std"], len(r["delta_m_seeds"])
    text = f"{100 * m:+.1f}" if s is None else f"{100 * m:+.1f} ± {100 * s:.1f}"
    return text + (f" (n={n})" if r["n_seeds"] is not None and n < r["n_seeds"] else "")


def _task_cells(r: dict[str, Any], tasks: list[str], rho: bool, deltas: _Notes) -> tuple[list[str], list[str]]:
    """(per-task test accuracy cells, which precede the average; ρ_spur cells and Δm, which follow it)."""
    accs, rhos = r["test_task_acc"] or {}, r["test_rho_spur"] or {}
    before = [task_pct(accs.get(t), r["n_seeds"]) for t in tasks]
    after = [rho_text(rhos.get(t), r["n_seeds"]) for t in tasks] if rho else []
    return before, [*after, delta_text(r, deltas)]


def _metric_cells(r: dict[str, Any], metrics: list[str]) -> list[str]:
    """The extra test metrics (`--metric`), percent `mean ± std` like the accuracies; blank where absent."""
    values = r.get("test_metrics") or {}
    return [task_pct(values.get(m), r["n_seeds"]) for m in metrics]


def _cells(r: dict[str, Any], runs: _Notes, papers: _Notes, metrics: list[str]) -> list[str]:
    reported = r["source"] == "reported"
    avg = pct(r["test_avg_acc_mean"], r["test_avg_acc_std"])
    if avg and r["avg_metric"] != "avg_acc":
        avg += " †"
    return [r["method"], r["backbone"], selection_cell(r),
            pct(r["test_worst_group_acc_mean"], r["test_worst_group_acc_std"]), avg, *_metric_cells(r, metrics),
            "" if r["n_seeds"] is None else str(r["n_seeds"]),
            "yes" if r["uses_train_groups"] else "no",
            ("yes" if r["uses_val_groups_any"] else "no") + (test_labels_text(r) if r["oracle"] else ""),
            setting_text(r),
            "" if reported else str(r["n_configurations"]), _cell(hparams_text(r)),
            f"reported {papers.mark(_citation_text(r))}" if reported else runs.mark(provenance_text(r))]


NOTE = ("Worst-group acc. = min over groups of per-group test accuracy; avg acc. = per-example test accuracy "
        "(with several tasks, each is the mean over tasks); both in percent, mean ± sample std over seeds (the "
        "value alone for a single seed). Train groups: the algorithm used training group labels. Val groups: "
        "validation group labels were used, by the algorithm or by the selection protocol (to choose the epoch "
        "and configuration). Attr. setting: SubpopBench's attribute-availability setting of the row, where group "
        "(attribute) labels were used: none (unknown in training and validation), val (unknown in training, "
        "known in validation), train + val (known in both), train (training only). *Italic* oracle rows select "
        "on test labels (test group labels too, unless marked \"test labels\") and are upper bounds, not results. "
        "Configs: configurations compared; Selected hparams: the chosen "
        "configuration's values of the hparams on which they differ (`--set` spelling; blank when only one was "
        "compared; the full configuration is in the JSON rows). Source: the runs' provenance (package version, "
        "git commit, torch, device), or the paper a reported row is copied from (blank cells: not reported).")


MULTITASK_NOTE = (
    "Test acc. <task>: the task's test accuracy; Test avg acc. is their mean, Test worst-group acc. the mean of "
    "the tasks' worst-group accuracies.{rho} Δm vs erm: (1/T) Σ_t (acc_t − acc_t^ERM) / acc_t^ERM in percent, "
    "against vanilla multi-task ERM (`erm` without --aux) with the same backbone and selection protocol, per "
    "seed both ran, then mean ± std over those seeds. (n=k): over k seeds only.")
RHO_NOTE = (
    " ρ_spur <task>: the share of the input saliency of the task's correct-class logit that lies on its spurious "
    "input region (the dataset's `spurious_regions`), for the protocol's selected model on the test split (a "
    f"fixed subset of at most {MAX_EXAMPLES:,} examples); lower is better; blank for runs without it.")


def _columns(tasks: list[str], rho: bool, metrics: list[str]) -> list[str]:
    """The table's columns: per-task accuracy, ρ_spur and Δm only for a multi-task dataset; extra metrics."""
    accs = [f"Test acc. {t}" for t in tasks]
    after = ([f"ρ_spur {t}" for t in tasks] if rho else []) + (["Δm vs erm"] if tasks else [])
    extra = [f"Test {m}" for m in metrics]
    return ["Method", "Backbone", "Selection", "Test worst-group acc.", *accs, "Test avg acc.", *after, *extra, "Seeds",
            "Train groups", "Val groups", "Attr. setting", "Configs", "Selected hparams", "Source"]


def _row_cells(r: dict[str, Any], tasks: list[str], rho: bool, notes: tuple[_Notes, _Notes, _Notes],
               metrics: list[str]) -> list[str]:
    runs, papers, deltas = notes
    cells = _cells(r, runs, papers, metrics)
    if tasks:
        before, after = _task_cells(r, tasks, rho, deltas)
        cells[4:5] = [*before, cells[4], *after]  # cells[4] is the average
    return cells


def render_markdown(rows: list[dict[str, Any]], dataset: str, command: str | None = None) -> str:
    """One Markdown table for one dataset (rows as from `collect_rows`, plus any reported rows), under the
    command that regenerates it. A multi-task dataset's table adds per-task accuracy, ρ_spur and Δm."""
    rows = ordered([r for r in rows if r["dataset"] == dataset])
    mine = [r for r in rows if r["source"] != "reported"]
    tasks = dataset_tasks(rows)
    rho = bool(tasks) and has_rho(mine)
    show_providers = any(c.get("dist") != CORE_DIST for r in mine for c in r["components"].values())
    metrics = list(next((r["test_metrics"] for r in mine if r.get("test_metrics")), None) or [])
    cols = _columns(tasks, rho, metrics) + (["Providers"] if show_providers else [])
    notes = (_Notes(""), _Notes("R"), _Notes("Δ"))
    runs, papers, deltas = notes
    body = ["| " + " | ".join(_row_cells(r, tasks, rho, notes, metrics) + ([_providers(r) if r in mine else ""]
                                                                 if show_providers else [])) + " |" for r in rows]
    dagger = any(r["avg_metric"] not in (None, "avg_acc") for r in rows)
    lines = [
        f"### {dataset}", "", *([f"Regenerate: `{command}`", ""] if command else []),
        f"{_run_count_sentence(mine)} For each selection protocol, the epoch of every run is the one the protocol "
        "chose; for each method and backbone, only its configurations with the most seeds are compared, and the one "
        f"with the best mean of the protocol's selection metric over its seeds is reported.{_left_out_sentence(mine)}",
        "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols), *body,
        "", NOTE + (" † The paper's average is not per-example accuracy: see the row's `avg_metric` (e.g. "
                    "avg_acc_duplicated, over identity-duplicated rows)." if dagger else "")
        + (" " + MULTITASK_NOTE.format(rho=RHO_NOTE if rho else "") if tasks else "")
        + (f" Test {', Test '.join(metrics)}: the test metric of that name at the selected epochs (formulas: "
           "docs/results-format.md), in percent, mean ± std over seeds." if metrics else ""), "",
        *runs.lines(), *deltas.lines(), *papers.lines(), *_references(rows), "",
        *(fit_table(mine, tasks, task_pct, rho_text) if tasks and mine else []),
    ]
    return "\n".join(lines)
