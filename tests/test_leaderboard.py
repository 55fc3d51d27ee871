"""Leaderboards from run directories: fake runs in the runner's exact file shapes, plus one real run."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from robustbench_mtl.errors import ConfigError
from robustbench_mtl.leaderboard import collect_rows, leaderboard_markdown, render_markdown, write_leaderboards

GROUPS = ["y0_s0", "y0_s1", "y1_s0", "y1_s1"]
CORE = {"dist": "robustbench-mtl", "version": "0.1.0"}
PROTOCOLS = {  # name -> (label, oracle, metric, uses_val_groups), as in robustbench_mtl/selections
    "oracle_worst_group": ("Oracle (test)", True, "test/worst_group_acc", True),
    "val_avg": ("No-GP", False, "val/avg_acc", False),
    "val_worst_class": ("Val-WC", False, "val/worst_class_acc", False),
    "val_worst_group": ("Val-GP", False, "val/worst_group_acc", True),
}


def _split(wg: float, avg: float) -> dict[str, float]:
    """One split view as final.json holds it (keys without the `split/` prefix)."""
    return {"loss": 0.7, "avg_acc": avg, "worst_group_acc": wg, "balanced_acc": avg, "adjusted_acc": avg,
            **{f"group_acc@{g}": max(wg, avg) for g in GROUPS[:-1]}, f"group_acc@{GROUPS[-1]}": wg,
            "worst_class_acc": avg}


def make_run(root: Path, name: str, seed: int, val_wg: float, test_wg: float, test_avg: float,
             algorithm: str = "erm", aux: tuple[str, ...] = (), lr: float = 0.05, dataset: str = "synthetic",
             epoch: int = 3, final: bool = True, plugin: str | None = None) -> Path:
    """A run directory shaped like the runner's: config.json (see runner._config_json) and final.json."""
    hparams = {"data": {"n_train": 1000, "seed": 0}, "backbone": {"hidden": [], "rep_dim": 8},
               "algorithm": {}, "train": {"epochs": 5, "lr": lr, "patience": 0}, "model": {"head_norm": 1.0}}
    spec = {"data": dataset, "algorithm": algorithm, "aux": list(aux), "backbone": None, "seed": seed,
            "hparams_seed": 0, "preset": None, "overrides": [f"train.lr={lr}"]}
    extra = ["l1"] if algorithm.endswith("_l1") else []
    objectives = [*aux, *extra]
    components = {"dataset": {"name": dataset, **CORE}, "backbone": {"name": "mlp", **CORE},
                  "algorithm": {"name": algorithm, **CORE},
                  **{f"objective:{o}": {"name": o, **CORE} for o in objectives}}
    if plugin:
        components[f"objective:{aux[0]}"] = {"name": aux[0], "dist": plugin, "version": "0.2"}
    config = {
        "identity": {"data": dataset, "algorithm": algorithm, "aux": list(aux), "backbone": "mlp", "seed": seed,
                     "hparams": hparams},
        "spec": {**spec, "device": "auto"}, "backbone": "mlp",
        "objectives": objectives, "hparams": hparams, "components": components,
        "algorithm_flags": {"uses_train_groups": False, "uses_val_groups": False},
        "data": {"name": dataset, "fingerprint": "e7377b7642ea916a", "tasks": {"y": 2}, "group_names": GROUPS,
                 "sizes": {"train": 1000, "val": 1000, "test": 2000}, "train_group_counts": [440, 56, 50, 454]},
        "provenance": {"versions": {"python": "3.11.7", "robustbench-mtl": "0.1.0"}, "git": None,
                       "platform": "Linux", "device": "cpu", "device_name": "x86_64", "torch_threads": 1},
    }
    selections = {
        p: {"label": label, "oracle": oracle, "metric": metric, "uses_val_groups": uvg, "epoch": epoch,
            "val": _split(val_wg, 0.8), "test": _split(test_wg, test_avg), "weights": f"selected/{p}.pt"}
        for p, (label, oracle, metric, uvg) in PROTOCOLS.items()
    }
    out = root / name
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "metrics.jsonl").write_text("")
    if final:
        (out / "final.json").write_text(json.dumps({
            "status": "finished", "epochs_run": 5, "stopped_early": False, "selection_patience": 0,
            "resumed_from_epoch": None, "time_s_this_session": 1.0, "selections": selections}, indent=2))
    return out


