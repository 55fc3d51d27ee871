"""Sweep specs, expansion, plans, job states and estimates (in-process; real launches: test_launcher_local)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from robustbench_mtl import sweep, sweep_cost, sweep_spec
from robustbench_mtl.cli import main
from robustbench_mtl.config import RunSpec, resolve
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.results import CHECKPOINT, FINAL
from robustbench_mtl.runner import default_out_dir, run

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
FAST = ['"train.epochs" = 2']


def write(tmp_path: Path, body: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def spec_text(*extra: str, methods: str = '["erm", "mt_l1+recon"]', seeds: str = "[0, 1]") -> str:
    return "\n".join(['datasets = ["synthetic"]', f"methods = {methods}", f"seeds = {seeds}", *extra]) + "\n"


def test_a_spec_file_parses_with_its_defaults(tmp_path: Path) -> None:
    s = sweep_spec.load(write(tmp_path, spec_text(), "mine.toml"))
    assert (s.name, s.runs_dir, s.backbones, s.preset, s.random) == ("mine", Path("runs"), (), "", 0)
    assert s.methods == ("erm", "mt_l1+recon") and s.seeds == (0, 1)
    assert sweep_spec.parse({"datasets": ["synthetic"], "methods": ["erm"]}).seeds == (0, 1, 2)


@pytest.mark.parametrize("body, expected", ids=lambda v: None if "\n" in v else v, argvalues=[
    (spec_text("seed = 3"), "unknown key 'seed'; did you mean 'seeds'?"),
    (spec_text("[grid]", '"trian.lr" = [0.1]'), "no job of this sweep has the scope 'trian'"),
    (spec_text("[grid]", '"train.lrr" = [0.1]'), "unknown hyperparameter 'train.lrr'; did you mean train.lr"),
    (spec_text(methods='["erm"]') + '[grid]\n"l1.weight" = [1.0]\n', "no job of this sweep has the scope 'l1'"),
    (spec_text("[grid]", '"train.lr" = 0.1'), "[grid] train.lr must be a non-empty list of values"),
    (spec_text("[fixed]", '"train" = 3'), "[fixed] key 'train' must look like scope.field"),
    (spec_text('[fixed.toybirds]', '"train.lr" = 0.1'), "is for a dataset this sweep does not have"),
    (spec_text(seeds='"0"'), "seeds must be a non-empty list of integers"),
    (spec_text("random = -1"), "random must be an integer >= 0"),
    (spec_text("random = 2", "[grid]", '"train.lr" = [0.1, 0.2]'), "random = 2 draws the hparams instead of a grid"),
    (spec_text(methods='["mt_l1+simclar"]'), "did you mean simclr"),
    (spec_text(methods='["ermm"]'), "ermm"),
    (spec_text(methods='["mt_l1+"]'), "must be an algorithm, then its --aux objectives"),
    (spec_text(methods='[]'), "methods is empty"),
    ('methods = ["erm"]\n', "datasets is empty"),
    (spec_text('[method_grid."mt+recon"]', '"train.lr" = [0.1]'), "not one of this sweep's methods"),
    (spec_text('[method_grid.erm]', '"l1.weight" = [0.1]'), "no job of method erm has the scope 'l1'"),
    (spec_text('[method_grid.erm]', '"algorithm.eta" = [0.1]'), "unknown hyperparameter 'algorithm.eta'"),
    (spec_text('preset_common = ["erm"]'), "no preset is set"),
    (spec_text('[launcher]', 'name = 3'), "[launcher] name must be a string"),
    (spec_text("[fixed]", '"train.epochs" = 2021-01-01'), "is not a number, string, boolean or list"),
    ("datasets = [\n", "is not valid TOML"),
])
def test_every_bad_input_is_one_line(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        sweep_spec.load(write(tmp_path, body))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_missing_file_is_one_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        sweep_spec.load(tmp_path / "nope.toml")
    res = CliRunner().invoke(main, ["sweep", "plan", str(tmp_path / "nope.toml")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "does not exist" in res.output


def test_wrong_value_types_are_flagged_by_resolve_like_set_values(tmp_path: Path) -> None:
    p = sweep.plan(sweep_spec.load(write(tmp_path, spec_text("[fixed]", '"train.epochs" = "many"'))))
    assert not p.jobs and len(p.invalid) == 4 and not p.ok
    assert {reason for _, reason in p.invalid} == {"train.epochs expects an integer, got 'many'"}


def test_grid_keys_apply_only_where_their_scope_is(tmp_path: Path) -> None:
    s = sweep_spec.load(write(tmp_path, spec_text(
        "[grid]", '"train.lr" = [0.01, 0.02]', '"l1.weight" = [1, 2, 3]', '"recon.weight" = [0.5, 1.0]',
        '[method_grid.erm]', '"train.lr" = [0.05]', "[fixed]", '"train.epochs" = 3',
        '[fixed.synthetic]', '"data.n_train" = 200', methods='["erm", "erm_l1", "mt_l1+recon"]')))
    runs = sweep_spec.expand(s)
    by_algo = {a: [r for r in runs if r.algorithm == a] for a in ("erm", "erm_l1", "mt_l1")}
    # erm: its own lr only (method_grid over grid) x 2 seeds; erm_l1: 2 lr x 3 l1; mt_l1: 2 lr x 3 l1 x 2 recon.
    assert [len(v) for v in by_algo.values()] == [2, 12, 24]
    assert all("train.lr=0.05" in r.overrides and not any(o.startswith("l1.") for o in r.overrides)
               for r in by_algo["erm"])
    assert all({"train.epochs=3", "data.n_train=200"} <= set(r.overrides) for r in runs)
    assert sweep_spec.expand(s) == runs  # deterministic


def test_random_draws_replace_the_grid(tmp_path: Path) -> None:
    s = sweep_spec.load(write(tmp_path, spec_text("random = 3", methods='["erm"]')))
    runs = sweep_spec.expand(s)
    assert len(runs) == 6 and sorted({r.hparams_seed for r in runs}) == [1, 2, 3]


def test_flags_give_or_replace_the_files_keys(tmp_path: Path) -> None:
    path = write(tmp_path, spec_text("[grid]", '"train.lr" = [0.01, 0.02]'))
    flags = {"seeds": [5], "grid": {"train.batch_size": ["10", "20"]}, "fixed": {"train.epochs": "2"}}
    s = sweep_spec.load(path, flags)
    assert s.seeds == (5,) and set(s.grid) == {"train.lr", "train.batch_size"} and s.fixed == {"train.epochs": "2"}
    assert len(sweep_spec.expand(s)) == 2 * 2 * 2 * 1


def test_plan_deduplicates_by_run_directory_and_shares_runs_directories(tmp_path: Path) -> None:
    # 0.05 is synthetic's default lr: both grid values are one configuration, so one directory per seed.
    s = sweep_spec.load(write(tmp_path, spec_text(f'runs_dir = "{tmp_path / "r"}"', "[grid]",
                                                  '"train.lr" = [0.05, 5e-2, 0.05000]', methods='["erm"]')))
    p = sweep.plan(s)
    assert len(p.jobs) == 2 and p.ok
    for j in p.jobs:  # `run` with the same settings writes to the same place
        default = default_out_dir(resolve(RunSpec("synthetic", "erm", seed=j.job.spec.seed)))
        assert j.job.out_dir == tmp_path / "r" / default.relative_to("runs")


def test_plan_flags_invalid_jobs_with_resolves_reason(tmp_path: Path) -> None:
    path = write(tmp_path, spec_text('[method_grid.erm]', '"train.epochs" = [0]'))
    p = sweep.plan(sweep_spec.load(path))
    assert len(p.jobs) == 2 and len(p.invalid) == 2 and not p.ok
    assert {reason for _, reason in p.invalid} == {"train.epochs must be >= 1, got 0"}
    res = CliRunner().invoke(main, ["sweep", "plan", str(path), "--no-probe"])
    assert res.exit_code == 2 and "train.epochs must be >= 1" in res.output
    res = CliRunner().invoke(main, ["sweep", "launch", str(path)])
    assert res.exit_code == 2 and "nothing was launched" in res.output and not Path("runs").exists()


def test_a_missing_dataset_is_one_line_naming_the_prepare_command(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTBENCH_MTL_DATA", str(tmp_path / "empty"))
    p = sweep.plan(sweep_spec.parse({"datasets": ["waterbirds"], "methods": ["erm", "erm_l1"], "seeds": [0, 1, 2]}))
    assert len(p.invalid) == 6 and list(p.problems.values()) == [6]
    assert "robustbench-mtl prepare waterbirds" in next(iter(p.problems))


def loop_dirs(data: str, methods: list[tuple[str, tuple[str, ...]]], seeds: range,
              overrides: list[tuple[str, ...]]) -> set[str]:
    """The directories the plain `robustbench-mtl run` loop of leaderboards/README.md creates."""
    return {str(default_out_dir(resolve(RunSpec(data, a, aux, seed=s, overrides=o))))
            for a, aux in methods for s in seeds for o in overrides}


L4 = [("erm", ()), ("erm_l1", ())]


@pytest.mark.parametrize("name, expected", [
    ("synthetic", lambda: loop_dirs("synthetic", [*L4, ("mt", ("recon",)), ("mt_l1", ("recon",))], range(5), [()])),
    ("toybirds", lambda: loop_dirs("toybirds", [*L4, ("mt", ("simclr",)), ("mt_l1", ("simclr",))], range(3),
                                   [(), ("backbone.init=pretrained/toybirds-mim",)])),
    pytest.param("toycomments", lambda: loop_dirs(
        "toycomments", [*L4, ("mt", ("mlm",)), ("mt_l1", ("mlm",)), ("mt", ("clm",)), ("mt_l1", ("clm",))], range(3),
        [()]), marks=pytest.mark.slow),
])
def test_embedded_sweeps_make_the_directories_of_the_leaderboard_loop(name: str, expected: object) -> None:
    p = sweep.plan(sweep_spec.load(SWEEPS / f"{name}.toml"))
    assert {str(j.job.out_dir) for j in p.jobs} == expected() and not p.invalid  # type: ignore[operator]
    assert (SWEEPS / f"{name}.toml").read_text().startswith("#")


@pytest.mark.parametrize("name", ["paper_waterbirds", "paper_civilcomments_small", "paper_multinli"])
def test_paper_sweeps_cross_the_papers_grids(name: str) -> None:
    runs = sweep_spec.expand(sweep_spec.load(SWEEPS / f"{name}.toml"))
    counts = {m: sum("+".join([r.algorithm, *r.aux]) == m for r in runs) for m in
              {"+".join([r.algorithm, *r.aux]) for r in runs}}
    # lr 2 x batch 4 x 5 seeds, x3 per weight (w_ssl, w_reg) a method has.
    assert sorted(counts.values()) == [40, 40, 40, 40, 120, 120, 360]
    assert {r.seed for r in runs} == set(range(5))


def test_status_counts_each_state(tmp_path: Path) -> None:
    p = sweep.plan(sweep_spec.load(write(tmp_path, spec_text(f'runs_dir = "{tmp_path / "r"}"', seeds="[0, 1, 2]"))))
    dirs = [j.job.out_dir for j in p.jobs][:5]
    for d in dirs:
        d.mkdir(parents=True)
    (dirs[0] / FINAL).write_text("{}")
    (dirs[2] / sweep.FAILED).write_text(json.dumps({"error": "loss is NaN"}))
    (dirs[3] / CHECKPOINT).write_text("")
    with sweep.job_lock(dirs[1]) as mine:  # another open file: the probe sees it as held
        assert mine
        states = [(state, detail) for _, state, detail in sweep.status(p)]
    assert states == [("done", ""), ("running", ""), ("failed", "loss is NaN"), ("interrupted", ""),
                      ("not started", ""), ("not started", "")]
    res = CliRunner().invoke(main, ["sweep", "status", str(tmp_path / "s.toml")])
    assert "1 done, 0 running, 1 failed, 1 interrupted, 3 not started" in res.output
    assert "loss is NaN" in res.output


def test_run_job_outcomes(tmp_path: Path) -> None:
    spec = RunSpec("synthetic", "erm", overrides=("train.epochs=2",))
    job = sweep.Job(spec, tmp_path / "synthetic" / "a")
    assert sweep.run_job(job) == "done synthetic/a"
    assert sweep.run_job(job) == "done synthetic/a (already finished)"
    bad = sweep.Job(replace_overrides(spec, "backbone.init=nowhere"), tmp_path / "synthetic" / "b")
    line = sweep.run_job(bad)
    assert line.startswith("failed synthetic/b: backbone.init=nowhere") and "\n" not in line
    assert sweep.job_state(bad.out_dir) == ("failed", line.split(": ", 1)[1])
    with sweep.job_lock(tmp_path / "synthetic" / "c") as mine:
        assert mine and sweep.run_job(sweep.Job(spec, tmp_path / "synthetic" / "c")).startswith("running elsewhere")


def replace_overrides(spec: RunSpec, *overrides: str) -> RunSpec:
    return RunSpec(spec.data, spec.algorithm, spec.aux, spec.backbone, spec.seed, spec.hparams_seed, spec.preset,
                   (*spec.overrides, *overrides))


def test_estimates_say_whether_recorded_or_probed(tmp_path: Path) -> None:
    s = sweep_spec.load(write(tmp_path, spec_text(f'runs_dir = "{tmp_path / "r"}"', "[fixed]", *FAST,
                                                  methods='["erm", "erm_l1"]', seeds="[0, 1]")))
    p = sweep.plan(s)
    run(p.jobs[0].job.spec, p.jobs[0].job.out_dir)  # erm seed 0 finished: its epoch times are on record
    cost = sweep_cost.estimate(p, workers=2)
    sources = {p.jobs[i].method: cost.seconds[p.jobs[i].job.out_dir][1] for i in (1, 2)}
    assert p.jobs[0].job.out_dir not in cost.seconds and sources == {"erm": "recorded", "erm_l1": "probe"}
    assert all(sec is not None and sec > 0 for sec, _ in cost.seconds.values())
    assert cost.cpu_s >= cost.wall_s > 0
    res = CliRunner().invoke(main, ["sweep", "plan", str(tmp_path / "s.toml"), "--workers", "2"])
    assert res.exit_code == 0 and "1 recorded" in res.output and "2 probe" in res.output


def test_makespan_places_longest_first() -> None:
    assert sweep_cost.makespan([4, 3, 3, 2], 2) == 6 and sweep_cost.makespan([5], 3) == 5 and sweep_cost.makespan([], 2) == 0


def test_launcher_options_are_checked_like_hparams() -> None:
    with pytest.raises(ConfigError, match="did you mean launcher.workers"):
        sweep.make_launcher("local", [{"wrkers": 2}])
    with pytest.raises(ConfigError, match="launcher.workers must be >= 1"):
        sweep.make_launcher("local", [{}, {"workers": "0"}])
    with pytest.raises(ConfigError, match="did you mean local"):
        sweep.make_launcher("locl", [])
    from robustbench_mtl.launchers.local import devices

    assert devices("none") == [] and devices("0,2") == ["cuda:0", "cuda:2"]
    with pytest.raises(ConfigError, match="launcher.gpus"):
        devices("two")


def test_split_by_is_read_from_the_spec_and_checked() -> None:
    spec = sweep_spec.parse({"datasets": ["synthetic"], "methods": ["erm"], "split_by": ["l1.weight"]})
    assert spec.split_by == ("l1.weight",)
    with pytest.raises(ConfigError, match="split_by key 'weight' must look like scope.field"):
        sweep_spec.parse({"datasets": ["synthetic"], "methods": ["erm"], "split_by": ["weight"]})
