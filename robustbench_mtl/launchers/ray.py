"""The ray launcher: each sweep job one Ray task, on a local Ray cluster or an existing one."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import ConfigError, Interrupted
from ..hparams import hp
from ..registry import LAUNCHERS
from ..results import FINAL
from ..sweep import Job, run_job
from .base import Launcher, Log

INSTALL = "pip install 'robustbench-mtl[ray]' (in a checkout: pip install -e '.[ray]')"


@dataclass(frozen=True)
class RayHParams:
    """Options of the ray launcher (`--opt key=value`, or a sweep file's [launcher] table)."""

    address: str = hp("", help="'' = start a Ray cluster on this machine for this launch; 'auto' = the one "
                               "`ray start` runs here; or an address (host:6379, ray://host:10001)")
    cpus_per_job: int = hp(1, ge=1, help="CPUs each job's task reserves; also its torch threads")
    gpus_per_job: float = hp(0.0, ge=0, help="GPUs each job's task reserves (a fraction shares a GPU); "
                                             "0 = the job trains on CPU")
    num_cpus: int = hp(0, ge=0, help="CPUs of the cluster started when address is ''; 0 = all of this machine's")


@LAUNCHERS.register("ray")
class Ray(Launcher):
    """Run each job as a Ray task reserving `cpus_per_job` CPUs and `gpus_per_job` GPUs; Ray places them.

    Outcome lines are logged as tasks finish. A task whose worker dies is retried by Ray and resumes from
    the run's checkpoint. On a remote cluster every node needs robustbench-mtl installed (and the data)."""

    HParams = RayHParams

    def launch(self, jobs: Sequence[Job], log: Log) -> list[str]:
        lines = [f"done {j.name} (already finished)" if (j.out_dir / FINAL).exists() else "" for j in jobs]
        todo = [i for i, line in enumerate(lines) if not line]
        if not todo:
            return lines
        ray = _import_ray()
        started = _connect(ray, self.hparams)
        try:
            for i, line in self._run(ray, jobs, todo, log):
                lines[i] = line
        finally:
            if started:
                ray.shutdown()
        return lines

    def _run(self, ray: Any, jobs: Sequence[Job], todo: Sequence[int], log: Log) -> list[tuple[int, str]]:
        h = self.hparams
        # Without GPUs reserved, a task must not pick one up through device 'auto' (Ray only hides GPUs
        # from tasks that reserve some).
        device = None if h.gpus_per_job else "cpu"
        task = ray.remote(num_cpus=h.cpus_per_job, num_gpus=h.gpus_per_job)(run_job)
        index = {task.remote(jobs[i], h.cpus_per_job, device): i for i in todo}
        pending, out = list(index), []
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                i = index[ready[0]]
                out.append((i, _outcome(ray, ready[0], jobs[i])))
                log(out[-1][1])
        except KeyboardInterrupt:
            for ref in pending:  # a running task gets KeyboardInterrupt: its run keeps its checkpoint
                ray.cancel(ref)
            raise Interrupted("sweep interrupted: finished jobs are kept and interrupted ones hold checkpoints; "
                              "the same command resumes") from None
        return out


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"the ray launcher needs Ray: {INSTALL}") from None
    return ray


def _connect(ray: Any, h: RayHParams) -> bool:
    """Join the cluster `h` names (or the one this process already joined); True if this call started Ray."""
    if ray.is_initialized():
        return False
    try:
        if h.address:
            ray.init(address=h.address)
        else:
            ray.init(num_cpus=h.num_cpus or None, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {h.address}" if h.address else "on this machine"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"ray launcher: cannot start or reach a Ray cluster {where}: {first}") from None
    return True


def _outcome(ray: Any, ref: Any, job: Job) -> str:
    try:
        return ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - run_job never raises, so this is Ray's failure (a dead worker)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"failed {job.name}: Ray task: {first}"