def _row(rows: list[dict], method: str = "erm", protocol: str = "val_worst_group") -> dict:
    (row,) = [r for r in rows if r["method"] == method and r["protocol"] == protocol]
    return row


def test_mean_std_sem_over_seeds(tmp_path: Path) -> None:
    wgs, avgs = [0.50, 0.60, 0.70], [0.80, 0.85, 0.95]
    for s, (wg, avg) in enumerate(zip(wgs, avgs)):
        make_run(tmp_path, f"erm-{s}", s, val_wg=0.5, test_wg=wg, test_avg=avg, epoch=s + 1)
    row = _row(collect_rows(tmp_path))
    assert row["test_worst_group_acc_mean"] == pytest.approx(0.60)
    assert row["test_worst_group_acc_std"] == pytest.approx(statistics.stdev(wgs))  # ddof=1: 0.1
    assert row["test_worst_group_acc_sem"] == pytest.approx(statistics.stdev(wgs) / math.sqrt(3))
    assert row["test_avg_acc_mean"] == pytest.approx(statistics.mean(avgs))
    assert row["test_avg_acc_std"] == pytest.approx(statistics.stdev(avgs))
    assert (row["n_seeds"], row["seeds"], row["epochs"]) == (3, [0, 1, 2], [1, 2, 3])
    assert row["runs"] == ["erm-0", "erm-1", "erm-2"] and row["n_configurations"] == 1
    assert row["selection"] == "Val-GP" and row["uses_val_groups"] and not row["oracle"]
    assert not row["uses_train_groups"] and row["components"]["algorithm"]["dist"] == "robustbench-mtl"


def test_single_seed_has_zero_std(tmp_path: Path) -> None:
    make_run(tmp_path, "erm-0", 0, val_wg=0.5, test_wg=0.4, test_avg=0.9)
    row = _row(collect_rows(tmp_path))
    assert (row["test_worst_group_acc_std"], row["test_worst_group_acc_sem"], row["n_seeds"]) == (0.0, 0.0, 1)


def test_hparam_selection_picks_best_mean_validation_metric(tmp_path: Path) -> None:
    # lr=0.01 has the better mean val worst-group (0.6 vs 0.5) even though one lr=0.1 seed beats both.
    make_run(tmp_path, "a0", 0, val_wg=0.55, test_wg=0.30, test_avg=0.9, lr=0.01)
    make_run(tmp_path, "a1", 1, val_wg=0.65, test_wg=0.40, test_avg=0.9, lr=0.01)
    make_run(tmp_path, "b0", 0, val_wg=0.30, test_wg=0.90, test_avg=0.9, lr=0.1)
    make_run(tmp_path, "b1", 1, val_wg=0.70, test_wg=0.90, test_avg=0.9, lr=0.1)
    rows = collect_rows(tmp_path)
    row = _row(rows)
    assert row["runs"] == ["a0", "a1"] and row["n_configurations"] == 2 and row["n_runs_compared"] == 4
    assert row["configuration"]["hparams"]["train"]["lr"] == 0.01
    assert row["test_worst_group_acc_mean"] == pytest.approx(0.35)
    assert row["selection_score_mean"] == pytest.approx(0.60)
    # The oracle selects by its own (test) metric, so it picks the other configuration.
    assert _row(rows, protocol="oracle_worst_group")["runs"] == ["b0", "b1"]


def test_unfinished_runs_and_missing_metrics_are_skipped(tmp_path: Path) -> None:
    make_run(tmp_path, "done", 0, val_wg=0.5, test_wg=0.4, test_avg=0.9)
    make_run(tmp_path, "running", 1, val_wg=0.9, test_wg=0.9, test_avg=0.9, final=False)
    odd = make_run(tmp_path, "odd", 2, val_wg=0.5, test_wg=0.6, test_avg=0.9)
    final = json.loads((odd / "final.json").read_text())
    del final["selections"]["val_avg"]  # protocol absent
    final["selections"]["val_worst_group"]["val"]["worst_group_acc"] = None  # NaN is written as null
    (odd / "final.json").write_text(json.dumps(final))
    rows = collect_rows(tmp_path)
    assert _row(rows)["runs"] == ["done"]
    assert _row(rows, protocol="val_avg")["runs"] == ["done"]
    assert _row(rows, protocol="val_worst_class")["runs"] == ["done", "odd"]


