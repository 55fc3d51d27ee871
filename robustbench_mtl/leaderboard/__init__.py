"""Leaderboards from finished run directories: per-protocol hparam selection, mean ± std over seeds.

collect (run directories -> rows), select (the configuration per method and protocol), multitask (per-task
accuracy and ρ_spur, Δm against multi-task ERM), reported (the papers' numbers, as data), markdown/render
(md, json, csv, tex), compare (paired differences over seeds), write (files), plots (matplotlib; imported on
use only)."""
from __future__ import annotations

from .collect import Warn, checked_rows, collect_rows, run_records, scan_rows
from .compare import compare_rows, comparison_markdown
from .markdown import render_markdown
from .render import FORMATS, parse_formats, render_csv, render_json, render_tex
from .reported import reported_rows
from .write import (DEFAULT_FORMATS, compare_methods, leaderboard_markdown, leaderboard_text, write_comparison,
                    write_leaderboards)

__all__ = ["scan_rows", "collect_rows", "checked_rows", "render_markdown", "write_leaderboards",
           "leaderboard_markdown", "leaderboard_text", "run_records", "reported_rows", "compare_rows",
           "comparison_markdown", "compare_methods", "write_comparison", "render_csv", "render_json",
           "render_tex", "parse_formats", "FORMATS", "DEFAULT_FORMATS", "Warn"]
