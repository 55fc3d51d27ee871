"""--log tensorboard: event files in the run directory with the per-epoch metrics; bad loggers are one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from robustbench_mtl.cli import main
from robustbench_mtl.config import RunSpec
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.runner import run


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_logs_every_epoch_record_and_step_loss(tmp_path: Path) -> None:
    spec = RunSpec("synthetic", "erm", overrides=("train.epochs=3",), log=("tensorboard",))
    out = run(spec, tmp_path / "run").out_dir
    scalars = _scalars(out / "tensorboard")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = len(scalars["step/loss"]) // 3
    wg = scalars["val/worst_group_acc"]
    assert [s for s, _ in wg] == [steps, 2 * steps, 3 * steps]  # each epoch's record at its last step
    assert [v for _, v in wg] == pytest.approx([r["val/worst_group_acc"] for r in records])
    assert json.loads((out / "config.json").read_text())["spec"]["log"] == ["tensorboard"]


def test_log_is_not_part_of_a_runs_identity(tmp_path: Path) -> None:
    first = run(RunSpec("synthetic", "erm", overrides=("train.epochs=1",)), tmp_path / "run")
    again = run(RunSpec("synthetic", "erm", overrides=("train.epochs=1",), log=("tensorboard",)), tmp_path / "run")
    assert again.already_finished and again.final == first.final


def test_unknown_logger_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown --log 'wandb'; choose from tensorboard"):
        run(RunSpec("synthetic", "erm", log=("wandb",)), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    res = CliRunner().invoke(main, ["run", "--algo", "erm", "--data", "synthetic", "--log", "wandb",
                                    "--out", str(tmp_path / "cli")])
    assert res.exit_code != 0 and "unknown --log 'wandb'" in res.output and not (tmp_path / "cli").exists()