def test_markdown_numbers_order_and_oracle_label(tmp_path: Path) -> None:
    make_run(tmp_path, "erm-0", 0, val_wg=0.5, test_wg=0.60, test_avg=0.80)
    make_run(tmp_path, "erm-1", 1, val_wg=0.5, test_wg=0.70, test_avg=0.90)
    make_run(tmp_path, "mt-0", 0, val_wg=0.5, test_wg=0.75, test_avg=0.85, algorithm="mt_l1", aux=("simclr",))
    md = render_markdown(collect_rows(tmp_path), "synthetic")
    assert "### synthetic" in md and "3 finished runs" in md
    assert "| erm | mlp | Val-GP | 65.0 ± 7.1 | 85.0 ± 7.1 | 2 | no |" in md  # std of (.6,.7) = .0707
    assert "| mt_l1 + simclr | mlp | Val-GP | 75.0 ± 0.0 | 85.0 ± 0.0 | 1 | no |" in md
    assert "*Oracle (test)*" in md and "Providers" not in md
    lines = [ln for ln in md.splitlines() if ln.startswith("| ") and "Method" not in ln]
    assert [ln.split(" | ")[2] for ln in lines] == ["Val-GP"] * 2 + ["No-GP"] * 2 + ["Val-WC"] * 2 + \
        ["*Oracle (test)*"] * 2
    assert lines[0].startswith("| mt_l1 + simclr")  # higher worst-group first within a protocol
    assert "min over groups" in md and "per-example" in md


def test_markdown_shows_plugin_providers(tmp_path: Path) -> None:
    make_run(tmp_path, "p", 0, val_wg=0.5, test_wg=0.6, test_avg=0.8, algorithm="mt", aux=("fancy",),
             plugin="rbm-fancy")
    md = render_markdown(collect_rows(tmp_path), "synthetic")
    assert "Providers" in md and "objective:fancy: rbm-fancy 0.2" in md


def test_write_leaderboards_one_pair_per_dataset(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "lb"
    make_run(runs, "s/erm-0", 0, val_wg=0.5, test_wg=0.6, test_avg=0.8)
    make_run(runs, "t/erm-0", 0, val_wg=0.5, test_wg=0.6, test_avg=0.8, dataset="toybirds")
    paths = write_leaderboards(runs, out)
    assert sorted(p.name for p in paths) == ["synthetic.json", "synthetic.md", "toybirds.json", "toybirds.md"]
    rows = json.loads((out / "toybirds.json").read_text())
    assert {r["dataset"] for r in rows} == {"toybirds"} and len(rows) == 4
    assert "### toybirds" in (out / "toybirds.md").read_text()
    md = leaderboard_markdown(runs)
    assert "### synthetic" in md and "### toybirds" in md


def test_no_runs_is_a_config_error_and_writes_nothing(tmp_path: Path) -> None:
    empty, out = tmp_path / "empty", tmp_path / "lb"
    empty.mkdir()
    make_run(empty, "running", 0, val_wg=0.5, test_wg=0.6, test_avg=0.8, final=False)
    for runs in (empty, tmp_path / "missing"):
        with pytest.raises(ConfigError, match="robustbench-mtl run|does not exist"):
            write_leaderboards(runs, out)
        with pytest.raises(ConfigError):
            leaderboard_markdown(runs)
    assert not out.exists()
    assert collect_rows(tmp_path / "missing") == []


@pytest.mark.slow
def test_real_runner_two_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_mtl.runner import RunSpec, run

    monkeypatch.setenv("ROBUSTBENCH_MTL_CACHE", str(tmp_path / "cache"))  # keep the user's cache clean
    for s in (0, 1):
        spec = RunSpec(data="synthetic", algorithm="erm", seed=s, overrides=("train.epochs=3",))
        run(spec, out_dir=tmp_path / f"r{s}")
    rows = collect_rows(tmp_path)
    row = _row(rows)
    assert row["n_seeds"] == 2 and row["n_configurations"] == 1 and row["runs"] == ["r0", "r1"]
    assert all(0 <= e < 3 for e in row["epochs"])
    md = leaderboard_markdown(tmp_path)
    assert any(ln.startswith("| erm | mlp | Val-GP |") and ln.split(" | ")[5] == "2" for ln in md.splitlines())
