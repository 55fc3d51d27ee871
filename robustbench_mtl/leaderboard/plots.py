"""Plots (matplotlib, PNG and SVG): avg vs worst-group accuracy, accuracy against w_reg and w_ssl, run curves."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure  # no pyplot: no global figure state, nothing opens a window
from matplotlib.lines import Line2D

from ..errors import ConfigError
from ..results import FINAL, METRICS, atomic_write_bytes, read_json, read_jsonl
from .collect import Warn, checked_rows, run_records
from .markdown import selection_cell
from .render import file_stem
from .reported import reported_rows
from .select import flat_configuration, protocol_order

MARKERS = "osD^vPX*"


def _figure(width: float = 6.4, height: float = 4.8) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # PNG through Agg; savefig picks the SVG backend for .svg itself
    return fig


def _save(fig: Figure, stem: Path) -> list[Path]:
    """`stem.png` and `stem.svg`, each written atomically (never a half-written image)."""
    paths = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150)
        path = Path(f"{stem}.{ext}")
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def _colors() -> list[str]:
    return rcParams["axes.prop_cycle"].by_key()["color"]


def avg_vs_worst(rows: list[dict[str, Any]], dataset: str, stem: Path) -> list[Path]:
    """One point per method, backbone and protocol (error bars: std over seeds); reported rows hollow."""
    rows = [r for r in rows if r["dataset"] == dataset and r["test_avg_acc_mean"] is not None]
    groups = sorted({(r["method"], r["backbone"]) for r in rows})
    protocols = sorted({(protocol_order(r), selection_cell(r).strip("*")) for r in rows})
    color = {g: _colors()[i % len(_colors())] for i, g in enumerate(groups)}
    marker = {label: MARKERS[i % len(MARKERS)] for i, (_, label) in enumerate(protocols)}
    fig = _figure(9, 5)
    ax = fig.add_subplot()
    for r in rows:
        c, m = color[(r["method"], r["backbone"])], marker[selection_cell(r).strip("*")]
        std = [100 * (r[k] or 0) for k in ("test_avg_acc_std", "test_worst_group_acc_std")]
        ax.errorbar(100 * r["test_avg_acc_mean"], 100 * r["test_worst_group_acc_mean"], xerr=std[0], yerr=std[1],
                    fmt=m, color=c, mfc="none" if r["source"] == "reported" else c, capsize=3)
    handles = [Line2D([], [], color=color[g], lw=0, marker="o", label=f"{g[0]} ({g[1]})") for g in groups]
    handles += [Line2D([], [], color="gray", lw=0, marker=marker[label], label=label) for _, label in protocols]
    if any(r["source"] == "reported" for r in rows):
        handles.append(Line2D([], [], color="gray", lw=0, marker="o", mfc="none", label="reported (paper)"))
    # Outside the axes: with error bars everywhere, no corner inside is reliably empty.
    ax.legend(handles=handles, fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set(xlabel="test average accuracy (%)", ylabel="test worst-group accuracy (%)",
           title=f"{dataset}: mean ± std over seeds")
    ax.grid(alpha=0.3)
    return _save(fig, stem)


def _weights(config_key: str) -> dict[str, tuple[str, Any]]:
    """{plot name: (hparam key, value)}: w_reg = l1.weight, w_ssl = each --aux objective's weight."""
    flat = flat_configuration(config_key)
    found = {"w_reg": ("l1.weight", flat["l1.weight"])} if "l1.weight" in flat else {}
    for aux in flat.get("aux") or []:
        if f"{aux}.weight" in flat:
            found[f"w_ssl-{aux}" if len(flat["aux"]) > 1 else "w_ssl"] = (f"{aux}.weight", flat[f"{aux}.weight"])
    return found


def _sweep(data: pd.DataFrame, title: str, xlabel: str, stem: Path) -> list[Path]:
    """Worst-group and average test accuracy (mean ± std over runs) at each value, evenly spaced."""
    stats = data.groupby("value")[["wg", "avg"]].agg(["mean", "std", "count"]).sort_index()
    x = range(len(stats))
    fig = _figure()
    ax = fig.add_subplot()
    for col, label in (("wg", "worst-group"), ("avg", "average")):
        ax.errorbar(x, 100 * stats[(col, "mean")], yerr=100 * stats[(col, "std")].fillna(0), marker="o",
                    capsize=3, label=label)
    ax.set_xticks(list(x), [f"{v:.4g}\n(n={n})" for v, n in zip(stats.index, stats[("wg", "count")])])
    ax.set(xlabel=xlabel, ylabel="test accuracy (%)", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, stem)


