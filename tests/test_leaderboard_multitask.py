"""Multi-task leaderboards: per-task accuracy and ρ_spur columns, Δm against ERM by hand, one-task tables unchanged."""
from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest

from robustbench_mtl import leaderboard as lb
from robustbench_mtl.leaderboard.select import ROW_KEYS
from test_leaderboard import make_run

TASKS = {"left": 10, "right": 10}
ERM = {0: (0.80, 0.60), 1: (0.90, 0.50), 2: (0.70, 0.40)}  # seed -> (test acc left, right)
STL = {0: (0.88, 0.66), 1: (0.81, 0.55), 3: (0.50, 0.50)}  # seed 3: no ERM run to pair with
RHO = {0: (0.20, 0.30), 1: (0.30, 0.50), 2: (0.25, 0.40), 3: (0.10, 0.10)}


def mt_run(root: Path, algorithm: str, seed: int, accs: tuple[float, float], rho: tuple[float, float] | None,
           dataset: str = "multidigits") -> Path:
    """make_run's run directory with two tasks: per-task test accuracy and, when given, ρ_spur per protocol."""
    avg = statistics.fmean(accs)
    out = make_run(root, f"{dataset}-{algorithm}-{seed}", seed, val_wg=0.5, test_wg=min(accs) - 0.1, test_avg=avg,
                   algorithm=algorithm, dataset=dataset)
    config = json.loads((out / "config.json").read_text())
    config["data"]["tasks"] = TASKS
    (out / "config.json").write_text(json.dumps(config))
    final = json.loads((out / "final.json").read_text())
    for entry in final["selections"].values():
        entry["test"].update({f"avg_acc/{t}": a for t, a in zip(TASKS, accs)})
        if rho is not None:
            entry["saliency"] = {f"test/rho_spur/{t}": v for t, v in zip(TASKS, rho)}
    (out / "final.json").write_text(json.dumps(final))
    return out


def _runs(root: Path) -> Path:
    for seed, accs in ERM.items():
        mt_run(root, "erm", seed, accs, RHO[seed])
    for seed, accs in STL.items():
        mt_run(root, "stl", seed, accs, RHO[seed] if seed != 1 else None)  # seed 1 predates rho_spur
    return root


def _row(rows: list[dict], method: str, dataset: str = "multidigits", protocol: str = "val_worst_group") -> dict:
    (row,) = [r for r in rows if (r["method"], r["dataset"], r["protocol"]) == (method, dataset, protocol)]
    return row


def test_delta_m_against_a_hand_computation(tmp_path: Path) -> None:
    rows = lb.collect_rows(_runs(tmp_path))
    stl, erm = _row(rows, "stl"), _row(rows, "erm")
    # Seeds 0 and 1 are shared: ((.88-.80)/.80 + (.66-.60)/.60)/2 = 0.1; ((.81-.90)/.90 + (.55-.50)/.50)/2 = 0.
    assert stl["delta_m_seeds"] == [0, 1] and stl["delta_m_per_seed"] == pytest.approx([0.1, 0.0])
    assert stl["delta_m_mean"] == pytest.approx(0.05)
    assert stl["delta_m_std"] == pytest.approx(statistics.stdev([0.1, 0]))
    assert stl["delta_m_note"] is None
    assert (erm["delta_m_mean"], erm["delta_m_std"], erm["delta_m_seeds"]) == (0.0, 0.0, [0, 1, 2])
    for protocol in ("val_avg", "oracle_worst_group"):  # each protocol against ERM's row of that protocol
        assert _row(rows, "stl", protocol=protocol)["delta_m_mean"] == pytest.approx(0.05)


def test_per_task_accuracy_and_rho_spur_fields(tmp_path: Path) -> None:
    rows = lb.collect_rows(_runs(tmp_path))
    stl = _row(rows, "stl")
    assert set(stl) == set(ROW_KEYS) and stl["tasks"] == ["left", "right"] and stl["seeds"] == [0, 1, 3]
    left = stl["test_task_acc"]["left"]
    assert left["per_seed"] == [0.88, 0.81, 0.50] and left["n"] == 3
    assert left["mean"] == pytest.approx(statistics.fmean([0.88, 0.81, 0.50]))
    assert left["std"] == pytest.approx(statistics.stdev([0.88, 0.81, 0.50]))
    rho = stl["test_rho_spur"]["right"]  # seed 1 has none: over the two seeds that have it
    assert rho["per_seed"] == [0.30, None, 0.10] and rho["n"] == 2 and rho["mean"] == pytest.approx(0.20)


