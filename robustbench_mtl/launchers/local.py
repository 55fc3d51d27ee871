"""The local launcher: N worker processes on this machine, each training one sweep job at a time."""
from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import ConfigError, Interrupted
from ..hparams import hp
from ..registry import LAUNCHERS
from ..sweep import Job, cores, run_job
from . import _forkserver
from .base import Launcher, Log


@dataclass(frozen=True)
class LocalHParams:
    workers: int = hp(1, ge=1, help="worker processes, each training one job at a time")
    threads: int = hp(0, ge=0, help="torch CPU threads per worker; 0 = cores // workers, at least 1 (tabular jobs "
                                     "on CPU keep the runner's one thread, their fastest)")
    gpus: str = hp("auto", help="auto = one GPU per worker, round-robin, when CUDA is present; none = CPU only; "
                                "or comma-separated GPU ids (0,1)")


def devices(gpus: str) -> list[str]:
    """The devices workers take in turn; [] = leave each job's device as it is (CPU without CUDA)."""
    if gpus == "none":
        return []
    if gpus == "auto":
        import torch  # only here: without CUDA the launcher itself never needs torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise ConfigError(f"launcher.gpus must be auto, none or GPU ids like 0,1; got {gpus!r}")
    return [f"cuda:{g}" for g in ids]


# Per worker process, set once by _init_worker.
_WORKER: dict[str, Any] = {"threads": 0, "device": None, "stop": False}


def _init_worker(slots: Any, gpu_list: list[str], threads: int, share: int, env: dict[str, str]) -> None:
    """`threads` > 0 is forced on every job; else the worker's default becomes its `share` of the cores, and
    the runner still gives tabular models one thread (two threads run them ~10x slower on a busy CPU). `env` is
    the launcher's environment now: a worker forked from the fork server would otherwise have the server's, from
    whenever this process started it (the working directory and sys.path come with multiprocessing's own
    preparation)."""
    import torch

    os.environ.clear()
    os.environ.update(env)
    slot = slots.get()  # each worker takes its own index, so two workers never share a GPU they could split
    torch.set_num_threads(share)
    _WORKER.update(threads=threads, device=gpu_list[slot % len(gpu_list)] if gpu_list else None)
    threading.Thread(target=_exit_with_parent, daemon=True).start()


def _exit_with_parent() -> None:
    """A worker whose launcher was killed alone (not its process group) would wait for work forever, or finish
    a job nobody waits for: it stops at once instead. Its job keeps its checkpoint, its lock goes with it.
    (Not its OS parent that matters: that is the fork server, which other workers keep alive.)"""
    multiprocessing.parent_process().join()  # returns when the launcher's end of the start-up pipe closes
    os._exit(1)


def _work(job: Job) -> str:
    # After Ctrl-C the pool may still hand this worker queued jobs: it starts none of them.
    if _WORKER["stop"]:
        return f"interrupted {job.name} (not started)"
    line = run_job(job, threads=_WORKER["threads"], device=_WORKER["device"])
    _WORKER["stop"] = line.startswith("interrupted")
    return line


@LAUNCHERS.register("local")
class Local(Launcher):
    """Run jobs in worker processes on this machine: CPU workers fork from a server that has imported torch but
    never run a thread pool (see `_forkserver`); GPU workers are spawned, so CUDA starts clean in each.

    Each worker trains with cores // workers torch threads (tabular models on CPU with one, their fastest),
    so workers do not oversubscribe the CPU, and with one GPU of its own when CUDA is present. A job's lock
    and checkpoints make a killed launch safe to repeat: finished jobs are skipped, interrupted ones resume,
    and jobs another launch trains are left to it."""

    HParams = LocalHParams

    def launch(self, jobs: Sequence[Job], log: Log) -> list[str]:
        h = self.hparams
        workers = max(1, min(h.workers, len(jobs)))
        gpus = devices(h.gpus)
        ctx = _forkserver.context(cuda=bool(gpus))
        slots = ctx.Queue()
        for i in range(workers):
            slots.put(i)
        lines = [""] * len(jobs)
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(slots, gpus, h.threads,
                                             h.threads or max(1, cores() // workers), dict(os.environ)))
        try:
            futures = {pool.submit(_work, job): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                lines[futures[future]] = line = _outcome(future, jobs[futures[future]])
                log(line)
        except KeyboardInterrupt:
            pool.shutdown(wait=True, cancel_futures=True)
            raise Interrupted("sweep interrupted: finished jobs are kept and interrupted ones hold checkpoints; "
                              "the same command resumes") from None
        pool.shutdown(wait=True)
        return lines


def _outcome(future: Any, job: Job) -> str:
    try:
        return future.result()
    except BrokenProcessPool:  # a worker was killed (e.g. out of memory): its job keeps its checkpoint
        return f"lost {job.name}: a worker process died; launch again to resume"
