"""What every `robustbench-mtl` command shares: the consoles, one-line user errors, JSON printing."""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click
from rich.console import Console
from rich.markup import escape

from .errors import RobustbenchError

out = Console()
err = Console(stderr=True)


def fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors become one line on stderr and a non-zero exit (2; 130 after Ctrl-C); bugs keep their
    traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RobustbenchError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)

    return wrapper


def print_json(obj: Any) -> None:
    from .results import dumps

    click.echo(dumps(obj))


def split_names(aux: tuple[str, ...]) -> tuple[str, ...]:
    """Repeated and comma-separated names as one tuple: ("a,b", "c") -> ("a", "b", "c")."""
    return tuple(a.strip() for item in aux for a in item.split(",") if a.strip())


__all__ = ["out", "err", "fail_cleanly", "print_json", "split_names"]
