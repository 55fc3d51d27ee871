"""Task-adaptive pretraining: `pretrain` saves a backbone trained on auxiliary objectives; `backbone.init` starts
any run from it; --root and train.deterministic."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from robustbench_mtl import cli
from robustbench_mtl.config import RunSpec, resolve
from robustbench_mtl.runner import build, pretrain, run

SHORT = ("train.epochs=2",)


def invoke(*args: str):
    return CliRunner().invoke(cli.main, list(args))


def _one_error_line(res, needle: str) -> None:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tapt") / "mlp-recon"
    pretrain(RunSpec("synthetic", "tapt", aux=("recon",), overrides=SHORT), out)
    return out


def test_pretrain_trains_only_the_auxiliary_task_and_saves_the_backbone(pretrained: Path) -> None:
    meta = json.loads((pretrained / "backbone.json").read_text())
    assert meta["backbone"] == "mlp" and meta["objectives"] == ["recon"] and meta["pretrained_on"] == "synthetic"
    weights = torch.load(pretrained / "backbone.pt", weights_only=True)
    fresh = build(resolve(RunSpec("synthetic", "erm")), torch.device("cpu"), 1).model.backbone.state_dict()
    assert set(weights) == set(fresh) and any(not torch.equal(weights[k], fresh[k]) for k in weights)
    records = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and "train/loss_recon" in records[0] and "train/loss_task" not in records[0]
    head = torch.load(pretrained / "checkpoint.pt", weights_only=True)["algorithm"]["model.heads.y.weight"]
    initial = build(resolve(RunSpec("synthetic", "tapt", aux=("recon",))), torch.device("cpu"), 1).model
    assert torch.equal(head, initial.heads["y"].weight.detach())  # labels never trained anything


def test_a_run_starts_from_the_pretrained_backbone(pretrained: Path, tmp_path: Path) -> None:
    spec = RunSpec("synthetic", "erm", overrides=(f"backbone.init={pretrained}", "train.epochs=1"))
    algo = build(resolve(spec), torch.device("cpu"), 1)
    saved = torch.load(pretrained / "backbone.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in algo.model.backbone.state_dict().items())
    out = run(spec, tmp_path / "r").out_dir
    assert json.loads((out / "config.json").read_text())["hparams"]["backbone"]["init"] == str(pretrained)


@pytest.mark.parametrize("extra, needle", [
    (("backbone.rep_dim=16",), "does not fit this backbone's hparams"),
    ((), "no backbone.pt and backbone.json there"),
])
def test_a_backbone_init_that_does_not_fit_is_one_line(pretrained: Path, tmp_path: Path, extra: tuple[str, ...],
                                                      needle: str) -> None:
    init = pretrained if extra else tmp_path / "empty"
    args = ["run", "--algo", "erm", "--data", "synthetic", "--set", f"backbone.init={init}", "--out",
            str(tmp_path / "r")]
    for o in extra:
        args += ["--set", o]
    _one_error_line(invoke(*args), needle)
    assert not (tmp_path / "r").exists()


def test_pretrain_cli_saves_and_names_the_init(tmp_path: Path) -> None:
    res = invoke("pretrain", "--aux", "recon", "--data", "synthetic", "--set", "train.epochs=1", "--out",
                 str(tmp_path / "p"), "--quiet")
    assert res.exit_code == 0, res.output
    assert f"--set backbone.init={tmp_path / 'p'}" in res.output.replace("\n", "")
    assert (tmp_path / "p" / "backbone.pt").exists()
    _one_error_line(invoke("pretrain", "--data", "synthetic", "--out", str(tmp_path / "q")), "pretrain needs --data and --aux")


def test_root_option_is_the_data_root_override(tmp_path: Path) -> None:
    _one_error_line(invoke("run", "--algo", "erm", "--data", "toybirds", "--root", str(tmp_path), "--out",
                           str(tmp_path / "r")), "dataset 'toybirds' is embedded")
    _one_error_line(invoke("run", "--algo", "erm", "--data", "waterbirds", "--root", str(tmp_path), "--set",
                           f"data.root={tmp_path}", "--out", str(tmp_path / "r")), "given twice")
    res = invoke("run", "--algo", "mt_l1", "--aux", "simclr", "--data", "waterbirds", "--root", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "r"))
    _one_error_line(res, f"robustbench-mtl prepare waterbirds --root {tmp_path / 'nope'}")
    assert not (tmp_path / "r").exists()


def test_cli_and_readers_agree_on_the_default_root() -> None:
    from robustbench_mtl.data import _images

    assert (cli.DEFAULT_ROOT, cli.ROOT_ENV) == (_images.DEFAULT_ROOT, _images.ROOT_ENV)


def test_deterministic_mode_is_on_during_the_run_and_restored(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_mtl.algorithms.erm import ERM

    seen = []
    original = ERM.update
    monkeypatch.setattr(ERM, "update", lambda self, *a: (seen.append(torch.are_deterministic_algorithms_enabled()),
                                                         original(self, *a))[1])
    run(RunSpec("synthetic", "erm", overrides=("train.epochs=1", "train.deterministic=true")), tmp_path / "r")
    assert seen and all(seen) and not torch.are_deterministic_algorithms_enabled()
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["hparams"]["train"]["deterministic"] is True
