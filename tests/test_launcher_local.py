"""The local launcher with real worker processes: completion, SIGKILL and relaunch, concurrent launches."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from robustbench_mtl import sweep, sweep_spec
from robustbench_mtl.results import CHECKPOINT, CONFIG, FINAL, read_json, read_jsonl, scan_runs

EXE = shutil.which("robustbench-mtl") or str(Path(__file__).resolve().parents[1] / ".venv/bin/robustbench-mtl")


def spec_file(tmp_path: Path, epochs: int, workers: int = 2, methods: str = '["erm", "mt_l1+recon"]',
              seeds: str = "[0, 1, 2, 3]") -> Path:
    """An 8-job synthetic sweep (2 methods x 4 seeds) of `epochs` epochs each, every one run to the end."""
    path = tmp_path / "eight.toml"
    path.write_text(f'datasets = ["synthetic"]\nmethods = {methods}\nseeds = {seeds}\n'
                    f'runs_dir = "{tmp_path / "runs"}"\n'
                    f'[fixed]\n"train.epochs" = {epochs}\n"train.batch_size" = 25\n"train.patience" = 0\n'
                    f'[launcher]\nname = "local"\nworkers = {workers}\n')
    return path


def launch_cli(path: Path, *extra: str) -> subprocess.Popen[str]:
    # A session of its own, so the test can kill the launcher with all its workers, as a scheduler would.
    return subprocess.Popen([EXE, "sweep", "launch", str(path), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def trained_here(output: str) -> list[str]:
    """Jobs a launch trained itself (not already finished, not left to another launch)."""
    return [line.split()[1] for line in output.splitlines()
            if line.startswith("done ") and not line.endswith("(already finished)")]


def test_two_workers_finish_an_eight_job_sweep_and_collect_its_rows(tmp_path: Path) -> None:
    from robustbench_mtl.launchers.local import Local, LocalHParams

    p = sweep.plan(sweep_spec.load(spec_file(tmp_path, epochs=2)))
    logged: list[str] = []
    lines = sweep.launch(p, Local(LocalHParams(workers=2)), logged.append)
    assert len(lines) == 8 and all(line.startswith("done ") for line in lines) and sorted(logged) == sorted(lines)
    assert [state for _, state, _ in sweep.status(p)] == ["done"] * 8
    stranger = tmp_path / "runs" / "synthetic" / "not-this-sweep"  # a run under runs_dir outside the sweep
    shutil.copytree(p.jobs[0].job.out_dir, stranger)
    paths = sweep.collect(p, tmp_path / "lb", command="CMD")
    rows = json.loads((tmp_path / "lb" / "synthetic.json").read_text())
    assert {(r["method"], r["n_seeds"], tuple(r["seeds"])) for r in rows} == {
        ("erm", 4, (0, 1, 2, 3)), ("mt_l1 + recon", 4, (0, 1, 2, 3))}
    assert all("not-this-sweep" not in json.dumps(r) for r in rows) and "CMD" in paths[0].read_text()
    again = sweep.launch(p, Local(LocalHParams(workers=2)), logged.append)
    assert all(line.endswith("(already finished)") for line in again)


@pytest.mark.slow
def test_a_killed_launch_resumes_without_training_a_finished_job_again(tmp_path: Path) -> None:
    path = spec_file(tmp_path, epochs=40)
    p = sweep.plan(sweep_spec.load(path))
    dirs = [j.job.out_dir for j in p.jobs]
    proc = launch_cli(path)
    deadline = time.time() + 300
    while time.time() < deadline:  # at least one job done and another one part-way, checkpointed
        done = [d for d in dirs if (d / FINAL).exists()]
        partial = [d for d in dirs if (d / CHECKPOINT).exists() and not (d / FINAL).exists()]
        if done and partial:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done and partial, "the launch never reached a finished and a checkpointed job"
    time.sleep(0.5)  # the killed workers' files close; their flocks go with them
    finished = {d: (d / FINAL).stat() for d in dirs if (d / FINAL).exists()}
    interrupted = [d for d in dirs if (d / CHECKPOINT).exists() and not (d / FINAL).exists()]
    assert interrupted and all(sweep.job_state(d)[0] == "interrupted" for d in interrupted)

    proc = launch_cli(path)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    assert all((d / FINAL).exists() for d in dirs)
    for d, before in finished.items():  # never trained again: final.json is the same file, untouched
        after = (d / FINAL).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not set(trained_here(output)) & {f"synthetic/{d.name}" for d in finished}
    for d in interrupted:  # resumed from its checkpoint, not restarted
        assert read_json(d / FINAL)["resumed_from_epoch"] is not None
        epochs = [r["epoch"] for r in read_jsonl(d / "metrics.jsonl") if "epoch" in r and "phase" not in r]
        assert epochs == list(range(40))  # no duplicate and no missing epoch
    res = subprocess.run([EXE, "sweep", "collect", str(path), "--out", str(tmp_path / "lb")], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    rows = json.loads((tmp_path / "lb" / "synthetic.json").read_text())
    assert sorted((r["method"], r["protocol"]) for r in rows) == sorted(
        {(r["method"], r["protocol"]) for r in rows})  # one row per method and protocol
    assert {r["n_seeds"] for r in rows} == {4}
    assert "robustbench-mtl sweep launch" in (tmp_path / "lb" / "synthetic.md").read_text()


@pytest.mark.slow
def test_two_launches_at_once_never_train_the_same_job_twice(tmp_path: Path) -> None:
    path = spec_file(tmp_path, epochs=10)
    procs = [launch_cli(path), launch_cli(path)]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    trained = trained_here(outputs[0]) + trained_here(outputs[1])
    names = [j.job.name for j in sweep.plan(sweep_spec.load(path)).jobs]
    assert sorted(trained) == sorted(names)  # each job trained by exactly one launch


@pytest.mark.slow
def test_eight_runs_writing_into_one_runs_directory_at_once_leave_each_valid(tmp_path: Path) -> None:
    path = spec_file(tmp_path, epochs=3, workers=8)
    proc = launch_cli(path, "--opt", "threads=1")
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    runs, skipped = scan_runs(tmp_path / "runs")
    assert len(runs) == 8 and not skipped
    for r in runs:
        identity = json.dumps(read_json(r.path / CONFIG)["identity"], sort_keys=True).encode()
        assert r.path.name.rsplit("-", 1)[1] == hashlib.sha256(identity).hexdigest()[:8]  # its own config
        assert len(read_jsonl(r.path / "metrics.jsonl")) == 3 and r.final["status"] == "finished"


def descendants(pid: int) -> list[str]:
    """Every process below `pid` (children, their children, ...)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return children + [d for c in children for d in descendants(int(c))]


