"""The training loop on the embedded synthetic data, checked against values computed here from the run's
own records: early stopping, the epoch each selection protocol picks, the weights saved for it, torn
metrics lines and resume, the learning-rate schedule with warm-up, and gradient clipping."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from robustbench_mtl.config import RunSpec, resolve
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.results import TIMING_KEYS, read_jsonl
from robustbench_mtl.runner import Reporter, build, evaluate, run

# protocol -> (the record key it maximises, whether it re-simulates early stopping with the run's patience)
PROTOCOLS = {
    "val_worst_group": ("val/worst_group_acc", True),
    "val_avg": ("val/avg_acc", True),
    "val_worst_class": ("val/worst_class_acc", True),
    "oracle_worst_group": ("test/worst_group_acc", False),  # the oracle sees every epoch
}
CPU = torch.device("cpu")


def _records(out: Path) -> list[dict[str, Any]]:
    return read_jsonl(out / "metrics.jsonl")


def _final(out: Path) -> dict[str, Any]:
    return json.loads((out / "final.json").read_text())


def _no_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _stale_runs(values: list[float]) -> list[int]:
    """After each epoch: how many epochs in a row the value has not strictly beaten its best so far."""
    best, stale, out = -math.inf, 0, []
    for v in values:
        if v > best:
            best, stale = v, 0
        else:
            stale += 1
        out.append(stale)
    return out


def _expected_choice(values: list[float | None], patience: int) -> int:
    """The epoch a protocol must pick (docs/results-format.md): training on this metric alone stops once
    it has gone `patience` epochs without a strict improvement; among the epochs seen by then, the
    highest value, the first one on ties; null values never chosen (all null: epoch 0)."""
    seen = len(values)
    if patience:
        best, stale = -math.inf, 0
        for i, v in enumerate(values):
            if v is not None and v > best:
                best, stale = v, 0
            else:
                stale += 1
            if stale >= patience:
                seen = i + 1
                break
    candidates = [(v, -i) for i, v in enumerate(values[:seen]) if v is not None]
    return -max(candidates)[1] if candidates else 0


def _fresh_model_metrics(spec: RunSpec, weights: Path) -> dict[str, float]:
    """Val and test metrics of a freshly built model of `spec` with `weights` loaded."""
    r = resolve(spec)
    algo = build(r, CPU, total_steps=1)
    algo.model.load_state_dict(torch.load(weights, weights_only=True))
    splits = r.dataset.load()
    return {**evaluate(algo, splits["val"], "val", r), **evaluate(algo, splits["test"], "test", r)}


@pytest.fixture(scope="module")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Module-scoped runs start before conftest's per-test cache fixture: point them at the same cache.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTBENCH_MTL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


# Two runs (10 epochs, ~0.4 s each) whose protocols pick different epochs: every pair of protocols picks
# different epochs in at least one of them, and re-simulated patience changes some protocol's choice.
SELECTION_RUNS = {
    "seed2": RunSpec("synthetic", "erm", seed=2, overrides=("train.epochs=10", "train.lr=0.001", "train.patience=3")),
    "seed4": RunSpec("synthetic", "erm", seed=4, overrides=("train.epochs=10", "train.lr=0.001", "train.patience=3")),
}


@pytest.fixture(scope="module")
def selection_runs(tmp_path_factory: pytest.TempPathFactory, session_cache: None) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("selection")
    return {name: run(spec, root / name).out_dir for name, spec in SELECTION_RUNS.items()}


# -- a. early stopping ---------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, patience", [
    (("train.lr=1e-7",), 2),  # the model barely moves: both metrics plateau from epoch 0
    (("train.lr=0.003",), 3),  # val avg stalls first, worst-group one epoch later: only then does it stop
])
def test_early_stopping_stops_when_both_val_metrics_stall(tmp_path: Path, overrides: tuple[str, ...],
                                                          patience: int) -> None:
    epochs = 10
    spec = RunSpec("synthetic", "erm", seed=1, overrides=(f"train.epochs={epochs}", f"train.patience={patience}",
                                                          *overrides))
    out = run(spec, tmp_path / "r").out_dir
    records, final = _records(out), _final(out)
    stale_wg = _stale_runs([r["val/worst_group_acc"] for r in records])
    stale_avg = _stale_runs([r["val/avg_acc"] for r in records])
    stop = next(i for i in range(len(records)) if stale_wg[i] >= patience and stale_avg[i] >= patience)
    assert len(records) == stop + 1  # not one epoch more, not one fewer
    assert [r["epoch"] for r in records] == list(range(stop + 1))
    assert final["stopped_early"] is True
    assert final["epochs_run"] == len(records) < epochs
    assert final["selection_patience"] == patience
    if overrides == ("train.lr=0.003",):  # the case that tells "both stalled" from "either stalled"
        either = next(i for i in range(len(records)) if stale_wg[i] >= patience or stale_avg[i] >= patience)
        assert either < stop, "this run no longer separates the two stopping rules; pick another lr or seed"


def test_patience_zero_never_stops_early(tmp_path: Path) -> None:
    spec = RunSpec("synthetic", "erm", seed=1, overrides=("train.epochs=5", "train.lr=1e-7", "train.patience=0"))
    out = run(spec, tmp_path / "r").out_dir
    assert [r["epoch"] for r in _records(out)] == [0, 1, 2, 3, 4]
    assert _final(out)["stopped_early"] is False and _final(out)["epochs_run"] == 5


# -- b. each protocol's epoch --------------------------------------------------------------------------
def test_protocols_choose_the_epoch_their_definition_gives(selection_runs: dict[str, Path]) -> None:
    differs: set[frozenset[str]] = set()
    patience_mattered = False
    for name, out in selection_runs.items():
        records, final = _records(out), _final(out)
        patience = final["selection_patience"]
        assert patience == 3 and not any("phase" in r for r in records)
        chosen = {p: final["selections"][p]["epoch"] for p in PROTOCOLS}
        expected = {p: _expected_choice([r[metric] for r in records], patience if uses_patience else 0)
                    for p, (metric, uses_patience) in PROTOCOLS.items()}
        assert chosen == expected, name
        for p, (metric, uses_patience) in PROTOCOLS.items():
            sel = final["selections"][p]
            assert sel["metric"] == metric and sel["oracle"] is (not uses_patience)
            if uses_patience and _expected_choice([r[metric] for r in records], 0) != expected[p]:
                patience_mattered = True
        differs |= {frozenset((a, b)) for a in chosen for b in chosen if a != b and chosen[a] != chosen[b]}
        assert chosen["val_worst_group"] != chosen["val_avg"], f"{name}: Val-GP and No-GP must pick different epochs"
    # Swapping any two protocols' metrics, or ignoring patience, changes some choice above.
    assert differs == {frozenset((a, b)) for a in PROTOCOLS for b in PROTOCOLS if a != b}, \
        "these runs no longer separate every pair of protocols; pick other seeds"
    assert patience_mattered, "patience changes no protocol's choice in these runs; pick other seeds"


def test_selection_entries_hold_the_chosen_records_metrics(selection_runs: dict[str, Path]) -> None:
    for out in selection_runs.values():
        records, final = _records(out), _final(out)
        for p, sel in final["selections"].items():
            rec = records[sel["epoch"]]
            for split in ("val", "test"):
                assert sel[split] == {k[len(split) + 1:]: v for k, v in rec.items() if k.startswith(f"{split}/")}


# -- c. the weights saved for each protocol ------------------------------------------------------------
def test_selected_weights_reproduce_the_chosen_epoch(selection_runs: dict[str, Path]) -> None:
    out = selection_runs["seed2"]
    final = _final(out)
    weights = {}
    for p, sel in final["selections"].items():
        assert sel["weights"] == f"selected/{p}.pt"
        path = out / sel["weights"]
        weights[p] = torch.load(path, weights_only=True)
        metrics = _fresh_model_metrics(SELECTION_RUNS["seed2"], path)
        for split in ("val", "test"):
            for key, value in sel[split].items():
                assert metrics[f"{split}/{key}"] == pytest.approx(value, abs=1e-6, nan_ok=True), (p, split, key)
    by_epoch = {final["selections"][p]["epoch"]: p for p in weights}
    assert len(by_epoch) >= 2, "every protocol chose the same epoch; pick another seed"
    for a in by_epoch.values():
        for b in by_epoch.values():
            same_epoch = final["selections"][a]["epoch"] == final["selections"][b]["epoch"]
            same_weights = all(torch.equal(weights[a][k], weights[b][k]) for k in weights[a])
            assert same_weights == same_epoch, (a, b)


# -- d. torn metrics lines and resume ------------------------------------------------------------------
def _tear_last_line(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])


def test_read_jsonl_stops_at_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    records = [{"epoch": 0, "val/avg_acc": 0.5}, {"epoch": 1, "val/avg_acc": 0.625, "note": "a b"}]
    torn = json.dumps({"epoch": 2, "val/avg_acc": 0.75})
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + torn[: len(torn) // 2])
    assert read_jsonl(path) == records
    path.write_text("".join(json.dumps(r) + "\n" for r in records))  # the same file without the torn line
    assert read_jsonl(path) == records
    assert read_jsonl(tmp_path / "missing.jsonl") == []


class _CrashAfterEpoch(Reporter):
    """Raises once epoch `epoch` is recorded and checkpointed, like a process killed there."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        if epoch == self.epoch:
            raise _Crash


