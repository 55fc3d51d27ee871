"""The slurm launcher: a sweep's jobs as one Slurm job array through submitit, resumed after a requeue."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, Interrupted
from ..hparams import hp
from ..registry import LAUNCHERS
from ..results import FINAL
from ..sweep import Job, run_job
from .base import Launcher, Log

# sbatch options a sweep may add with `extra`. Each is one of submitit's own named parameters (submitit
# writes and quotes the #SBATCH line); anything else could clash with what submitit relies on (--signal for
# requeue at time-out, --array, --output, --open-mode), so it is refused rather than passed through.
EXTRA_KEYS = ("account", "qos", "constraint", "exclude", "nodelist", "gres", "comment", "mail_type", "mail_user",
              "wckey")
INSTALL = "pip install 'robustbench-mtl[slurm]' (in a checkout: pip install -e '.[slurm]')"
POLL_S = 2.0  # how often `wait` looks for finished jobs (result files; sacct at most once a minute)


@dataclass(frozen=True)
class SlurmHParams:
    """Options of the slurm launcher (`--opt key=value`, or a sweep file's [launcher] table)."""

    partition: str = hp("", help="Slurm partition; '' = the cluster's default partition")
    time: int = hp(240, ge=1, help="time limit per job in minutes; a job that reaches it is requeued and resumes "
                                   "from its checkpoint, up to `timeouts` times")
    timeouts: int = hp(3, ge=0, help="how many times one job may be requeued after reaching its time limit")
    cpus_per_job: int = hp(1, ge=1, help="CPUs per job (--cpus-per-task); also the job's torch threads")
    gpus_per_job: int = hp(0, ge=0, help="GPUs per job (--gpus-per-node); the run then uses CUDA")
    mem_gb: int = hp(0, ge=0, help="memory per job in GB (--mem); 0 = the cluster's default")
    array_parallelism: int = hp(256, ge=1, help="at most this many of the sweep's jobs run at once (--array=...%N)")
    folder: str = hp("", help="where submitit keeps scripts, pickles and logs (shared with the compute nodes); "
                              "'' = .submitit in the sweep's runs directory")
    wait: bool = hp(False, help="block until every job has ended and return their outcome lines; false = "
                                "return after submitting (`robustbench-mtl sweep status` follows them)")
    extra: tuple[str, ...] = hp((), help="more sbatch options as key=value, comma-separated; keys: "
                                         + ", ".join(EXTRA_KEYS))


class SlurmTask:
    """What one array task runs: `run_job` with the job's CPUs as torch threads.

    submitit calls `checkpoint` when Slurm signals a time-out or preemption and requeues the returned
    submission. The state worth keeping is the run's own checkpoint (written every epoch), so the requeued
    task is this same call: `run_job` resumes from wherever that checkpoint is. A requeue that submitit never
    sees (`scontrol requeue`, a preemption without signal) reruns the same pickled call, with the same result."""

    def __init__(self, threads: int, device: str | None = None) -> None:
        self.threads, self.device = threads, device

    def __call__(self, job: Job) -> str:
        return run_job(job, threads=self.threads, device=self.device)

    def checkpoint(self, job: Job) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, job)


@LAUNCHERS.register("slurm")
class Slurm(Launcher):
    """Submit the jobs as one Slurm job array (submitit); preempted, requeued or timed-out jobs resume.

    Each array task trains one job with `cpus_per_job` CPUs (its torch threads) and `gpus_per_job` GPUs. Jobs
    already finished are not submitted. With `wait`, the launch blocks and returns each job's outcome;
    otherwise it returns one 'submitted <name> as <slurm id>' line per job."""

    HParams = SlurmHParams

    def __init__(self, hparams: Any) -> None:
        super().__init__(hparams)
        extra_parameters(hparams.extra)  # a bad extra option is refused before anything is planned

    def launch(self, jobs: Sequence[Job], log: Log) -> list[str]:
        lines = [f"done {j.name} (already finished)" if (j.out_dir / FINAL).exists() else "" for j in jobs]
        todo = [i for i, line in enumerate(lines) if not line]
        if not todo:
            return lines
        h, where = self.hparams, folder(self.hparams.folder, jobs)
        # Without GPUs asked for, a job must not pick up a GPU it can see anyway (no cgroup hides it) via 'auto'.
        task = SlurmTask(h.cpus_per_job, None if h.gpus_per_job else "cpu")
        submitted = _submit(self._executor(where), task, [jobs[i] for i in todo])
        log(f"submitted {len(todo)} job(s) as Slurm array {submitted[0].job_id.split('_')[0]} (logs in {where})")
        if not h.wait:
            for i, sj in zip(todo, submitted):
                lines[i] = f"submitted {jobs[i].name} as {sj.job_id}"
                log(lines[i])
            return lines
        for i, line in zip(todo, _wait(submitted, [jobs[i] for i in todo], log)):
            lines[i] = line
        return lines

    def _executor(self, where: Path) -> Any:
        submitit = _import_submitit()
        h = self.hparams
        executor = submitit.SlurmExecutor(folder=where / "%j", max_num_timeout=h.timeouts)
        params: dict[str, Any] = {"job_name": "robustbench-mtl", "time": h.time, "cpus_per_task": h.cpus_per_job,
                                  "array_parallelism": h.array_parallelism, **extra_parameters(h.extra)}
        if h.partition:
            params["partition"] = h.partition
        if h.gpus_per_job:
            params["gpus_per_node"] = h.gpus_per_job
        if h.mem_gb:
            params["mem"] = h.mem_gb  # submitit writes a number as --mem=<N>GB
        executor.update_parameters(**params)
        return executor