@pytest.mark.slow
def test_workers_stop_when_their_launcher_is_killed_alone(tmp_path: Path) -> None:
    path = spec_file(tmp_path, epochs=40)
    dirs = [j.job.out_dir for j in sweep.plan(sweep_spec.load(path)).jobs]
    proc = launch_cli(path)
    deadline = time.time() + 300
    while time.time() < deadline and not any((d / CHECKPOINT).exists() for d in dirs):
        time.sleep(0.05)
    workers = descendants(proc.pid)  # the fork server, its workers, multiprocessing's resource tracker
    os.kill(proc.pid, signal.SIGKILL)  # the launcher only, not its process group
    proc.wait()
    time.sleep(3)
    alive = [w for w in workers if Path(f"/proc/{w}").exists()
             and Path(f"/proc/{w}/stat").read_text().split()[2] != "Z"]  # a zombie has exited
    for w in alive:
        os.kill(int(w), signal.SIGKILL)
    assert len(workers) >= 3 and not alive  # at least the server and its 2 workers were there
    assert not any(sweep.is_locked(d) for d in dirs)  # nothing left holding a job


def test_workers_see_the_launchers_environment_not_the_fork_servers(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_mtl.launchers import _forkserver
    from robustbench_mtl.launchers.local import Local, LocalHParams

    _forkserver.start()  # the server keeps the environment of this moment
    monkeypatch.setenv("ROBUSTBENCH_MTL_CACHE", str(tmp_path / "cache-set-later"))
    p = sweep.plan(sweep_spec.load(spec_file(tmp_path, epochs=1, methods='["erm"]', seeds="[0]")))
    assert sweep.launch(p, Local(LocalHParams(workers=1)), lambda line: None)[0].startswith("done ")
    assert any((tmp_path / "cache-set-later").iterdir())  # the worker generated the dataset where it was told


@pytest.mark.skipif("forkserver" not in __import__("multiprocessing").get_all_start_methods(),
                    reason="no fork server on this platform: every worker is spawned")
def test_cpu_workers_fork_from_the_preloaded_server_and_gpu_workers_are_spawned() -> None:
    from robustbench_mtl.launchers import _forkserver

    assert _forkserver.context().get_start_method() == "forkserver"
    assert {"torch", "torch._dynamo", "robustbench_mtl.runner"} <= set(_forkserver.PRELOAD)
    assert _forkserver.context(cuda=True).get_start_method() == "spawn"  # CUDA must start in the worker itself
