"""Run-directory locks: an flock on <dir>/.lock while a process trains the run (sweep jobs and plain runs)."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from .results import LOCK


@contextlib.contextmanager
def job_lock(out_dir: Path) -> Iterator[bool]:
    """Yields True while this process holds the job's lock, False if another process holds it.

    An flock is released by the kernel when its holder dies (SIGKILL included), so a dead launcher never
    keeps a job locked; the lock file itself stays and means nothing on its own."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def is_locked(out_dir: Path) -> bool:
    """Whether a live process trains this job now (probes the lock without keeping it)."""
    if not (out_dir / LOCK).exists():
        return False
    with job_lock(out_dir) as mine:
        return not mine


__all__ = ["job_lock", "is_locked"]
