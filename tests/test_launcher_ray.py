"""The ray launcher: a sweep on a real local Ray cluster gives the same results as running it locally."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from robustbench_mtl.config import RunSpec
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.hparams import build
from robustbench_mtl.launchers.ray import Ray
from robustbench_mtl.sweep import Job, run_job


def launcher(**opts: Any) -> Ray:
    return Ray(build(Ray.HParams, "launcher", [opts]))


def jobs_under(root: Path, seeds: range, epochs: int = 3) -> list[Job]:
    return [Job(RunSpec("synthetic", "erm", seed=s, overrides=(f"train.epochs={epochs}",)),
                root / "synthetic" / f"s{s}") for s in seeds]


def selected_test_metrics(out_dir: Path) -> dict[str, Any]:
    """What a leaderboard reads from a run: each selection's epoch and test metrics."""
    final = json.loads((out_dir / "final.json").read_text())
    return {name: (sel["epoch"], sel["test"]) for name, sel in final["selections"].items()}


@pytest.mark.slow
def test_ray_sweep_matches_local_runs(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    on_ray, here = jobs_under(tmp_path / "ray", range(4)), jobs_under(tmp_path / "local", range(4))
    logged: list[str] = []
    lines = launcher(num_cpus=2, cpus_per_job=1).launch(on_ray, logged.append)
    assert lines == [f"done {j.name}" for j in on_ray]
    assert sorted(logged) == sorted(lines)  # logged as each task finished
    for job in here:  # one after another, with the thread count each Ray task had
        assert run_job(job, threads=1) == f"done {job.name}"
    for a, b in zip(on_ray, here):
        assert selected_test_metrics(a.out_dir) == selected_test_metrics(b.out_dir)
    # launched again, finished jobs are not sent to Ray at all
    assert launcher().launch(on_ray, logged.append) == [f"done {j.name} (already finished)" for j in on_ray]


def test_ray_missing_is_one_line_with_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ConfigError) as err:
        launcher().launch(jobs_under(tmp_path, range(1)), print)
    assert "pip install" in str(err.value) and "[ray]" in str(err.value) and "\n" not in str(err.value)


def test_ray_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="cpus_per_job"):
        launcher(cpus_per_job=0)
    with pytest.raises(ConfigError, match="did you mean"):
        launcher(cpus=2)
