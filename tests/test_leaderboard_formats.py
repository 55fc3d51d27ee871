"""Leaderboard rows beyond the numbers: selected hparams, provenance, reported rows, paired comparison,
CSV and LaTeX output, and one-line errors for bad options."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from robustbench_mtl import leaderboard as lb
from robustbench_mtl.leaderboard.render import _group_labels
from robustbench_mtl.cli import main
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.leaderboard.select import ROW_KEYS
from test_leaderboard import make_run


def fake_run(root: Path, name: str, seed: int, wg: float, avg: float = 0.9, val_wg: float = 0.5,
             hparams: dict[str, dict[str, Any]] | None = None, provenance: dict[str, Any] | None = None,
             **kwargs: Any) -> Path:
    """make_run, then extra hparams (`{"l1": {"weight": 1.0}}`) and provenance patched into config.json."""
    out = make_run(root, name, seed, val_wg=val_wg, test_wg=wg, test_avg=avg, **kwargs)
    config = json.loads((out / "config.json").read_text())
    for scope, fields in (hparams or {}).items():
        for where in (config["hparams"], config["identity"]["hparams"]):
            where.setdefault(scope, {}).update(fields)
    config["provenance"].update(provenance or {})
    (out / "config.json").write_text(json.dumps(config))
    return out


def _row(rows: list[dict], method: str = "erm", protocol: str = "val_worst_group", source: str = "reproduced",
         backbone: str | None = None) -> dict:
    (row,) = [r for r in rows if (r["method"], r["protocol"], r["source"]) == (method, protocol, source)
              and backbone in (None, r["backbone"])]
    return row


def _cli(*args: str):
    return CliRunner().invoke(main, [*args])


# ------------------------------------------------------------------------------------ selected hparams
def test_selected_hparams_are_the_values_that_differ(tmp_path: Path) -> None:
    for s in range(2):  # lr and l1.weight vary; the l1 scope's other field and everything else do not
        fake_run(tmp_path, f"a{s}", s, 0.4, val_wg=0.7, lr=0.01, algorithm="erm_l1",
                 hparams={"l1": {"weight": 0.3679, "target": "all"}})
        fake_run(tmp_path, f"b{s}", s, 0.9, val_wg=0.5, lr=0.1, algorithm="erm_l1",
                 hparams={"l1": {"weight": 2.7183, "target": "all"}})
        fake_run(tmp_path, f"c{s}", s, 0.85, val_wg=0.6, lr=0.1, algorithm="erm_l1",
                 hparams={"l1": {"weight": 0.3679, "target": "all"}})
    rows = lb.collect_rows(tmp_path)
    row = _row(rows, "erm_l1")
    assert row["selected_hparams"] == {"l1.weight": 0.3679, "train.lr": 0.01}
    assert row["searched_hparams"] == {"l1.weight": [0.3679, 2.7183], "train.lr": [0.01, 0.1]}
    assert row["configuration"]["hparams"]["l1"] == {"weight": 0.3679, "target": "all"}  # the full one, as before
    assert row["n_configurations"] == 3 and row["n_seeds"] == 2
    assert _row(rows, "erm_l1", "oracle_worst_group")["selected_hparams"] == {"l1.weight": 2.7183, "train.lr": 0.1}
    md = lb.render_markdown(rows, "synthetic")
    assert "| 2 | no | yes | val | 3 | l1.weight=0.3679, train.lr=0.01 | [1] |" in md


def test_one_configuration_selects_no_hparam(tmp_path: Path) -> None:
    fake_run(tmp_path, "a", 0, 0.4)
    row = _row(lb.collect_rows(tmp_path))
    assert (row["selected_hparams"], row["searched_hparams"], row["n_configurations"]) == ({}, {}, 1)


# ------------------------------------------------------------------------------------------ provenance
def test_provenance_on_every_row_with_the_seeds_distinct_values(tmp_path: Path) -> None:
    torch_versions = ["2.3.0", "2.4.1", "2.3.0"]
    for s, tv in enumerate(torch_versions):
        fake_run(tmp_path, f"erm-{s}", s, 0.7, provenance={
            "versions": {"robustbench-mtl": "0.1.0", "torch": tv}, "device_name": "NVIDIA H200",
            "git": {"commit": "0123456789abcdef" if s < 2 else "fedcba9876543210", "dirty": s == 2}})
    fake_run(tmp_path, "mt-0", 0, 0.6, algorithm="mt", aux=("simclr",))  # make_run's: no git, no torch
    rows = lb.collect_rows(tmp_path)
    assert len(rows) == 8 and all(set(r["provenance"]) == {"version", "git_commit", "git_dirty", "torch",
                                                             "device_name"} for r in rows)
    erm = _row(rows)
    assert erm["provenance"] == {"version": ["0.1.0"], "git_commit": ["0123456789abcdef", "fedcba9876543210"],
                                 "git_dirty": [False, True], "torch": ["2.3.0", "2.4.1"],
                                 "device_name": ["NVIDIA H200"]}
    assert _row(rows, "mt + simclr")["provenance"] == {"version": ["0.1.0"], "git_commit": [None],
                                                       "git_dirty": [None], "torch": [None], "device_name": ["x86_64"]}
    md = lb.render_markdown(rows, "synthetic")
    assert ("- [1] robustbench-mtl 0.1.0, git 01234567 / fedcba98 (clean / dirty), torch 2.3.0 / 2.4.1, "
            "NVIDIA H200") in md
    assert "- [2] robustbench-mtl 0.1.0, no git commit, torch ?, x86_64" in md
    assert md.count("- [") == 2  # one footnote per distinct provenance, shared by the protocols' rows


# ------------------------------------------------------------------------------------------- reported
def test_reported_rows_beside_the_reproduced_ones(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "lb"
    fake_run(runs, "erm-0", 0, 0.80, avg=0.93, dataset="waterbirds")
    assert [p.name for p in lb.write_leaderboards(runs, out)] == ["waterbirds.md", "waterbirds.json"]
    assert {r["source"] for r in json.loads((out / "waterbirds.json").read_text())} == {"reproduced"}
    lb.write_leaderboards(runs, out, reported=True)
    rows = json.loads((out / "waterbirds.json").read_text())
    mine, erm = _row(rows), _row(rows, source="reported", backbone="vit_b16")
    assert set(erm) == set(mine) == set(ROW_KEYS)
    assert (erm["test_worst_group_acc_mean"], erm["test_worst_group_acc_std"]) == (0.854, 0.014)  # Tables 1, 2
    assert (erm["test_avg_acc_mean"], erm["test_avg_acc_std"]) == (0.941, 0.007)  # Table 6
    assert erm["selection"] == "Val-GP" and erm["n_seeds"] == 5 and erm["seeds"] is None and erm["runs"] is None
    assert erm["citation"]["tables"].startswith("Tables 1, 2,") and "2312.03151" in erm["citation"]["paper"]
    no_gp = _row(rows, source="reported", protocol="val_avg", backbone="vit_b16")
    assert (no_gp["test_worst_group_acc_mean"], no_gp["test_avg_acc_mean"]) == (0.801, 0.955)
    mt = _row(rows, "mt_l1 + mim", source="reported", backbone="vit_b16")
    assert (mt["test_worst_group_acc_mean"], mt["test_worst_group_acc_std"], mt["reported_as"].split(" (")[0]) == \
        (0.875, 0.027, "ERM + MIM + L1")
    gdro = _row(rows, "group_dro", source="reported")
    assert gdro["uses_train_groups"] and gdro["test_worst_group_acc_mean"] == 0.939
    assert gdro["test_avg_acc_mean"] is None  # Table 1 has no average: blank, not filled in
    md = (out / "waterbirds.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    i = lines.index("| erm | mlp | Val-GP | 80.0 | 93.0 | 1 | no | yes | val | 1 |  | [1] |")
    assert lines[i + 1] == "| erm | vit_b16 | Val-GP | 85.4 ± 1.4 | 94.1 ± 0.7 | 5 | no | yes | val |  |  | reported [R1] |"
    assert "| group_dro | vit_b16 | Val-GP | 93.9 ± 0.7 |  | 5 | yes | yes | train + val |  |  | reported [R" in md
    assert "- [R1] Kulkarni et al. 2023, Tables 1, 2, 4, 10 (worst-group); Tables 6, 8, 10 (avg)." in md
    assert md.count("- Kulkarni et al. 2023: Kulkarni, Dery, Setlur") == 1  # the full reference once
    assert "1 finished run." in md  # reported rows are not runs


def test_reported_data_covers_the_papers_datasets_only_with_sources() -> None:
    rows = lb.reported_rows()
    assert {r["dataset"] for r in rows} == {"waterbirds", "civilcomments", "civilcomments_small", "multinli"}
    assert lb.reported_rows({"celeba"}) == []  # no paper here reports CelebA: nothing is made up
    for r in rows:
        assert r["source"] == "reported" and r["citation"]["tables"].startswith("Table")
        assert 0 < r["test_worst_group_acc_mean"] < 1 and r["test_worst_group_acc_std"] is not None
    small = _row([r for r in rows if r["dataset"] == "civilcomments_small"], "mt_l1 + mlm", source="reported",
                 backbone="bert")
    assert (small["test_worst_group_acc_mean"], small["test_avg_acc_mean"]) == (0.694, 0.82)
    assert small["avg_metric"] == "avg_acc_duplicated"  # the paper's average over duplicated rows
    mnli = [r for r in rows if r["dataset"] == "multinli"]
    assert {r["method"]: r["test_worst_group_acc_mean"] for r in mnli} == {
        "erm": 0.676, "jtt": 0.675, "br_dro": 0.685, "mt_l1 + mlm": 0.697, "group_dro": 0.78}


def test_reported_markdown_marks_a_different_average(tmp_path: Path) -> None:
    fake_run(tmp_path, "erm-0", 0, 0.6, dataset="civilcomments_small")
    md = lb.leaderboard_markdown(tmp_path, reported=True)
    assert "| erm | bert | Val-GP | 67.4 ± 2.1 | 81.4 ± 1.0 † | 5 |" in md and "avg_acc_duplicated" in md


# ---------------------------------------------------------------------------------- paired comparison
A, B = "mt_l1 + simclr", "erm"


def _pair_runs(root: Path) -> None:
    for s, (wa, wb, aa, ab) in enumerate([(0.70, 0.60, 0.90, 0.91), (0.75, 0.70, 0.92, 0.90),
                                          (0.80, 0.65, 0.91, 0.89)]):
        fake_run(root, f"a{s}", s, wa, avg=aa, algorithm="mt_l1", aux=("simclr",))
        fake_run(root, f"b{s}", s, wb, avg=ab)
    fake_run(root, "a3", 3, 0.99, avg=0.99, algorithm="mt_l1", aux=("simclr",))  # a seed erm never ran


def test_paired_comparison_against_a_hand_computation(tmp_path: Path) -> None:
    _pair_runs(tmp_path)
    result = lb.compare_rows(lb.collect_rows(tmp_path), A, B, protocol="Val-GP")
    (c,) = result["comparisons"]
    assert (c["seeds"], c["seeds_a_only"], c["seeds_b_only"], c["n"]) == ([0, 1, 2], [3], [], 3)
    # Differences .10, .05, .15: mean .10, sample std .05, sem .05/sqrt(3); t(0.975, df=2) = 4.303 (t table).
    half = 4.302652729749464 * 0.05 / math.sqrt(3)
    wg = c["worst_group"]
    assert [e["worst_group_diff"] for e in c["per_seed"]] == pytest.approx([0.10, 0.05, 0.15])
    assert (wg["mean_diff"], wg["std"], wg["t"]) == pytest.approx((0.10, 0.05, 4.302652729749464))
    assert (wg["ci_low"], wg["ci_high"]) == pytest.approx((0.10 - half, 0.10 + half))
    # avg: -.01, +.02, +.02 -> mean .01, std sqrt(3)*.01
    assert c["avg"]["mean_diff"] == pytest.approx(0.01) and c["avg"]["std"] == pytest.approx(0.01 * math.sqrt(3))
    assert c["per_seed"][0]["run_a"] == "a0" and c["per_seed"][0]["run_b"] == "b0"
    assert len(lb.compare_rows(lb.collect_rows(tmp_path), A, B)["comparisons"]) == 4  # every protocol


def test_compare_cli_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "cmp"
    _pair_runs(runs)
    res = _cli("leaderboard", str(runs), "--compare", A, B, "--protocol", "val_worst_group", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "| synthetic | mlp | Val-GP | 3 | +10.0 | [-2.4, +22.4] | +1.0 | [-3.3, +5.3] |" in res.stdout
    saved = json.loads((out / "compare-mt_l1+simclr-vs-erm.json").read_text())
    assert saved["comparisons"][0]["worst_group"]["mean_diff"] == pytest.approx(0.10)
    assert (out / "compare-mt_l1+simclr-vs-erm.md").exists()
    res = _cli("leaderboard", str(runs), "--compare", A, B, "--dataset", "synthetic", "--json")
    assert res.exit_code == 0 and len(json.loads(res.stdout)["comparisons"]) == 4


BAD = {  # extra arguments -> the start of the one error line
    "unknown method": (("--compare", "mt_l2 + simclr", "erm"), "error: unknown method 'mt_l2 + simclr' in --compare; "
                       "did you mean 'mt_l1 + simclr'?"),
    "same method": (("--compare", "erm", "erm"), "error: --compare needs two different methods"),
    "no shared seeds": (("--compare", "erm", "jtt"),
                        "error: no shared seeds: 'erm' has seeds [0, 1, 2] and 'jtt' has [7]"),
    "unknown protocol": (("--compare", A, B, "--protocol", "best"), "error: no finished runs for --protocol 'best'"),
    "protocol alone": (("--protocol", "val_avg"), "error: --protocol and --dataset select what --compare compares"),
    "unknown format": (("--format", "md,xls", "--out", "OUT"), "error: unknown format 'xls' in --format; choose from"),
    "two formats printed": (("--format", "md,csv"), "error: printing takes one format (got md,csv)"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_leaderboard_options_are_one_line(tmp_path: Path, case: str) -> None:
    runs = tmp_path / "runs"
    _pair_runs(runs)
    fake_run(runs, "jtt", 7, 0.5, algorithm="jtt")
    args, start = BAD[case]
    res = _cli("leaderboard", str(runs), *[str(tmp_path / "lb") if a == "OUT" else a for a in args])
    assert res.exit_code == 2 and res.stdout == "", res.output
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith(start), res.stderr
    assert not (tmp_path / "lb").exists()


def test_parse_formats() -> None:
    assert lb.parse_formats("MD, tex,md") == ("md", "tex")
    for bad in ("", "html"):
        with pytest.raises(ConfigError, match="choose from md, json, csv, tex"):
            lb.parse_formats(bad)


# ------------------------------------------------------------------------------------- CSV and LaTeX
def _escaping_runs(root: Path) -> None:
    for s in range(2):
        fake_run(root, f"e{s}", s, 0.6 + 0.1 * s, lr=0.01, hparams={"backbone": {"init": "ckpt/a&b_50%#1"}})
        fake_run(root, f"f{s}", s, 0.2, val_wg=0.1, lr=0.1, hparams={"backbone": {"init": "ckpt/a&b_50%#1"}})


def test_csv_rows_at_full_precision(tmp_path: Path) -> None:
    _escaping_runs(tmp_path / "runs")
    paths = lb.write_leaderboards(tmp_path / "runs", tmp_path / "lb", formats="csv,tex", command="rbm lb runs/")
    assert [p.name for p in paths] == ["synthetic.csv", "synthetic.tex"]
    table = list(csv.DictReader(io.StringIO((tmp_path / "lb" / "synthetic.csv").read_text())))
    assert len(table) == 4 and table[0]["backbone"] == "mlp from a&b_50%#1" and table[0]["source"] == "reproduced"
    first = table[0]
    assert first["protocol"] == "val_worst_group" and float(first["test_worst_group_acc_mean"]) == pytest.approx(0.65)
    assert float(first["test_worst_group_acc_std"]) == pytest.approx(math.sqrt(0.005))
    assert (first["seeds"], first["selected_hparams"], first["n_configurations"]) == ("0; 1", "train.lr=0.01", "2")
    assert first["provenance_version"] == "0.1.0" and first["runs"] == "e0; e1" and first["citation"] == ""


def test_latex_is_a_booktabs_tabular_with_escaped_cells(tmp_path: Path) -> None:
    _escaping_runs(tmp_path / "runs")
    fake_run(tmp_path / "runs", "wb", 0, 0.8, dataset="waterbirds")
    lb.write_leaderboards(tmp_path / "runs", tmp_path / "lb", formats=["tex"], reported=True)
    tex = (tmp_path / "lb" / "synthetic.tex").read_text()
    assert "\\begin{tabular}{lllrrrll}" in tex and "\\toprule" in tex and "\\midrule" in tex
    assert tex.rstrip().endswith("\\bottomrule\n\\end{tabular}")
    assert "erm & mlp from a\\&b\\_50\\%\\#1 & Val-GP & 65.0 $\\pm$ 7.1 & 90.0 $\\pm$ 0.0 & 2 & val & reproduced \\\\" \
        in tex
    assert "Oracle (test) & " in tex and "& test & reproduced" in tex and "±" not in tex
    # an oracle that selects on test accuracy alone reads test labels, not test groups
    rows = [dict(r, oracle=True, selection_metric="test/avg_acc", uses_train_groups=False, uses_val_groups_any=False)
            for r in lb.collect_rows(tmp_path / "runs") if r["dataset"] == "synthetic"][:1]
    assert _group_labels(rows[0]) == "none"
    assert _group_labels(dict(rows[0], selection_metric="test/worst_group_acc")) == "test"
    wb = (tmp_path / "lb" / "waterbirds.tex").read_text()
    assert "mt\\_l1 + mim & vit\\_b16 & Val-GP & 87.5 $\\pm$ 2.7 & 95.4 $\\pm$ 0.4 & 5 & val & reported (Tables" in wb


def test_one_format_printed_without_out(tmp_path: Path) -> None:
    _escaping_runs(tmp_path)
    res = _cli("leaderboard", str(tmp_path), "--format", "csv")
    assert res.exit_code == 0 and res.stdout.startswith("dataset,method,backbone,source,protocol")
    res = _cli("leaderboard", str(tmp_path), "--format", "tex")
    assert res.exit_code == 0 and "\\toprule" in res.stdout


def test_extra_test_metric_columns(tmp_path: Path) -> None:
    from test_leaderboard import make_run

    for seed, f1 in ((0, 0.70), (1, 0.80)):
        out = make_run(tmp_path, f"erm-{seed}", seed, val_wg=0.5, test_wg=0.4, test_avg=0.8)
        final = json.loads((out / "final.json").read_text())
        for entry in final["selections"].values():
            entry["test"]["macro_f1"] = f1
        (out / "final.json").write_text(json.dumps(final))
    rows = lb.scan_rows(tmp_path, metrics=("macro_f1",))[0]
    stats = rows[0]["test_metrics"]["macro_f1"]
    assert stats["mean"] == pytest.approx(0.75) and stats["per_seed"] == [0.70, 0.80] and stats["n"] == 2
    md = lb.leaderboard_text(tmp_path, "md", metrics=("macro_f1",))
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert "| Test avg acc. | Test macro_f1 |" in header
    assert "| 75.0 ± 7.1 |" in md
    text = lb.leaderboard_text(tmp_path, "csv", metrics=("macro_f1",))
    assert "test_macro_f1_mean" in text.splitlines()[0]
    with pytest.raises(ConfigError, match="metric 'macro_f2': no collected run has test/macro_f2"):
        lb.leaderboard_text(tmp_path, "md", metrics=("macro_f2",))
