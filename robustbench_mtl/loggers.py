"""Per-run loggers asked for with `--log` (TensorBoard event files), fed by the runner's reporter callbacks."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError

LOGGERS = ("tensorboard",)
TENSORBOARD_DIR = "tensorboard"  # inside the run directory: `tensorboard --logdir runs/` sees every run


def check_loggers(names: Sequence[str]) -> None:
    """One line for an unknown logger or a missing package, before anything is written."""
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"unknown --log {name!r}; choose from {', '.join(LOGGERS)}")
    if "tensorboard" in names:
        try:
            import tensorboard  # noqa: F401 - torch's SummaryWriter needs the package
        except ImportError:
            raise ConfigError('--log tensorboard needs the tensorboard package: pip install '
                              '"robustbench-mtl[tensorboard]"') from None


class TensorBoardReporter:
    """Writes every step's losses and every epoch record's numbers as scalars, both against the global training
    step (an epoch's record sits at its last step), so the curves of one run share one axis."""

    def __init__(self, inner: Any, out: Path) -> None:
        self.inner, self.out, self.steps, self.writer = inner, out, 1, None

    def start(self, epochs: int, steps: int, start_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # Opened when training starts, after config.json: a run that fails to start leaves no event files.
        # purge_step drops events a killed session wrote past its checkpoint, so a resumed curve has no repeats.
        if self.writer is None:
            self.writer = SummaryWriter(log_dir=str(self.out / TENSORBOARD_DIR), purge_step=start_epoch * steps + 1)
        self.steps = max(steps, 1)
        self.inner.start(epochs, steps, start_epoch)

    def resumed(self, epoch: int, out: Path) -> None:
        self.inner.resumed(epoch, out)

    def step(self, epoch: int, step: int, losses: dict[str, float]) -> None:
        for key, value in losses.items():
            self.writer.add_scalar(f"step/{key}", value, epoch * self.steps + step)
        self.inner.step(epoch, step, losses)

    def epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(key, value, (epoch + 1) * self.steps)
        self.writer.flush()  # a sweep is watched live: each epoch is on disk when it ends
        self.inner.epoch_end(epoch, record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.inner.close()


def with_loggers(reporter: Any, out: Path, names: Sequence[str]) -> Any:
    """`reporter`, also writing to each logger in `names` (checked by `check_loggers`)."""
    return TensorBoardReporter(reporter, out) if "tensorboard" in names else reporter