def test_markdown_multitask_columns(tmp_path: Path) -> None:
    md = lb.render_markdown(lb.collect_rows(_runs(tmp_path)), "multidigits")
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert lines[0] == ("| Method | Backbone | Selection | Test worst-group acc. | Test acc. left | Test acc. right | "
                        "Test avg acc. | ρ_spur left | ρ_spur right | Δm vs erm | Seeds | Train groups | Val groups | "
                        "Attr. setting | Configs | Selected hparams | Source |")
    erm = next(ln for ln in lines if ln.startswith("| erm | mlp | Val-GP |"))
    assert "| 80.0 ± 10.0 | 50.0 ± 10.0 | 65.0 ± 8.7 | 0.250 ± 0.050 | 0.400 ± 0.100 | baseline | 3 |" in erm
    stl = next(ln for ln in lines if ln.startswith("| stl | mlp | Val-GP |"))
    assert "| 0.150 ± 0.071 (n=2) | 0.200 ± 0.141 (n=2) | +5.0 ± 7.1 (n=2) | 3 |" in stl
    assert "Δm vs erm: (1/T) Σ_t (acc_t − acc_t^ERM) / acc_t^ERM" in md


def test_no_erm_runs_is_a_dash_with_a_footnote_and_no_rho_columns_without_rho(tmp_path: Path) -> None:
    for seed, accs in STL.items():
        mt_run(tmp_path, "stl", seed, accs, None, dataset="multi_mnist")
    rows = lb.collect_rows(tmp_path)
    row = _row(rows, "stl", "multi_mnist")
    assert row["delta_m_mean"] is None and row["test_rho_spur"] is None and "no vanilla multi-task ERM" in row[
        "delta_m_note"]
    md = lb.render_markdown(rows, "multi_mnist")
    header = next(ln for ln in md.splitlines() if ln.startswith("| Method |"))
    assert "ρ_spur" not in md and "| Test avg acc. | Δm vs erm | Seeds |" in header
    assert "| — [Δ1] | 3 |" in md
    assert "- [Δ1] no vanilla multi-task ERM runs (erm without --aux) with this backbone and selection protocol" in md


def test_one_task_tables_unchanged_and_rows_null(tmp_path: Path) -> None:
    make_run(tmp_path, "one", 0, val_wg=0.5, test_wg=0.57, test_avg=0.9)
    before = lb.render_markdown(lb.collect_rows(tmp_path), "synthetic")
    _runs(tmp_path)
    rows = lb.collect_rows(tmp_path)
    assert lb.render_markdown(rows, "synthetic") == before and "Test acc." not in before and "Δm" not in before
    one = _row(rows, "erm", "synthetic")
    assert all(one[k] is None for k in ("tasks", "test_task_acc", "test_rho_spur", "delta_m_mean", "delta_m_note"))


def test_json_and_csv_carry_the_new_fields(tmp_path: Path) -> None:
    out = tmp_path / "lb"
    lb.write_leaderboards(_runs(tmp_path / "runs"), out, formats="json,csv")
    stl = _row(json.loads((out / "multidigits.json").read_text()), "stl")
    assert stl["delta_m_mean"] == pytest.approx(0.05) and stl["test_rho_spur"]["left"]["n"] == 2
    table = list(csv.DictReader(io.StringIO((out / "multidigits.csv").read_text())))
    row = next(r for r in table if (r["method"], r["protocol"]) == ("stl", "val_worst_group"))
    assert float(row["test_acc_right_mean"]) == pytest.approx(statistics.fmean([0.66, 0.55, 0.50]))
    assert float(row["rho_spur_left_mean"]) == pytest.approx(0.15)
    assert float(row["delta_m_mean"]) == pytest.approx(0.05)
    assert row["delta_m_seeds"] == "0; 1"


def test_erm_without_a_shared_seed_is_a_dash_saying_so(tmp_path: Path) -> None:
    mt_run(tmp_path, "erm", 7, (0.8, 0.6), None)
    mt_run(tmp_path, "stl", 0, (0.9, 0.6), None)
    rows = lb.collect_rows(tmp_path)
    assert _row(rows, "stl")["delta_m_note"].startswith("no seed shared with erm's selected configuration")
    assert "- [Δ1] no seed shared with erm's" in lb.render_markdown(rows, "multidigits")


