"""Sweep jobs: one run each, in a directory named by its resolved config's hash, locked while it trains."""
from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from .config import RunSpec
from .errors import RobustbenchError
from .results import FINAL, LOCK, atomic_write_json

FAILED = "failed.json"


@dataclass(frozen=True)
class Job:
    """One run of a sweep: the spec (threads and device are set by the launcher) and its run directory."""

    spec: RunSpec
    out_dir: Path

    @property
    def name(self) -> str:
        return f"{self.spec.data}/{self.out_dir.name}"


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


def run_job(job: Job, threads: int = 0, device: str | None = None) -> str:
    """Train `job` unless it is done or locked by another process; resume from its checkpoint if it has one.

    Returns one line: 'done <name>' (trained now or already), 'running elsewhere <name>', or
    'failed <name>: <reason>' (also written to failed.json in the run directory, removed on success).
    Never raises for a failing run, so one bad job does not stop a sweep."""
    from .runner import run  # deferred: launchers import this module without torch

    spec = replace(job.spec, threads=threads or job.spec.threads, device=device or job.spec.device)
    if (job.out_dir / FINAL).exists():
        return f"done {job.name}"
    with job_lock(job.out_dir) as mine:
        if not mine:
            return f"running elsewhere {job.name}"
        try:
            run(spec, job.out_dir)
        except RobustbenchError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - any crash is recorded as the job's failure, not the sweep's
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        else:
            with contextlib.suppress(FileNotFoundError):
                (job.out_dir / FAILED).unlink()
            return f"done {job.name}"
        atomic_write_json(job.out_dir / FAILED, {"status": "failed", "error": reason})
        return f"failed {job.name}: {reason}"