class _Crash(Exception):
    pass


RESUME = RunSpec("synthetic", "erm", seed=2, overrides=("train.epochs=5", "train.lr=0.001", "train.patience=0"))


def test_resume_after_a_torn_record_matches_the_uninterrupted_run(tmp_path: Path) -> None:
    # The checkpoint holds epoch 1; a half-written record (epoch 2) follows the complete ones.
    whole = run(RESUME, tmp_path / "whole").out_dir
    with pytest.raises(_Crash):
        run(RESUME, tmp_path / "cut", reporter=_CrashAfterEpoch(1))
    metrics = tmp_path / "cut" / "metrics.jsonl"
    torn = json.dumps(_records(whole)[2])
    metrics.write_text(metrics.read_text() + torn[: len(torn) // 2])
    assert [r["epoch"] for r in read_jsonl(metrics)] == [0, 1]
    resumed = run(RESUME, tmp_path / "cut")
    assert resumed.resumed_from_epoch == 1
    assert _no_timing(_records(tmp_path / "cut")) == _no_timing(_records(whole))
    assert {p: s["epoch"] for p, s in resumed.final["selections"].items()} == \
        {p: s["epoch"] for p, s in _final(whole)["selections"].items()}


def test_resume_when_the_checkpointed_epochs_record_is_torn(tmp_path: Path) -> None:
    whole = run(RESUME, tmp_path / "whole").out_dir
    cut = run(RESUME, tmp_path / "cut").out_dir
    (cut / "final.json").unlink()
    _tear_last_line(cut / "metrics.jsonl")
    run(RESUME, cut)
    assert _no_timing(_records(cut)) == _no_timing(_records(whole))


def test_resume_from_a_checkpoint_with_its_records_pickled_as_a_list(tmp_path: Path) -> None:
    # Checkpoints written before records_json pickled the records themselves; they resume the same.
    whole = run(RESUME, tmp_path / "whole").out_dir
    with pytest.raises(_Crash):
        run(RESUME, tmp_path / "cut", reporter=_CrashAfterEpoch(1))
    path = tmp_path / "cut" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["records"] = json.loads(state.pop("records_json"))
    torch.save(state, path)
    (tmp_path / "cut" / "metrics.jsonl").write_text("")  # only the checkpoint can give the records back
    run(RESUME, tmp_path / "cut")
    assert _no_timing(_records(tmp_path / "cut")) == _no_timing(_records(whole))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names synced files through /proc/self/fd")
def test_epochs_skip_fsync_and_a_run_is_synced_before_its_final_json(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    counts = {}
    for epochs in (2, 6):
        out = tmp_path / f"e{epochs}"
        synced.clear()
        run(RunSpec("synthetic", "erm", overrides=(f"train.epochs={epochs}", "train.patience=0")), out)
        names = [Path(p).name for p in synced if Path(p).is_relative_to(out)]
        final_at = next(i for i, n in enumerate(names) if n.startswith(".final.json."))
        written = ["metrics.jsonl", "checkpoint.pt", *(p.name for p in (out / "selected").glob("*.pt"))]
        assert len(written) > 2 and all(name in names[:final_at] for name in written)
        counts[epochs] = len(names)
    assert counts[2] == counts[6]  # the number of fsyncs does not grow with the epochs


# -- e. learning-rate schedule and warm-up -------------------------------------------------------------
def _hand_factor(s: int, scheduler: str, warmup: int, total: int) -> float:
    if s < warmup:
        return (s + 1) / warmup
    if scheduler == "constant":
        return 1.0
    frac = min(1.0, (s - warmup) / (total - warmup))
    return 0.5 * (1 + math.cos(math.pi * frac)) if scheduler == "cosine" else 1 - frac


# (scheduler, steps after which, factor): a few values worked out on paper for warmup 5 of 20 steps
BY_HAND = [("constant", 0, 0.2), ("constant", 4, 1.0), ("constant", 20, 1.0),
           ("cosine", 0, 0.2), ("cosine", 3, 0.8), ("cosine", 5, 1.0), ("cosine", 10, 0.75), ("cosine", 20, 0.0),
           ("linear", 1, 0.4), ("linear", 5, 1.0), ("linear", 8, 0.8), ("linear", 20, 0.0)]


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
@pytest.mark.parametrize("scheduler", ["constant", "cosine", "linear"])
@pytest.mark.parametrize("warmup", [0, 5])
def test_lr_schedule_with_warmup_step_by_step(scheduler: str, warmup: int) -> None:
    total, lr = 20, 0.01
    r = resolve(RunSpec("synthetic", "erm", overrides=(f"train.scheduler={scheduler}", f"train.warmup_steps={warmup}",
                                                      f"train.lr={lr}")))
    algo = build(r, CPU, total_steps=total)
    seen = []
    for s in range(total + 1):  # the rate of step s (0-based), then the rate after the last step
        seen.append(algo.scheduler.get_last_lr()[0])
        assert algo.optimizer.param_groups[0]["lr"] == seen[-1]
        if s < total:
            algo.scheduler.step()
    assert seen == pytest.approx([lr * _hand_factor(s, scheduler, warmup, total) for s in range(total + 1)],
                                 rel=1e-12, abs=1e-15)
    if warmup:
        for name, s, factor in BY_HAND:
            if name == scheduler:
                assert seen[s] == pytest.approx(lr * factor, rel=1e-12, abs=1e-15), (scheduler, s)
    if scheduler != "constant":
        assert seen[-1] == pytest.approx(0.0, abs=1e-15) and seen[warmup] == pytest.approx(lr)


def test_recorded_lr_is_the_rate_after_each_epoch(tmp_path: Path) -> None:
    # 1000 training points at batch 50: 20 steps an epoch, 40 in all; warm-up 5, then cosine over 35.
    spec = RunSpec("synthetic", "erm", overrides=("train.epochs=2", "train.scheduler=cosine", "train.warmup_steps=5",
                                                  "train.lr=0.05", "train.patience=0"))
    records = _records(run(spec, tmp_path / "r").out_dir)
    assert [r["step"] for r in records] == [20, 40]
    assert records[0]["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 15 / 35)), rel=1e-12)
    assert records[1]["lr"] == pytest.approx(0.0, abs=1e-15)


# -- f. gradient clipping ------------------------------------------------------------------------------
def _grads_after_one_step(grad_clip: float) -> list[torch.Tensor]:
    r = resolve(RunSpec("synthetic", "erm", overrides=(f"train.grad_clip={grad_clip}",)))
    algo = build(r, CPU, total_steps=10)
    train = r.dataset.load()["train"]
    batch = train.batch(torch.arange(50))
    batch.y["y"] = 1 - batch.y["y"]  # every label wrong: a large loss
    total, _ = algo.compute_loss(batch, None)
    algo.step(100 * total)
    return [p.grad.detach().clone() for p in algo.model.parameters() if p.grad is not None]


def _norm(grads: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def test_grad_clip_bounds_the_global_gradient_norm() -> None:
    c = 1e-3
    clipped, free = _grads_after_one_step(c), _grads_after_one_step(0.0)
    assert len(clipped) == len(free) > 0
    assert _norm(free) > 10 * c  # the same batch and weights (same seed): unclipped, the norm is well above c
    assert _norm(clipped) <= c + 1e-6
    assert _norm(clipped) == pytest.approx(c, rel=1e-3)  # scaled down to c, not zeroed
    scale = c / _norm(free)  # one factor for all parameters: the direction is kept
    for g, f in zip(clipped, free):
        assert torch.allclose(g, f * scale, rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("mode", ["none", "bias_norm", "inverted"])
def test_weight_decay_groups(mode: str) -> None:
    from torch import nn

    spec = RunSpec("synthetic", "erm", overrides=("train.weight_decay=0.01", f"train.no_decay={mode}",
                                                  "train.optimizer=adamw"))
    algo = build(resolve(spec), torch.device("cpu"), 1)
    decay = {id(p): g["weight_decay"] for g in algo.optimizer.param_groups for p in g["params"]}
    norm = next(m for m in algo.model.modules() if isinstance(m, nn.LayerNorm))
    linear = next(m for m in algo.model.modules() if isinstance(m, nn.Linear))
    want_plain, want_exempt = {"none": (0.01, 0.01), "bias_norm": (0.01, 0.0), "inverted": (0.0, 0.01)}[mode]
    assert decay[id(linear.weight)] == want_plain
    assert decay[id(linear.bias)] == want_exempt and decay[id(norm.weight)] == want_exempt
    assert len(decay) == sum(1 for p in algo.model.parameters() if p.requires_grad)  # every parameter once
    assert algo.optimizer.defaults["eps"] == 1e-8


def test_warmup_ratio_is_a_fraction_of_the_schedule() -> None:
    spec = RunSpec("synthetic", "erm", overrides=("train.warmup_ratio=0.06", "train.scheduler=linear"))
    algo = build(resolve(spec), torch.device("cpu"), total_steps=100)
    assert algo.warmup() == 6
    lrs = []
    for _ in range(8):
        lrs.append(algo.scheduler.get_last_lr()[0] / algo.train_hp.lr)
        algo.optimizer.step()
        algo.scheduler.step()
    assert lrs[:6] == pytest.approx([k / 6 for k in range(1, 7)]) and lrs[6] == pytest.approx(1 - 0 / 94)
    assert lrs[7] == pytest.approx(1 - 1 / 94)


def test_an_unreadable_checkpoint_is_one_line_and_deleting_it_starts_the_run_over(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from robustbench_mtl.cli import main

    args = ["run", "--algo", "erm", "--data", "synthetic", "--set", "train.epochs=2", "--out", str(tmp_path / "r"),
            "--quiet"]
    with pytest.raises(_Crash):
        run(RunSpec("synthetic", "erm", overrides=("train.epochs=2",)), tmp_path / "r", reporter=_CrashAfterEpoch(0))
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"")  # what a machine crash can leave of an unsynced write
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "checkpoint.pt cannot be read" in res.output and "delete it" in res.output
    (tmp_path / "r" / "checkpoint.pt").unlink()
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0 and [r["epoch"] for r in _records(tmp_path / "r")] == [0, 1]


def test_resume_refuses_chosen_weights_a_crash_cut_short(tmp_path: Path) -> None:
    # Weights chosen before the checkpoint are not written again, so final.json would vouch for a broken file.
    with pytest.raises(_Crash):
        run(RESUME, tmp_path / "r", reporter=_CrashAfterEpoch(1))
    weights = tmp_path / "r" / "selected" / "val_worst_group.pt"
    weights.unlink()  # a hard link: replace it, so the other protocols' files stay whole
    weights.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"val_worst_group.pt cannot be read .* delete .*checkpoint.pt"):
        run(RESUME, tmp_path / "r")
    assert not (tmp_path / "r" / "final.json").exists()
    (tmp_path / "r" / "checkpoint.pt").unlink()
    assert run(RESUME, tmp_path / "r").resumed_from_epoch is None  # started over, and finished
