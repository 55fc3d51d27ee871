"""The runner end to end on the embedded synthetic data: determinism, resume, failures, bad inputs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustbench_mtl.config import RunSpec
from robustbench_mtl.errors import ConfigError, RunFailedError
from robustbench_mtl.results import TIMING_KEYS, read_jsonl
from robustbench_mtl.runner import run

SHORT = ("train.epochs=6",)


def _records(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_jsonl(out / "metrics.jsonl")]


def test_run_writes_the_run_directory(tmp_path: Path) -> None:
    res = run(RunSpec("synthetic", "mt_l1", aux=("recon",), overrides=SHORT), tmp_path / "r")
    out = res.out_dir
    config = json.loads((out / "config.json").read_text())
    assert config["objectives"] == ["recon", "l1"]
    assert config["components"]["algorithm"]["dist"] == "robustbench-mtl"
    assert config["provenance"]["versions"]["torch"]
    assert config["data"]["fingerprint"] and config["data"]["sizes"] == {"train": 1000, "val": 1000, "test": 2000}
    recs = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in recs] == list(range(6))
    assert {"val/worst_group_acc", "test/avg_acc", "test/group_acc@y1_s0", "train/loss_recon"} <= set(recs[0])
    final = json.loads((out / "final.json").read_text())
    assert set(final["selections"]) == {"val_worst_group", "val_avg", "val_worst_class", "oracle_worst_group",
                                        "val_balanced", "val_avg_precision", "val_worst_precision", "val_avg_f1",
                                        "val_worst_f1", "val_auroc", "val_class_diff", "oracle_avg"}
    for sel in final["selections"].values():
        rec = recs[sel["epoch"]]
        assert sel["test"]["worst_group_acc"] == rec["test/worst_group_acc"]
        assert (out / sel["weights"]).exists()
    assert final["selections"]["oracle_worst_group"]["oracle"] is True
    again = run(RunSpec("synthetic", "mt_l1", aux=("recon",), overrides=SHORT), out)
    assert again.already_finished and again.final == final


def test_same_config_same_metrics(tmp_path: Path) -> None:
    spec = RunSpec("synthetic", "mt_l1", aux=("recon",), seed=3, overrides=SHORT)
    a, b = run(spec, tmp_path / "a").out_dir, run(spec, tmp_path / "b").out_dir
    assert _records(a) == _records(b)
    c = run(RunSpec("synthetic", "mt_l1", aux=("recon",), seed=4, overrides=SHORT), tmp_path / "c").out_dir
    assert _records(c) != _records(a)


def _cli(*args: str, cwd: Path) -> list[str]:
    return [sys.executable, "-m", "robustbench_mtl", "run", *args]


def _kill_then_resume_matches_uninterrupted(tmp_path: Path, args: list[str], epochs: int) -> None:
    """Run `args` to the end; run them again, SIGKILL the process inside an epoch after 3 epoch records, resume
    with the same command: the resumed run's selections and records equal the uninterrupted run's."""
    clean = subprocess.run(_cli(*args, "--out", "clean", cwd=tmp_path), cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr
    proc = subprocess.Popen(_cli(*args, "--out", "killed", cwd=tmp_path), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and len(read_jsonl(metrics)) < 3:
        time.sleep(0.02)
    time.sleep(0.05)  # well inside the next epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= len(read_jsonl(metrics)) < epochs, "the kill must land before the run finished"
    assert not (tmp_path / "killed" / "final.json").exists()
    resumed = subprocess.run(_cli(*args, "--out", "killed", "--json", cwd=tmp_path), cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    final_clean = json.loads((tmp_path / "clean" / "final.json").read_text())
    final_resumed = json.loads((tmp_path / "killed" / "final.json").read_text())
    assert final_resumed["resumed_from_epoch"] is not None
    assert final_resumed["selections"] == final_clean["selections"]
    assert _records(tmp_path / "killed") == _records(tmp_path / "clean")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    # 4000 training points = 80 steps an epoch, so a kill lands inside an epoch.
    args = ["--algo", "mt_l1", "--aux", "recon", "--data", "synthetic", "--set", "data.n_train=4000",
            "--set", "train.epochs=12", "--quiet", "--threads", "1"]
    _kill_then_resume_matches_uninterrupted(tmp_path, args, 12)


@pytest.mark.slow
def test_sigkill_of_a_multi_task_run_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    # Two tasks, MT-CRL's routed heads and G-IRM (var) whose weight switches on at 10% of the steps (the optimizer
    # restarts there): per-task metrics, rho_spur and the training-subset metrics of final.json must all agree.
    args = ["--algo", "erm", "--aux", "mtcrl", "--data", "multidigits", "--set", "data.n_train=1000",
            "--set", "data.n_val=300", "--set", "data.n_test=300", "--set", "train.epochs=8", "--quiet",
            "--threads", "1"]
    _kill_then_resume_matches_uninterrupted(tmp_path, args, 8)
    final = json.loads((tmp_path / "killed" / "final.json").read_text())
    entry = final["selections"]["val_avg"]
    assert {"avg_acc/left", "avg_acc/right"} <= set(entry["test"]) and set(entry["saliency"]) == {
        "test/rho_spur/left", "test/rho_spur/right"} and "avg_acc/right" in entry["train"]


def test_non_finite_loss_fails_the_run(tmp_path: Path) -> None:
    spec = RunSpec("synthetic", "erm", overrides=("backbone.norm=none", "model.head_norm=0", "train.lr=1e30",
                                                  "train.optimizer=sgd"))
    with pytest.raises(RunFailedError, match="non-finite loss"):
        run(spec, tmp_path / "r")
    assert not (tmp_path / "r" / "final.json").exists()
    assert json.loads((tmp_path / "r" / "failed.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("spec, message", [
    (RunSpec("synthetic", "mt_l1x"), "unknown algorithm 'mt_l1x'; did you mean mt_l1"),
    (RunSpec("synthetic", "mt_l1", aux=("mim",)), "objective 'mim' needs image inputs"),
    (RunSpec("toybirds", "mt_l1", aux=("recon",), backbone="mlp"), "backbone 'mlp' reads tabular inputs"),
    (RunSpec("synthetic", "mt_l1"), "needs an auxiliary objective: pass --aux with one of recon"),
    (RunSpec("synthetic", "erm", overrides=("train.lr=fast",)), "train.lr expects a number"),
    (RunSpec("synthetic", "erm", device="cuda:7" if not __import__("torch").cuda.is_available() else "bogus"),
     "device"),
])
def test_bad_input_is_one_error_and_writes_nothing(tmp_path: Path, spec: RunSpec, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run(spec, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_out_dir_holding_another_run_is_refused(tmp_path: Path) -> None:
    run(RunSpec("synthetic", "erm", overrides=("train.epochs=1",)), tmp_path / "r")
    with pytest.raises(ConfigError, match="holds a different run"):
        run(RunSpec("synthetic", "erm", overrides=("train.epochs=2",)), tmp_path / "r")


def test_aux_composes_with_any_algorithm(tmp_path: Path) -> None:
    res = run(RunSpec("synthetic", "erm", aux=("recon",), overrides=("train.epochs=2",)), tmp_path / "r")
    config = json.loads((res.out_dir / "config.json").read_text())
    assert config["objectives"] == ["recon"]
    assert "train/loss_recon" in read_jsonl(res.out_dir / "metrics.jsonl")[0]


def test_training_groups_are_hidden_from_group_free_algorithms(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_mtl.algorithms.base import Algorithm
    from robustbench_mtl.registry import ALGORITHMS

    seen: dict[str, set[int]] = {"end": set(), "aux": set()}

    class Spy(Algorithm):
        """Records every group id it is given (a test algorithm)."""

        def update(self, batch, aux_batch=None):
            seen["end"] |= set(batch.g.tolist())
            seen["aux"] |= set(aux_batch.g.tolist()) if aux_batch is not None else set()
            return super().update(batch, aux_batch)

    monkeypatch.setitem(ALGORITHMS._items, "_spy_groups", Spy)  # registered for this test only
    run(RunSpec("synthetic", "_spy_groups", aux=("recon",), overrides=("train.epochs=1",)), tmp_path / "r")
    assert seen == {"end": {-1}, "aux": {-1}}


@pytest.mark.slow
def test_image_run_with_augmentations_is_deterministic(tmp_path: Path) -> None:
    # kornia's per-sample augmentations and the aux stream draw from seeded generators only
    spec = RunSpec("toybirds", "mt_l1", aux=("simclr",), overrides=("train.epochs=1",), threads=1)
    assert _records(run(spec, tmp_path / "a").out_dir) == _records(run(spec, tmp_path / "b").out_dir)


def test_a_run_holds_its_directory_lock_and_a_second_process_refuses(tmp_path: Path) -> None:
    from robustbench_mtl.locks import is_locked

    out = tmp_path / "r"
    # A live holder: a child process keeps the lock while this one asks for the same run.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from robustbench_mtl.locks import job_lock\n"
        "with job_lock(Path(sys.argv[1])) as mine:\n    print(mine, flush=True); time.sleep(60)"), str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        with pytest.raises(ConfigError, match="is being trained by another process now"):
            run(RunSpec("synthetic", "erm", overrides=("train.epochs=1",)), out)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing of ours written
    finally:
        holder.kill()
        holder.wait()
    assert not is_locked(out)
    assert run(RunSpec("synthetic", "erm", overrides=("train.epochs=1",)), out).final["status"] == "finished"


def test_a_bad_input_found_after_the_lock_leaves_no_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_mtl import runner

    def missing_data(*args: object, **kwargs: object) -> None:
        raise ConfigError("dataset files are missing; run `robustbench-mtl prepare ...`")

    monkeypatch.setattr(runner, "Trainer", missing_data)
    with pytest.raises(ConfigError, match="dataset files are missing"):
        run(RunSpec("synthetic", "erm", overrides=("train.epochs=1",)), tmp_path / "new" / "r")
    assert not (tmp_path / "new" / "r").exists()


def test_protocols_choosing_the_same_epoch_share_one_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from robustbench_mtl import selection
    from robustbench_mtl.results import atomic_link

    writes = []
    real = selection.atomic_torch_save
    monkeypatch.setattr(selection, "atomic_torch_save",
                        lambda obj, path, **kw: (writes.append(path), real(obj, path, **kw)))
    model = torch.nn.Linear(2, 2)
    keys = ("val/worst_group_acc", "val/avg_acc", "test/worst_group_acc", "test/avg_acc")
    record = {"epoch": 0, **{k: 0.5 for k in keys}}
    selection.save_selected_models(tmp_path, [record], 0, model)
    files = sorted((tmp_path / "selected").glob("*.pt"))
    assert len(writes) == 1 and len(files) >= 4  # every protocol chose the only record: one write, the rest links
    first = torch.load(files[0], weights_only=True)
    assert all(torch.equal(torch.load(f, weights_only=True)["weight"], first["weight"]) for f in files)
    # Replacing one file later (a new best for one protocol) leaves the others as they were.
    src = tmp_path / "src.pt"
    torch.save({"w": torch.ones(1)}, src)
    atomic_link(src, tmp_path / "a.pt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "new.pt")
    os.replace(tmp_path / "new.pt", src)
    assert torch.load(tmp_path / "a.pt", weights_only=True)["w"].item() == 1.0


def test_a_start_killed_while_writing_config_json_does_not_block_the_next(tmp_path: Path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / ".lock").touch()
    (out / ".config.json.k3x9_a.tmp").write_text('{"identity": ')  # what SIGKILL mid-write leaves
    res = run(RunSpec("synthetic", "erm", overrides=("train.epochs=1",)), out)
    assert res.final["status"] == "finished"
    assert not list(out.glob(".*.tmp"))  # the partial write is gone
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")  # anything else is still not a run directory
    with pytest.raises(ConfigError, match="exists and is not a run directory"):
        run(RunSpec("synthetic", "erm", overrides=("train.epochs=1",)), tmp_path / "s")