def weight_sweeps(records: pd.DataFrame, protocol: str, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Per dataset, method and backbone: test accuracy at `protocol`'s epoch against each loss weight,
    over every finished run (other hparams and seeds pooled); a weight with one value is a note."""
    recs = records[(records["protocol"] == protocol) | (records["selection"] == protocol)]
    recs = recs.sort_values("run").drop_duplicates(subset=["config_key", "seed"], keep="first")
    paths, notes = [], []
    for (dataset, method, backbone), g in recs.groupby(["dataset", "method", "backbone"], sort=True):
        found = [(name, key, value, row) for row in g.itertuples() for name, (key, value) in
                 _weights(row.config_key).items()]
        for name in sorted({f[0] for f in found}):
            key = next(f[1] for f in found if f[0] == name)
            data = pd.DataFrame([{"value": v, "wg": r.wg, "avg": r.avg} for n, _, v, r in found if n == name])
            where = f"{dataset}, {method} ({backbone})"
            if data["value"].nunique() < 2:
                notes.append(f"{where}: {name} ({key}) has the single value {data['value'].iloc[0]}; no sweep to plot")
                continue
            label = selection_cell(g.iloc[0].to_dict()).strip("*")
            title = f"{where}, {label}\nmean ± std over runs (seeds and other hparams pooled)"
            paths += _sweep(data, title, f"{name.split('-')[0]} ({key})",
                            out_dir / f"{file_stem(dataset)}-{file_stem(method)}-{file_stem(backbone)}-{name}")
    return paths, notes


def _chosen_epochs(run_dir: Path) -> dict[str, int]:
    """Non-oracle protocols' chosen epochs from final.json, when the run finished ({} otherwise)."""
    try:
        selections = read_json(run_dir / FINAL)["selections"]
        return {e.get("label") or p: e["epoch"] for p, e in selections.items()
                if not e.get("oracle") and isinstance(e.get("epoch"), int)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def run_curves(run_dir: Path, stem: Path) -> list[Path]:
    """Val/test worst-group and average accuracy, and train loss, per epoch of one run (metrics.jsonl)."""
    epochs = pd.DataFrame([r for r in read_jsonl(Path(run_dir) / METRICS) if "phase" not in r])
    if epochs.empty or "epoch" not in epochs:
        raise ConfigError(f"{run_dir} has no epoch records in {METRICS}; --run takes one run directory")
    fig = _figure(11, 4.2)
    acc, loss = fig.subplots(1, 2)
    for split, style in (("val", "-"), ("test", "--")):
        for metric, label in (("worst_group_acc", "worst-group"), ("avg_acc", "average")):
            if f"{split}/{metric}" in epochs:
                acc.plot(epochs["epoch"], 100 * epochs[f"{split}/{metric}"], style, marker=".",
                         label=f"{split} {label}")
    for i, (label, epoch) in enumerate(_chosen_epochs(Path(run_dir)).items()):
        acc.axvline(epoch, color=_colors()[(i + 4) % len(_colors())], lw=0.8, ls=":", label=f"{label} epoch")
    acc.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{Path(run_dir).name}: accuracy")
    acc.legend(fontsize="small")
    if "train/loss" in epochs:
        loss.plot(epochs["epoch"], epochs["train/loss"], marker=".", label="train loss")
    loss.set(xlabel="epoch", ylabel="loss", title="train loss")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
    return _save(fig, stem)


def make_plots(runs_dir: Path | None, out_dir: Path, run_dir: Path | None = None,
               protocol: str = "val_worst_group", reported: bool = False,
               warn: Warn | None = None) -> tuple[list[Path], list[str]]:
    """Every plot of runs_dir (avg vs worst-group per dataset, weight sweeps) and of run_dir (curves):
    (paths written, one-line notes on what was skipped)."""
    if runs_dir is None and run_dir is None:
        raise ConfigError("plot needs RUNS_DIR (leaderboard plots), --run DIR (one run's curves), or both")
    out_dir, paths, notes = Path(out_dir), [], []
    if runs_dir is not None:
        rows = checked_rows(runs_dir, warn)
        if not any(protocol in (r["protocol"], r["selection"]) for r in rows):
            raise ConfigError(f"no finished runs have protocol {protocol!r}; found: "
                              f"{', '.join(sorted({r['protocol'] for r in rows}))}")
        rows += reported_rows({r["dataset"] for r in rows}) if reported else []
        for dataset in sorted({r["dataset"] for r in rows}):
            paths += avg_vs_worst(rows, dataset, out_dir / f"{file_stem(dataset)}-avg-vs-worst")
        more, notes = weight_sweeps(run_records(runs_dir), protocol, out_dir)
        paths += more
    if run_dir is not None:
        paths += run_curves(Path(run_dir), out_dir / f"run-{file_stem(Path(run_dir).resolve().name)}")
    return paths, notes
