"""Leaderboard outputs: the rows of a runs directory rendered to files (or text), and method comparisons."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Sequence

from ..errors import ConfigError
from ..results import atomic_write_json, atomic_write_text, dumps
from .collect import Warn, checked_rows
from .compare import compare_rows, comparison_markdown
from .markdown import ordered
from .render import FORMATS, RENDERERS, file_stem, parse_formats
from .reported import reported_rows

DEFAULT_FORMATS = ("md", "json")


def _rows(runs_dir: Path, warn: Warn | None, only: Collection[Path] | None, reported: bool,
          split_by: Sequence[str] = (), metrics: Sequence[str] = ()) -> list[dict[str, Any]]:
    rows = checked_rows(runs_dir, warn, only, split_by, metrics)
    # Reported rows only beside datasets that have runs: a table is never made of paper numbers alone.
    return rows + (reported_rows({r["dataset"] for r in rows}) if reported else [])


def _formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    return parse_formats(formats if isinstance(formats, str) else ",".join(formats))


def write_leaderboards(runs_dir: Path, out_dir: Path, warn: Warn | None = None,
                       only: Collection[Path] | None = None, command: str | None = None, *,
                       formats: str | Sequence[str] = DEFAULT_FORMATS, reported: bool = False,
                       split_by: Sequence[str] = (), metrics: Sequence[str] = ()) -> list[Path]:
    """Write `<dataset>.<format>` per dataset and format (default Markdown and JSON rows) into out_dir;
    return the paths. `command`, when given, is printed at the top of each table as the command that
    regenerates it; `reported` adds the papers' numbers as "reported" rows; runs that differ in a `split_by`
    hparam (`scope.field`) are rows of their own; `metrics` (test metric names) are extra columns."""
    names = _formats(formats)
    rows = _rows(runs_dir, warn, only, reported, split_by, metrics)
    paths = []
    for dataset in sorted({r["dataset"] for r in rows}):
        for fmt in names:
            path = Path(out_dir) / f"{dataset}.{fmt}"
            atomic_write_text(path, RENDERERS[fmt](rows, dataset, command))
            paths.append(path)
    return paths


def leaderboard_text(runs_dir: Path, fmt: str = "md", warn: Warn | None = None,
                     only: Collection[Path] | None = None, reported: bool = False,
                     split_by: Sequence[str] = (), metrics: Sequence[str] = ()) -> str:
    """Every dataset's table in one format, for printing (JSON: one list of every dataset's rows)."""
    names = _formats(fmt)
    if len(names) != 1:
        raise ConfigError(f"printing takes one format (got {','.join(names)}); add --out DIR to write several")
    rows = _rows(runs_dir, warn, only, reported, split_by, metrics)
    datasets = sorted({r["dataset"] for r in rows})
    if names[0] == "json":
        return dumps([r for d in datasets for r in ordered([r for r in rows if r["dataset"] == d])])
    return "\n".join(RENDERERS[names[0]](rows, d, None) for d in datasets)


def leaderboard_markdown(runs_dir: Path, warn: Warn | None = None, only: Collection[Path] | None = None,
                         reported: bool = False, split_by: Sequence[str] = ()) -> str:
    """Every dataset's Markdown table, one after another (for printing)."""
    return leaderboard_text(runs_dir, "md", warn, only, reported, split_by)


def compare_methods(runs_dir: Path, method_a: str, method_b: str, protocol: str | None = None,
                    dataset: str | None = None, warn: Warn | None = None,
                    only: Collection[Path] | None = None, split_by: Sequence[str] = ()) -> dict[str, Any]:
    """`compare_rows` over the leaderboard rows of runs_dir."""
    return compare_rows(checked_rows(runs_dir, warn, only, split_by), method_a, method_b, protocol, dataset)


def write_comparison(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """`compare-<a>-vs-<b>.json` and `.md` in out_dir."""
    stem = Path(out_dir) / f"compare-{file_stem(result['method_a'])}-vs-{file_stem(result['method_b'])}"
    js, md = Path(f"{stem}.json"), Path(f"{stem}.md")
    atomic_write_json(js, result)
    atomic_write_text(md, comparison_markdown(result))
    return [js, md]


__all__ = ["FORMATS", "DEFAULT_FORMATS", "write_leaderboards", "leaderboard_text", "leaderboard_markdown",
           "compare_methods", "write_comparison"]