def _variant(root: Path, name: str, seed: int, girm: str, accs: tuple[float, float]) -> Path:
    """An `erm + mtcrl` run whose mtcrl.girm is `girm` (its config's hparams and identity say so)."""
    out = mt_run(root, "erm", seed, accs, None)
    out = out.rename(root / name)
    config = json.loads((out / "config.json").read_text())
    config["spec"]["aux"], config["objectives"] = ["mtcrl"], ["mtcrl"]
    for where in (config, config["identity"]):
        where["hparams"]["mtcrl"] = {"girm": girm, "weight": 1.0}
    config["identity"]["aux"] = ["mtcrl"]
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_split_by_makes_each_hparam_value_a_row_of_its_own(tmp_path: Path) -> None:
    for seed in (0, 1):
        _variant(tmp_path, f"var-{seed}", seed, "var", (0.9, 0.5))
        _variant(tmp_path, f"none-{seed}", seed, "none", (0.6, 0.4))
    # Without split_by the two values are two configurations of one method, and selection keeps the better one.
    (merged,) = {r["method"] for r in lb.collect_rows(tmp_path)}
    assert merged == "erm + mtcrl"
    rows = lb.scan_rows(tmp_path, split_by=("mtcrl.girm",))[0]
    var, none = _row(rows, "erm + mtcrl [mtcrl.girm=var]"), _row(rows, "erm + mtcrl [mtcrl.girm=none]")
    assert var["test_task_acc"]["right"]["mean"] == pytest.approx(0.5)
    assert none["test_task_acc"]["left"]["mean"] == pytest.approx(0.6)
    assert var["n_configurations"] == none["n_configurations"] == 1
    md = lb.leaderboard_markdown(tmp_path, split_by=("mtcrl.girm",))
    assert "erm + mtcrl [mtcrl.girm=none]" in md


@pytest.mark.parametrize("key", ["mtcrl.grim", "girm", "mtcrl."])
def test_split_by_a_key_no_run_has_is_one_error(tmp_path: Path, key: str) -> None:
    from robustbench_mtl.errors import ConfigError

    _variant(tmp_path, "var-0", 0, "var", (0.9, 0.5))
    with pytest.raises(ConfigError, match="split-by key") as info:
        lb.scan_rows(tmp_path, split_by=(key,))
    assert "\n" not in str(info.value)


def test_validation_and_training_accuracy_per_task(tmp_path: Path) -> None:
    out = mt_run(tmp_path, "erm", 0, (0.8, 0.6), None)
    final = json.loads((out / "final.json").read_text())
    for entry in final["selections"].values():
        entry["val"].update({"avg_acc/left": 0.95, "avg_acc/right": 0.85})
        entry["train"] = {"avg_acc/left": 1.0, "avg_acc/right": 0.97}
    (out / "final.json").write_text(json.dumps(final))
    mt_run(tmp_path, "stl", 0, (0.8, 0.6), None)  # older runs without `train`: None, not an error
    rows = lb.collect_rows(tmp_path)
    erm, stl = _row(rows, "erm"), _row(rows, "stl")
    assert erm["val_task_acc"]["left"]["mean"] == pytest.approx(0.95)
    assert erm["train_task_acc"]["right"]["mean"] == pytest.approx(0.97)
    assert stl["train_task_acc"] is None
    text = lb.leaderboard_text(tmp_path, "csv")
    record = next(r for r in csv.DictReader(io.StringIO(text)) if r["method"] == "erm")
    assert float(record["train_acc_right_mean"]) == pytest.approx(0.97)


def test_the_fit_table_shows_train_val_and_test_accuracy_per_task(tmp_path: Path) -> None:
    out = mt_run(tmp_path, "erm", 0, (0.8, 0.6), (0.2, 0.3))
    final = json.loads((out / "final.json").read_text())
    for entry in final["selections"].values():
        entry["val"].update({"avg_acc/left": 0.95, "avg_acc/right": 0.85})
        entry["train"] = {"avg_acc/left": 1.0, "avg_acc/right": 0.97}
    (out / "final.json").write_text(json.dumps(final))
    md = lb.leaderboard_markdown(tmp_path)
    head, _, table = md.partition("**Fit and generalisation** (No-GP selection)")
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| Method | Backbone | Train acc. left | Train acc. right | Val acc. left")
    assert lines[1] == "| erm | mlp | 100.0 | 97.0 | 95.0 | 85.0 | 80.0 | 60.0 | 0.200 | 0.300 |"
    # without training accuracy (runs made before it was measured) there is no such table
    assert "Fit and generalisation" not in lb.leaderboard_markdown(_runs(tmp_path / "old"))
