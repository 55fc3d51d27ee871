"""`robustbench-mtl leaderboard` and `plot`: the click layer over robustbench_mtl.leaderboard."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from .cli_common import err, out, print_json as _print_json
from .cli_common import fail_cleanly as _fail_cleanly


def _warn_skipped(skip: Any) -> None:
    """A damaged run directory, on stderr, so that JSON output stays pure JSON on stdout."""
    err.print(f"[yellow]warning:[/] skipped {escape(str(skip.path))}: {escape(skip.reason)}",
              highlight=False, soft_wrap=True)


@click.command()
@click.argument("runs_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="write <dataset>.<format> files (and comparisons) here instead of printing")
@click.option("--json", "as_json", is_flag=True, help="print the rows (or the comparison) as JSON")
@click.option("--format", "fmt", default=None, metavar="md,json,csv,tex",
              help="formats to write with --out (default md,json), or the one format to print")
@click.option("--reported", is_flag=True, help="add the papers' reported numbers as labelled rows")
@click.option("--compare", nargs=2, default=None, metavar="METHOD_A METHOD_B",
              help='paired comparison A - B over shared seeds, e.g. --compare "mt_l1 + simclr" erm')
@click.option("--protocol", default=None, help="with --compare: only this selection protocol (name or label)")
@click.option("--dataset", default=None, help="with --compare: only this dataset")
@click.option("--split-by", "split_by", multiple=True, metavar="SCOPE.FIELD",
              help="runs that differ in this hparam are separate rows (e.g. mtcrl.girm); repeatable")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="an extra test metric column (e.g. macro_f1, auroc, ece); repeatable")
@_fail_cleanly
def leaderboard(runs_dir: Path, out_dir: Path | None, as_json: bool, fmt: str | None, reported: bool,
                compare: tuple[str, str] | None, protocol: str | None, dataset: str | None,
                split_by: tuple[str, ...], metrics: tuple[str, ...]) -> None:
    """Leaderboards (mean ± std over seeds) from the finished runs under RUNS_DIR.

    A damaged run directory (unreadable config.json or final.json) is skipped with a warning on stderr."""
    from . import leaderboard as lb
    from .errors import ConfigError

    if compare:
        result = lb.compare_methods(runs_dir, *compare, protocol=protocol, dataset=dataset, warn=_warn_skipped,
                                    split_by=split_by)
        if as_json:
            _print_json(result)
        else:
            click.echo(lb.comparison_markdown(result))
        for path in lb.write_comparison(result, out_dir) if out_dir else []:
            err.print(f"wrote {escape(str(path))}", highlight=False)  # stderr: --json keeps stdout pure JSON
        return
    if protocol or dataset:
        raise ConfigError("--protocol and --dataset select what --compare compares; add --compare A B")
    if out_dir is None:
        click.echo(lb.leaderboard_text(runs_dir, fmt or ("json" if as_json else "md"), _warn_skipped,
                                       reported=reported, split_by=split_by, metrics=metrics))
        return
    for path in lb.write_leaderboards(runs_dir, out_dir, _warn_skipped, formats=fmt or lb.DEFAULT_FORMATS,
                                      reported=reported, split_by=split_by, metrics=metrics):
        out.print(f"wrote {path}")


@click.command()
@click.argument("runs_dir", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="directory for the PNG and SVG files")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="also plot this one run's per-epoch curves (metrics.jsonl)")
@click.option("--protocol", default="val_worst_group", show_default=True,
              help="selection protocol whose chosen epochs the hparam plots use")
@click.option("--reported", is_flag=True, help="add the papers' reported numbers to the avg-vs-worst plots")
@_fail_cleanly
def plot(runs_dir: Path | None, out_dir: Path, run_dir: Path | None, protocol: str, reported: bool) -> None:
    """Plots (PNG and SVG) from the finished runs under RUNS_DIR and/or one run directory (--run).

    Average vs worst-group accuracy per method; worst-group accuracy against w_reg (l1.weight) and w_ssl
    (the aux objective's weight); with --run, that run's per-epoch curves."""
    from .leaderboard.plots import make_plots

    paths, notes = make_plots(runs_dir, out_dir, run_dir=run_dir, protocol=protocol, reported=reported,
                              warn=_warn_skipped)
    for note in notes:
        err.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    for path in paths:
        out.print(f"wrote {escape(str(path))}", highlight=False)
