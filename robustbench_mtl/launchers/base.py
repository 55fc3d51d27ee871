"""The launcher contract: place a sweep's jobs on an engine; every job runs `sweep.run_job` wherever it lands."""
from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Sequence

from ..sweep import Job

Log = Callable[[str], None]


class Launcher(abc.ABC):
    """Places jobs; knows nothing of training. Subclasses declare `HParams` (a frozen dataclass of `hp(...)`
    fields: the options users pass as `--opt key=value` or a sweep file's `[launcher]` table) and implement
    `launch`. A job may already be done or running elsewhere: `run_job` skips it, so launching twice is safe."""

    HParams: ClassVar[type]

    def __init__(self, hparams: Any) -> None:
        self.hparams = hparams

    @abc.abstractmethod
    def launch(self, jobs: Sequence[Job], log: Log) -> list[str]:
        """Run (or submit) `jobs`; return one outcome line per job in order (see `sweep.run_job`), or, for an
        engine that only submits, one line per job saying where it was submitted."""
