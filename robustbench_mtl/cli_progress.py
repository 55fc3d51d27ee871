"""How `run` and `pretrain` show training: a progress bar on a terminal, one line per epoch in logs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .cli_common import err


def _epoch_line(epoch: int, epochs: int, record: dict[str, Any]) -> str:
    def pct(key: str) -> str:
        v = record.get(key)
        return "-" if v is None else f"{100 * v:.1f}%"

    loss = record.get("train/loss")
    return (f"epoch {epoch + 1}/{epochs}: loss {'-' if loss is None else f'{loss:.4f}'}, val worst-group "
            f"{pct('val/worst_group_acc')}, val avg {pct('val/avg_acc')} ({record.get('time/epoch_s', 0):.1f} s)")


class PlainReporter:
    """One plain line per epoch on stderr, for logs that are not a terminal (batch jobs, Slurm)."""

    def start(self, epochs: int, steps: int, start_epoch: int) -> None:
        self.epochs = epochs

    def resumed(self, epoch: int, out: Path) -> None:
        click.echo(f"resuming {out} from its checkpoint after epoch {epoch + 1}", err=True)

    def step(self, epoch: int, step: int, losses: dict[str, float]) -> None: ...

    def epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        click.echo(_epoch_line(epoch, self.epochs, record), err=True)

    def close(self) -> None: ...


class RichReporter(PlainReporter):
    """A progress bar: epoch, step, loss and the last validation worst-group accuracy."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("val WG {task.fields[wg]}"),
            TimeElapsedColumn(), console=err, transient=False,
        )
        self.task: Any = None
        self.wg = "-"

    def start(self, epochs: int, steps: int, start_epoch: int) -> None:
        self.epochs, self.steps = epochs, steps
        self.progress.start()
        self.task = self.progress.add_task("train", total=epochs * steps, completed=start_epoch * steps,
                                           epoch=f"{start_epoch + 1}/{epochs}", loss="-", wg=self.wg)

    def resumed(self, epoch: int, out: Path) -> None:
        err.print(f"resuming {escape(str(out))} from its checkpoint after epoch {epoch + 1}", highlight=False)

    def step(self, epoch: int, step: int, losses: dict[str, float]) -> None:
        self.progress.update(self.task, completed=epoch * self.steps + step, epoch=f"{epoch + 1}/{self.epochs}",
                             loss=f"{losses['loss']:.4f}" if "loss" in losses else "-")

    def epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        wg = record.get("val/worst_group_acc")
        self.wg = "-" if wg is None else f"{100 * wg:.1f}%"
        self.progress.update(self.task, wg=self.wg)

    def close(self) -> None:
        self.progress.stop()


def make_reporter(quiet: bool) -> Any:
    """A progress bar on a terminal, plain lines in logs, nothing with --quiet/--json."""
    if quiet:
        return None
    return RichReporter() if err.is_terminal else PlainReporter()


__all__ = ["PlainReporter", "RichReporter", "make_reporter"]
