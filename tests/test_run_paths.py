"""Paths a user takes through `run`: bad --out, Ctrl-C and resume, early stops, algorithms that return NaN."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from robustbench_mtl.algorithms.base import Algorithm
from robustbench_mtl.cli import main
from robustbench_mtl.config import RunSpec
from robustbench_mtl.errors import Interrupted, RunFailedError
from robustbench_mtl.registry import ALGORITHMS
from robustbench_mtl.results import TIMING_KEYS, read_jsonl
from robustbench_mtl.runner import Reporter, run

SHORT = ("train.epochs=3",)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _records(out: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_jsonl(out / "metrics.jsonl")]


def _one_error_line(res, needle: str, code: int = 2) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == code, res.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output
    assert "Traceback" not in res.output
    return lines[0]


# -- --out -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("out, needle", [("afile", "--out afile is a file"),
                                         ("afile/run", "is inside afile, which is a file")])
def test_out_on_a_file_is_one_line_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      out: str, needle: str) -> None:
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("keep me")
    _one_error_line(invoke("run", "--algo", "erm", "--data", "synthetic", "--out", out), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and Path("afile").read_text() == "keep me"


def test_out_that_cannot_be_created_is_one_line() -> None:
    # /proc refuses new directories even to root, so this holds for any user.
    _one_error_line(invoke("run", "--algo", "erm", "--data", "synthetic", "--out", "/proc/robustbench_mtl_test/r"),
                    "cannot create the run directory /proc/robustbench_mtl_test/r")


# -- hparam ranges -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("assignment, needle", [("train.epochs=-1", "train.epochs must be >= 1, got -1"),
                                                ("train.batch_size=0", "train.batch_size must be >= 1"),
                                                ("train.lr=-0.1", "train.lr must be > 0"),
                                                ("l1.weight=-1", "l1.weight must be >= 0")])
def test_out_of_range_hparams_are_refused_before_anything_is_written(tmp_path: Path, assignment: str,
                                                                     needle: str) -> None:
    res = invoke("run", "--algo", "erm_l1", "--data", "synthetic", "--set", assignment, "--out", str(tmp_path / "r"))
    _one_error_line(res, needle)
    assert not (tmp_path / "r").exists()


# -- Ctrl-C ------------------------------------------------------------------------------------------------
class _CtrlCAfter(Reporter):
    """Raises KeyboardInterrupt at the end of epoch `epoch` (as if the user pressed Ctrl-C then)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_ctrl_c_says_what_is_checkpointed_and_the_same_command_resumes(tmp_path: Path) -> None:
    spec = RunSpec("synthetic", "erm", overrides=SHORT)
    with pytest.raises(Interrupted) as info:
        run(spec, tmp_path / "r", reporter=_CtrlCAfter(1))
    message = str(info.value)
    assert "checkpoint after epoch 2/3" in message and "the same command resumes" in message
    assert f"--resume --out {tmp_path / 'r'}" in message and info.value.exit_code == 130
    assert not (tmp_path / "r" / "final.json").exists()
    assert not list((tmp_path / "r").glob(".*.tmp"))  # nothing half-written
    resumed = run(spec, tmp_path / "r")
    assert resumed.resumed_from_epoch == 1
    assert _records(tmp_path / "r") == _records(run(spec, tmp_path / "whole").out_dir)


def test_ctrl_c_before_the_first_checkpoint_says_the_run_starts_again(tmp_path: Path) -> None:
    class CtrlCAtStart(Reporter):
        def start(self, epochs: int, steps: int, start_epoch: int) -> None:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="before the first epoch was checkpointed; the same command starts"):
        run(RunSpec("synthetic", "erm", overrides=SHORT), tmp_path / "r", reporter=CtrlCAtStart())
    assert run(RunSpec("synthetic", "erm", overrides=SHORT), tmp_path / "r").resumed_from_epoch is None


def test_cli_ctrl_c_is_one_line_with_exit_130_and_the_resume_says_where(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_mtl import cli

    monkeypatch.setattr(cli, "_reporter", lambda quiet: _CtrlCAfter(0))
    args = ("run", "--algo", "erm", "--data", "synthetic", "--set", "train.epochs=2", "--out", str(tmp_path / "r"))
    _one_error_line(invoke(*args), "interrupted during epoch 2/2", code=130)
    monkeypatch.undo()
    res = invoke(*args)  # CliRunner is not a terminal: one plain line per epoch instead of a progress bar
    assert res.exit_code == 0, res.output
    assert f"resuming {tmp_path / 'r'} from its checkpoint after epoch 1" in res.output
    epoch_lines = [ln for ln in res.output.splitlines() if ln.startswith("epoch ")]
    assert len(epoch_lines) == 1 and epoch_lines[0].startswith("epoch 2/2: loss ")
    assert "val worst-group" in epoch_lines[0]


def test_cli_prints_one_plain_line_per_epoch_when_not_a_terminal(tmp_path: Path) -> None:
    res = invoke("run", "--algo", "erm", "--data", "synthetic", "--set", "train.epochs=3", "--out",
                 str(tmp_path / "r"))
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "\r" not in res.output and "\x1b[" not in res.output  # no progress-bar redraws or escapes in a log
    quiet = invoke("run", "--algo", "erm", "--data", "synthetic", "--set", "train.epochs=3", "--seed", "1",
                   "--out", str(tmp_path / "q"), "--quiet")
    assert not any(ln.startswith("epoch ") for ln in quiet.output.splitlines())


# -- early stopping and resume -----------------------------------------------------------------------------
def test_resume_after_an_early_stop_trains_no_extra_epoch(tmp_path: Path) -> None:
    # A crash between the stopping epoch's checkpoint and final.json: the resumed run must not train on.
    spec = RunSpec("synthetic", "dfr", overrides=("train.epochs=30", "train.patience=2", "train.lr=1e-7"))
    whole = run(spec, tmp_path / "whole")
    assert whole.final["stopped_early"] and whole.final["epochs_run"] < 30
    cut = run(spec, tmp_path / "cut").out_dir
    (cut / "final.json").unlink()
    resumed = run(spec, cut)
    assert resumed.resumed_from_epoch == whole.final["epochs_run"] - 1
    assert _records(cut) == _records(whole.out_dir)
    strip = {"resumed_from_epoch", "time_s_this_session"}
    assert {k: v for k, v in resumed.final.items() if k not in strip} == \
        {k: v for k, v in whole.final.items() if k not in strip}


# -- non-finite values from an algorithm's own update -----------------------------------------------------
class _NaNUpdate(Algorithm):
    """Returns a NaN loss from its own update on the second step (a test algorithm)."""

    def update(self, batch, aux_batch=None):
        self.calls = getattr(self, "calls", 0) + 1
        return {"loss": math.nan if self.calls == 2 else 0.5, "custom": 1.0}


def test_non_finite_value_from_an_overridden_update_fails_the_run(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ALGORITHMS._items, "_nan_update", _NaNUpdate)
    with pytest.raises(RunFailedError, match=r"algorithm '_nan_update' \(from robustbench-mtl [^)]+\) returned a "
                                             r"non-finite loss at epoch 0 step 2"):
        run(RunSpec("synthetic", "_nan_update", overrides=SHORT), tmp_path / "r")
    assert not (tmp_path / "r" / "final.json").exists()
    failed = json.loads((tmp_path / "r" / "failed.json").read_text())
    assert failed["status"] == "failed" and "_nan_update" in failed["error"]