def _import_submitit() -> Any:
    """submitit, once sbatch and srun are known to be here; else one line naming what is missing."""
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"the slurm launcher needs submitit: {INSTALL}") from None
    missing = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]
    if missing:
        raise ConfigError(f"the slurm launcher needs Slurm's {' and '.join(missing)} on PATH: launch from a Slurm "
                          f"login node (a test cluster on Debian: sudo .ci/slurm-up.sh)")
    return submitit


def extra_parameters(items: Sequence[str]) -> dict[str, str]:
    """`extra`'s key=value items as submitit parameters; a key outside EXTRA_KEYS is a ConfigError."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not value.strip():
            raise ConfigError(f"launcher.extra expects key=value items (e.g. qos=high), got {item!r}")
        if key not in EXTRA_KEYS:
            raise ConfigError(f"launcher.extra: sbatch option {key!r} is not allowed; allowed: {', '.join(EXTRA_KEYS)} "
                              f"(partition, time, cpus, gpus and mem have their own options)")
        params[key] = value.strip()
    return params


def folder(option: str, jobs: Sequence[Job]) -> Path:
    """submitit's folder: the option, else .submitit in the sweep's runs directory (run directories are
    <runs>/<dataset>/<name>; for any other layout, the deepest directory holding all of them)."""
    if option:
        return Path(option).absolute()
    if all(j.out_dir.parent.name == j.spec.data for j in jobs):
        parents = [j.out_dir.absolute().parent.parent for j in jobs]
    else:
        parents = [j.out_dir.absolute().parent for j in jobs]
    return Path(os.path.commonpath(parents)) / ".submitit"


def _submit(executor: Any, task: SlurmTask, jobs: Sequence[Job]) -> list[Any]:
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    try:
        # submitit also prints sbatch's stderr when it fails; the error below carries its line instead
        with contextlib.redirect_stderr(io.StringIO()):
            return executor.map_array(task, list(jobs))
    except (FailedJobError, FailedSubmissionError, OSError) as exc:
        raise ConfigError(f"slurm launcher: sbatch failed: {_reason(exc)}") from None


def _wait(submitted: Sequence[Any], jobs: Sequence[Job], log: Log) -> list[str]:
    """Each job's outcome line, logged as it ends (Slurm keeps running the rest if this is interrupted)."""
    from submitit.helpers import as_completed

    index = {sj.job_id: i for i, sj in enumerate(submitted)}
    lines = [""] * len(jobs)
    try:
        for sj in as_completed(submitted, poll_frequency=POLL_S):
            i = index[sj.job_id]
            lines[i] = line = _outcome(sj, jobs[i])
            log(line)
    except KeyboardInterrupt:
        raise Interrupted(f"stopped waiting; the Slurm jobs keep running (squeue -j "
                          f"{submitted[0].job_id.split('_')[0]}; `robustbench-mtl sweep status` shows where they "
                          f"stand)") from None
    return lines


def _outcome(submitted: Any, job: Job) -> str:
    try:
        return submitted.result()
    except Exception as exc:  # noqa: BLE001 - run_job never raises, so this is Slurm's failure (killed, cancelled)
        return f"failed {job.name}: Slurm job {submitted.job_id}: {_reason(exc)}"


def _reason(exc: BaseException) -> str:
    """The line of submitit's (multi-line) error that says why: Slurm's own error line when there is one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() and ":" in line]
    return (errors or lines or [type(exc).__name__])[0]
