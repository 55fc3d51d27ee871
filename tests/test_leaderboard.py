"""Leaderboards from run directories: fake runs in the runner's exact file shapes, plus one real run."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from click.testing import CliRunner

from robustbench_mtl import leaderboard as lb
from robustbench_mtl.cli import main
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.leaderboard import collect_rows, leaderboard_markdown, render_markdown, write_leaderboards
from robustbench_mtl.results import finished_runs

GROUPS = ["y0_s0", "y0_s1", "y1_s0", "y1_s1"]
CORE = {"dist": "robustbench-mtl", "version": "0.1.0"}
PROTOCOLS = {  # name -> (label, oracle, metric, uses_val_groups), as in robustbench_mtl/selections
    "oracle_worst_group": ("Oracle (test)", True, "test/worst_group_acc", False),
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
             epoch: int = 3, final: bool = True, plugin: str | None = None, train_groups: bool = False,
             val_groups: bool = False) -> Path:
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
        "algorithm_flags": {"uses_train_groups": train_groups, "uses_val_groups": val_groups},
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


def test_single_seed_has_no_std_in_json_or_markdown(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "lb"
    make_run(runs, "erm-0", 0, val_wg=0.5, test_wg=0.57, test_avg=0.9)
    write_leaderboards(runs, out)
    row = _row(json.loads((out / "synthetic.json").read_text()))
    assert row["n_seeds"] == 1 and row["test_worst_group_acc_mean"] == pytest.approx(0.57)
    assert [row[f"test_{m}_{s}"] for m in ("worst_group_acc", "avg_acc") for s in ("std", "sem")] == [None] * 4
    md = (out / "synthetic.md").read_text()
    assert "| erm | mlp | Val-GP | 57.0 | 90.0 | 1 |" in md and "± 0.0" not in md


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
    # Without its group-label flag the row could not say whether the protocol used val group labels.
    del final["selections"]["oracle_worst_group"]["uses_val_groups"]
    (odd / "final.json").write_text(json.dumps(final))
    rows, skipped = lb.scan_rows(tmp_path)
    assert _row(rows)["runs"] == ["done"]
    assert _row(rows, protocol="val_avg")["runs"] == ["done"]
    assert _row(rows, protocol="oracle_worst_group")["runs"] == ["done"]
    assert _row(rows, protocol="val_worst_class")["runs"] == ["done", "odd"]
    assert skipped == []  # a run still running, or a protocol without a value, is not damage


def test_markdown_numbers_order_and_oracle_label(tmp_path: Path) -> None:
    make_run(tmp_path, "erm-0", 0, val_wg=0.5, test_wg=0.60, test_avg=0.80)
    make_run(tmp_path, "erm-1", 1, val_wg=0.5, test_wg=0.70, test_avg=0.90)
    make_run(tmp_path, "mt-0", 0, val_wg=0.5, test_wg=0.75, test_avg=0.85, algorithm="mt_l1", aux=("simclr",))
    md = render_markdown(collect_rows(tmp_path), "synthetic")
    assert "### synthetic" in md and "3 finished runs" in md
    assert "| erm | mlp | Val-GP | 65.0 ± 7.1 | 85.0 ± 7.1 | 2 | no | yes |" in md  # std of (.6,.7) = .0707
    assert "| mt_l1 + simclr | mlp | Val-GP | 75.0 | 85.0 | 1 | no | yes |" in md
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


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(edit(data)))


def _without(data: dict, dotted: str) -> dict:
    *outer, last = dotted.split(".")
    node = data
    for part in outer:
        node = node[part]
    del node[last]
    return data


DAMAGE = {  # name -> (file, how it is damaged, the reason the warning must give)
    "final not JSON": ("final.json", lambda p: p.write_text(""),
                       "final.json is not valid JSON (Expecting value: line 1 column 1)"),
    "final truncated": ("final.json", lambda p: p.write_text(p.read_text()[:40]), "final.json is not valid JSON ("),
    "final a list": ("final.json", lambda p: p.write_text("[]"), "final.json is not a JSON object"),
    "final no selections": ("final.json", lambda p: _edit_json(p, lambda d: _without(d, "selections")),
                            "final.json has no selections"),
    "final not finished": ("final.json", lambda p: _edit_json(p, lambda d: {**d, "status": "failed"}),
                           'final.json status is "failed", not "finished"'),
    "config not JSON": ("config.json", lambda p: p.write_text("{\"identity\": "), "config.json is not valid JSON"),
    "config missing": ("config.json", lambda p: p.unlink(), "config.json is missing"),
    "config no seed": ("config.json", lambda p: _edit_json(p, lambda d: _without(d, "identity.seed")),
                       "config.json has no identity.seed (an integer)"),
    "config no spec.data": ("config.json", lambda p: _edit_json(p, lambda d: _without(d, "spec.data")),
                            "config.json has no spec.data"),
    "config no algorithm": ("config.json", lambda p: _edit_json(p, lambda d: _without(d, "spec.algorithm")),
                            "config.json has no spec.algorithm"),
    "config no backbone": ("config.json", lambda p: _edit_json(p, lambda d: _without(d, "backbone")),
                           "config.json has no backbone"),
    "config no objectives": ("config.json", lambda p: _edit_json(p, lambda d: _without(d, "objectives")),
                             "config.json has no objectives"),
    "config no flags": ("config.json", lambda p: _edit_json(p, lambda d: _without(d, "algorithm_flags")),
                        "config.json has no algorithm_flags"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_run_is_skipped_with_its_reason(tmp_path: Path, damage: str) -> None:
    make_run(tmp_path, "good", 0, val_wg=0.5, test_wg=0.4, test_avg=0.9)
    bad = make_run(tmp_path, "sub/bad", 1, val_wg=0.9, test_wg=0.9, test_avg=0.9)
    file, corrupt, reason = DAMAGE[damage]
    corrupt(bad / file)
    rows = collect_rows(tmp_path)  # the table is built from the rest, no exception
    assert [r["runs"] for r in rows] == [["good"]] * 4
    assert lb.scan_rows(tmp_path)[0] == rows
    skipped = lb.scan_rows(tmp_path)[1]
    assert [(s.path, s.reason.startswith(reason)) for s in skipped] == [(bad, True)], skipped
    assert "\n" not in skipped[0].reason  # one line, fit for a warning
    assert [r.path for r in finished_runs(tmp_path)] == [tmp_path / "good"]
    warned: list = []
    assert lb.checked_rows(tmp_path, warned.append) == rows and warned == skipped


def _cli(*args: str):
    return CliRunner().invoke(main, ["leaderboard", *args])


def test_cli_warns_on_stderr_and_keeps_json_pure(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs, "good", 0, val_wg=0.5, test_wg=0.4, test_avg=0.9)
    (make_run(runs, "x/y", 1, val_wg=0.5, test_wg=0.4, test_avg=0.9) / "final.json").write_text("")
    warning = f"warning: skipped {runs / 'x' / 'y'}: final.json is not valid JSON (Expecting value: line 1 column 1)"
    res = _cli(str(runs), "--json")
    assert res.exit_code == 0, res.output
    assert [r["runs"] for r in json.loads(res.stdout)] == [["good"]] * 4  # stdout parses: warnings are not in it
    assert res.stderr.splitlines() == [warning]
    for args in ((), ("--out", str(tmp_path / "lb"))):
        res = _cli(str(runs), *args)
        assert res.exit_code == 0 and res.stderr.splitlines() == [warning], res.output
    assert (tmp_path / "lb" / "synthetic.md").exists()


def test_cli_every_run_damaged_is_the_no_runs_error_plus_warnings(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (make_run(tmp_path, name, 0, val_wg=0.5, test_wg=0.4, test_avg=0.9) / "config.json").write_text("[1]")
    res = _cli(str(tmp_path), "--json")
    assert res.exit_code == 2 and res.stdout == ""
    lines = res.stderr.splitlines()
    assert lines[:2] == [f"warning: skipped {tmp_path / n}: config.json is not a JSON object" for n in "ab"]
    assert len(lines) == 3 and lines[2].startswith(f"error: no finished runs under {tmp_path}")
    assert "2 damaged runs skipped" in lines[2] and "Traceback" not in res.output


def test_selection_compares_only_configurations_with_the_most_seeds(tmp_path: Path) -> None:
    # One lucky seed of lr=0.1 has the best val score; it must not beat the 3-seed configurations.
    make_run(tmp_path, "lucky-0", 0, val_wg=0.99, test_wg=0.90, test_avg=0.9, lr=0.1)
    for s in range(3):
        make_run(tmp_path, f"a{s}", s, val_wg=0.60, test_wg=0.50, test_avg=0.9, lr=0.01)
        make_run(tmp_path, f"b{s}", s, val_wg=0.50, test_wg=0.40, test_avg=0.9, lr=0.05)
    rows = collect_rows(tmp_path)
    row = _row(rows)
    assert row["runs"] == ["a0", "a1", "a2"] and row["configuration"]["hparams"]["train"]["lr"] == 0.01
    assert (row["n_configurations"], row["n_configurations_incomplete"], row["n_runs_compared"]) == (2, 1, 6)
    assert row["selection_rule"] == ("best mean val/worst_group_acc over 3 seeds among the 2 configurations with "
                                     "3 seeds; 1 configuration with fewer seeds not compared")
    md = render_markdown(rows, "synthetic")
    assert "only its configurations with the most seeds are compared" in md
    assert "Configurations not compared for having fewer seeds: erm (mlp): 1." in md


def test_selection_rule_of_a_single_complete_configuration(tmp_path: Path) -> None:
    make_run(tmp_path, "a0", 0, val_wg=0.5, test_wg=0.4, test_avg=0.9)
    row = _row(collect_rows(tmp_path), protocol="val_avg")
    assert row["selection_rule"] == "best mean val/avg_acc over 1 seed among the one configuration with 1 seed"
    assert (row["n_configurations"], row["n_configurations_incomplete"]) == (1, 0)
    assert "not compared for having fewer seeds" not in render_markdown(collect_rows(tmp_path), "synthetic")


def test_duplicate_run_directories_are_counted_and_reported(tmp_path: Path) -> None:
    make_run(tmp_path, "first/erm-0", 0, val_wg=0.5, test_wg=0.4, test_avg=0.9)
    make_run(tmp_path, "second/erm-0", 0, val_wg=0.5, test_wg=0.4, test_avg=0.9)  # same configuration and seed
    make_run(tmp_path, "first/erm-1", 1, val_wg=0.5, test_wg=0.6, test_avg=0.9)
    make_run(tmp_path, "mt-0", 0, val_wg=0.5, test_wg=0.6, test_avg=0.9, algorithm="mt", aux=("simclr",))
    rows = collect_rows(tmp_path)
    erm, mt = _row(rows), _row(rows, method="mt + simclr")
    assert (erm["n_run_dirs"], erm["n_distinct_runs"], erm["n_seeds"]) == (3, 2, 2)
    assert erm["runs"] == ["first/erm-0", "first/erm-1"]
    assert (mt["n_run_dirs"], mt["n_distinct_runs"]) == (1, 1)
    md = render_markdown(rows, "synthetic")
    assert "4 run directories, 3 distinct runs (the same configuration and seed" in md


def test_train_and_val_group_columns_and_a_footnote_true_for_every_row(tmp_path: Path) -> None:
    make_run(tmp_path, "erm", 0, val_wg=0.5, test_wg=0.4, test_avg=0.9)
    make_run(tmp_path, "dfr", 0, val_wg=0.5, test_wg=0.6, test_avg=0.9, algorithm="dfr", val_groups=True)
    make_run(tmp_path, "gdro", 0, val_wg=0.5, test_wg=0.7, test_avg=0.9, algorithm="group_dro", train_groups=True)
    rows = collect_rows(tmp_path)
    assert _row(rows, "dfr", "val_avg")["uses_val_groups_any"]
    assert not _row(rows, "erm", "val_avg")["uses_val_groups_any"]
    assert _row(rows, "erm", "val_worst_group")["uses_val_groups_any"]
    assert not _row(rows, "dfr", "val_avg")["uses_val_groups"]  # the existing field still means the protocol's
    md = render_markdown(rows, "synthetic")
    assert "| Seeds | Train groups | Val groups |" in md
    assert "| dfr | mlp | No-GP | 60.0 | 90.0 | 1 | no | yes |" in md  # DFR retrains on val groups
    assert "| erm | mlp | No-GP | 40.0 | 90.0 | 1 | no | no |" in md
    assert "| group_dro | mlp | Val-WC | 70.0 | 90.0 | 1 | yes | no |" in md
    assert "| erm | mlp | Val-GP | 40.0 | 90.0 | 1 | no | yes |" in md
    assert "| erm | mlp | *Oracle (test)* | 40.0 | 90.0 | 1 | no | no (test groups) |" in md
    assert "| dfr | mlp | *Oracle (test)* | 60.0 | 90.0 | 1 | no | yes (test groups) |" in md
    assert "without" not in md  # no protocol is called group-free
    assert "Train groups: the algorithm used training group labels." in md
    assert "Val groups: validation group labels were used, by the algorithm or by the selection protocol" in md


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


def test_a_pretrained_backbone_is_its_own_row(tmp_path: Path) -> None:
    make_run(tmp_path, "scratch", 0, val_wg=0.9, test_wg=0.5, test_avg=0.9)
    init = make_run(tmp_path, "pre", 0, val_wg=0.5, test_wg=0.7, test_avg=0.9)
    config = json.loads((init / "config.json").read_text())
    for part in (config["identity"]["hparams"], config["hparams"]):
        part["backbone"]["init"] = "pretrained/toybirds-mim"
    (init / "config.json").write_text(json.dumps(config))
    rows = [r for r in collect_rows(tmp_path) if r["protocol"] == "val_worst_group"]
    assert sorted(r["backbone"] for r in rows) == ["mlp", "mlp from toybirds-mim"]
    assert {r["backbone"]: r["test_worst_group_acc_mean"] for r in rows} == {"mlp": 0.5, "mlp from toybirds-mim": 0.7}
