"""The command line: one-line errors with non-zero exits, listings, show, run output, leaderboard."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from robustbench_mtl import __version__
from robustbench_mtl.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_version() -> None:
    res = invoke("--version")
    assert res.exit_code == 0 and __version__ in res.output


def test_list_json_has_every_kind_and_flags() -> None:
    res = invoke("list", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert {"datasets", "backbones", "objectives", "algorithms", "selections", "launchers"} == set(data)
    algos = {a["name"]: a for a in data["algorithms"]}
    assert {"erm", "erm_l1", "mt", "mt_l1"} <= set(algos)
    assert algos["mt_l1"]["train groups"] is False and algos["mt_l1"]["provider"].startswith("robustbench-mtl")
    assert {"val_worst_group", "val_avg", "val_worst_class", "oracle_worst_group"} <= \
        {s["name"] for s in data["selections"]}


def test_list_singular_kind_and_show() -> None:
    assert invoke("list", "algorithm").exit_code == 0
    res = invoke("show", "objective", "simclr", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    fields = {h["name"]: h for h in info["hparams"]}
    assert fields["pairing"]["default"] == "two_views" and "weight" in fields and info["scope"] == "simclr"


@pytest.mark.parametrize("args, needle", [
    (("run", "--algo", "mt_l1x", "--data", "synthetic"), "unknown algorithm 'mt_l1x'; did you mean mt_l1"),
    (("run", "--algo", "erm", "--data", "synthetix"), "unknown dataset 'synthetix'; did you mean synthetic"),
    (("run", "--algo", "mt_l1", "--aux", "mim", "--data", "toybirds", "--backbone", "mlp"), "backbone 'mlp'"),
    (("run", "--algo", "erm", "--data", "synthetic", "--set", "train.epochs=two"), "train.epochs expects an integer"),
    (("run", "--algo", "erm", "--data", "synthetic", "--set", "train.epoch=2"), "did you mean train.epochs"),
    (("run", "--algo", "erm", "--data", "synthetic", "--preset", "paper"), "unknown preset 'paper'"),
    (("run", "--data", "synthetic"), "run needs --algo and --data"),
    (("show", "algorithm", "nope"), "unknown algorithm 'nope'"),
    (("list", "gadgets"), "unknown kind 'gadgets'"),
    (("leaderboard", "no/such/dir"), "no/such/dir"),
])
def test_bad_input_is_one_line_nonzero_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          args: tuple[str, ...], needle: str) -> None:
    monkeypatch.chdir(tmp_path)
    res = invoke(*args, "--out", "out") if args[0] == "run" else invoke(*args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output
    assert not any(p.name in ("out", "runs") for p in tmp_path.rglob("*"))


def test_run_then_leaderboard(tmp_path: Path) -> None:
    for seed in ("0", "1"):
        res = invoke("run", "--algo", "erm", "--data", "synthetic", "--seed", seed, "--set", "train.epochs=3",
                     "--out", str(tmp_path / "runs" / f"s{seed}"), "--quiet")
        assert res.exit_code == 0, res.output
        assert f"results: {tmp_path / 'runs' / f's{seed}'}" in res.output.replace("\n", "")
    res = invoke("leaderboard", str(tmp_path / "runs"), "--out", str(tmp_path / "lb"))
    assert res.exit_code == 0, res.output
    md = (tmp_path / "lb" / "synthetic.md").read_text()
    assert "| erm | mlp | Val-GP |" in md and "±" in md
    rows = json.loads((tmp_path / "lb" / "synthetic.json").read_text())
    assert {r["n_seeds"] for r in rows} == {2}


def test_run_json_and_resume_flag(tmp_path: Path) -> None:
    out = tmp_path / "r"
    res = invoke("run", "--algo", "erm", "--data", "synthetic", "--set", "train.epochs=2", "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["status"] == "finished"
    again = invoke("run", "--resume", "--out", str(out), "--json")
    assert again.exit_code == 0 and json.loads(again.output) == json.loads(res.output)


@pytest.mark.slow
def test_toybirds_main_job_writes_every_file(tmp_path: Path) -> None:
    # The Quickstart's job, shortened to one epoch: every file, each protocol's numbers are those of the
    # epoch it chose, its saved weights reproduce them, and the printed table shows them.
    import torch

    from robustbench_mtl.config import RunSpec, resolve
    from robustbench_mtl.results import read_jsonl
    from robustbench_mtl.runner import build, evaluate

    out = tmp_path / "demo"
    res = invoke("run", "--algo", "mt_l1", "--aux", "simclr", "--data", "toybirds", "--set", "train.epochs=1",
                 "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["objectives"] == ["simclr", "l1"] and config["backbone"] == "vit_tiny"
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0]
    final = json.loads((out / "final.json").read_text())
    assert final["status"] == "finished" and final["epochs_run"] == 1
    assert set(final["selections"]) == {"val_worst_group", "val_avg", "val_worst_class", "oracle_worst_group",
                                        "val_balanced", "val_avg_precision", "val_worst_precision", "val_avg_f1",
                                        "val_worst_f1", "val_auroc", "val_class_diff", "oracle_avg"}
    r = resolve(RunSpec.from_json(config["spec"]))
    test_split = r.dataset.load()["test"]
    rows = [ln for ln in res.output.splitlines() if "│" in ln]
    for proto, sel in final["selections"].items():
        rec = next(x for x in records if x["epoch"] == sel["epoch"] and "phase" not in x)
        for split in ("val", "test"):
            assert sel[split] == {k.partition("/")[2]: v for k, v in rec.items() if k.startswith(f"{split}/")}
        assert sel["weights"] == f"selected/{proto}.pt" and (out / sel["weights"]).is_file()
        algo = build(r, torch.device("cpu"), total_steps=1)
        algo.model.load_state_dict(torch.load(out / sel["weights"], weights_only=True))
        again = evaluate(algo, test_split, "test", r)
        assert again["test/avg_acc"] == pytest.approx(rec["test/avg_acc"], abs=1e-6)
        assert again["test/worst_group_acc"] == pytest.approx(rec["test/worst_group_acc"], abs=1e-6)
        # the summary table's row: name, epoch, val WG, test WG, test avg (percent, one decimal)
        row = next(ln for ln in rows if ln.split("│")[1].strip().startswith(proto))
        cells = [c.strip() for c in row.split("│")[2:-1]]
        assert cells == [str(sel["epoch"]), f"{100 * sel['val']['worst_group_acc']:.1f}",
                         f"{100 * sel['test']['worst_group_acc']:.1f}", f"{100 * sel['test']['avg_acc']:.1f}"], row


def test_show_algorithm_lists_the_objective_hparams_it_uses() -> None:
    res = invoke("show", "algorithm", "mt_l1", "--json")
    assert res.exit_code == 0, res.output
    keys = {h["key"]: h for h in json.loads(res.output)["hparams"]}
    assert {"l1.weight", "l1.target", "l1.normalizer"} <= set(keys)  # w_reg and how the penalty is taken
    assert {"simclr.weight", "mim.weight", "recon.weight"} <= set(keys)  # w_aux of each possible --aux
    assert "simclr.pairing" not in keys and keys["l1.weight"]["range"] == ">= 0"
    text = invoke("show", "algorithm", "mt_l1")
    assert text.exit_code == 0 and "l1.weight" in text.output and "simclr.weight" in text.output
    erm = {h["key"] for h in json.loads(invoke("show", "algorithm", "erm", "--json").output)["hparams"]}
    assert "l1.weight" not in erm and "simclr.weight" in erm  # erm adds no l1, but composes with --aux
