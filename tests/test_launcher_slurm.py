"""The slurm launcher on a real Slurm (.ci/slurm-up.sh): a job array, a requeued job that resumes, local parity."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from robustbench_mtl.config import RunSpec
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.hparams import build
from robustbench_mtl.launchers.slurm import Slurm, extra_parameters, folder
from robustbench_mtl.results import read_jsonl
from robustbench_mtl.sweep import Job, run_job

LONG = 250  # epochs of the job that is requeued: long enough that its run is caught mid-way on a fast machine
DEADLINE_S = 300  # the whole array, requeue included (about 60-90 s on 2 busy CPUs)


def launcher(**opts: Any) -> Slurm:
    return Slurm(build(Slurm.HParams, "launcher", [opts]))


def sweep_jobs(root: Path) -> list[Job]:
    epochs = (LONG, 4, 4)
    return [Job(RunSpec("synthetic", "erm", seed=s, overrides=(f"train.epochs={e}",)), root / "synthetic" / f"s{s}")
            for s, e in enumerate(epochs)]


def selected_test_metrics(out_dir: Path) -> dict[str, Any]:
    """What a leaderboard reads from a run: each selection's epoch and test metrics."""
    final = json.loads((out_dir / "final.json").read_text())
    return {name: (sel["epoch"], sel["test"]) for name, sel in final["selections"].items()}


def slurm_problem() -> str:
    """Why the real-Slurm test cannot run here ('' when it can)."""
    missing = [cmd for cmd in ("sbatch", "sinfo", "srun", "scontrol") if shutil.which(cmd) is None]
    if missing:
        return f"Slurm is not installed here ({', '.join(missing)} missing); start one with sudo .ci/slurm-up.sh"
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if states.returncode != 0 or not any(s.startswith(("idle", "mixed")) for s in states.stdout.split()):
        err = states.stderr.strip()
        why = err.splitlines()[0] if err else f"node states: {states.stdout.split()}"
        return f"no Slurm node is up ({why}); start one with sudo .ci/slurm-up.sh"
    return ""


def require_slurm() -> None:
    """Skip (saying why) where there is no Slurm; in CI, where .ci/slurm-up.sh has started one, fail instead."""
    pytest.importorskip("submitit")
    problem = slurm_problem()
    if problem and os.environ.get("CI") == "true":
        pytest.fail(problem)
    if problem:
        pytest.skip(problem)


def wait_for_checkpoint(out_dir: Path, deadline: float) -> None:
    while not (out_dir / "checkpoint.pt").exists():
        assert time.monotonic() < deadline, f"no checkpoint in {out_dir}: the Slurm job never trained"
        time.sleep(0.1)


@pytest.mark.slow
def test_slurm_array_requeued_job_resumes_and_matches_local(tmp_path: Path) -> None:
    require_slurm()
    on_slurm, here = sweep_jobs(tmp_path / "slurm"), sweep_jobs(tmp_path / "local")
    logged: list[str] = []
    outcome: dict[str, Any] = {}

    def launch() -> None:
        try:
            outcome["lines"] = launcher(wait=True, cpus_per_job=1, array_parallelism=2).launch(on_slurm, logged.append)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread below
            outcome["error"] = exc

    deadline = time.monotonic() + DEADLINE_S
    waiter = threading.Thread(target=launch, daemon=True)
    waiter.start()
    wait_for_checkpoint(on_slurm[0].out_dir, deadline)
    array = logged[0].split("Slurm array ")[1].split()[0]
    try:
        # what an admin or a preemption does: Slurm kills the running task and queues it again
        subprocess.run(["scontrol", "requeue", f"{array}_0"], check=True, timeout=60)
        for job in here:  # the reference, one after another with the threads each array task had
            assert run_job(job, threads=1) == f"done {job.name}"
        waiter.join(max(1.0, deadline - time.monotonic()))
        assert not waiter.is_alive(), f"the array did not end in {DEADLINE_S} s: {_logs(on_slurm[0])}"
    finally:
        if waiter.is_alive():  # the test failed: leave nothing running on the cluster
            subprocess.run(["scancel", array], timeout=60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["lines"] == [f"done {j.name}" for j in on_slurm]
    assert array in logged[0] and sorted(logged[1:]) == sorted(outcome["lines"])

    final = json.loads((on_slurm[0].out_dir / "final.json").read_text())
    assert final["resumed_from_epoch"] is not None, f"the requeued job trained from scratch: {_logs(on_slurm[0])}"
    # the checkpointed epochs were not trained again: one record per epoch, in order
    assert [r["epoch"] for r in read_jsonl(on_slurm[0].out_dir / "metrics.jsonl")] == list(range(LONG))
    for a, b in zip(on_slurm, here):
        assert selected_test_metrics(a.out_dir) == selected_test_metrics(b.out_dir), a.name


def _logs(job: Job) -> str:
    """The submitit logs of the array (where a failing Slurm job says why)."""
    logs = sorted((job.out_dir.parent.parent / ".submitit").glob("*/*_log.*"))
    return "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in logs)


def test_submitit_missing_is_one_line_with_the_install_command(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` now raises ImportError
    with pytest.raises(ConfigError) as err:
        launcher().launch(sweep_jobs(tmp_path), print)
    assert "pip install" in str(err.value) and "[slurm]" in str(err.value) and "\n" not in str(err.value)


def test_slurm_missing_names_the_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    with pytest.raises(ConfigError, match="sbatch and srun") as err:
        launcher().launch(sweep_jobs(tmp_path), print)
    assert "\n" not in str(err.value)


def test_finished_jobs_are_not_submitted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # would fail if the launcher tried to submit
    jobs = sweep_jobs(tmp_path)
    for job in jobs:
        job.out_dir.mkdir(parents=True)
        (job.out_dir / "final.json").write_text("{}")
    assert launcher().launch(jobs, print) == [f"done {j.name} (already finished)" for j in jobs]


def test_extra_sbatch_options_are_whitelisted() -> None:
    assert extra_parameters(("qos=high", "mail-type=END")) == {"qos": "high", "mail_type": "END"}
    with pytest.raises(ConfigError, match="'signal' is not allowed"):
        launcher(extra="signal=USR1@30")  # submitit's requeue at time-out depends on its own --signal
    with pytest.raises(ConfigError, match="key=value"):
        launcher(extra="qos")


def test_submitit_folder_defaults_to_the_runs_directory(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert folder("", sweep_jobs(runs)) == runs / ".submitit"
    assert folder("logs", sweep_jobs(runs)) == Path("logs").absolute()
