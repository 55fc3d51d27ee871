"""The plugin's components pass robustbench-mtl's conformance kit, do what they claim, and run end to end."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from robustbench_mtl import testing
from robustbench_mtl.config import RunSpec
from robustbench_mtl.registry import ALGORITHMS, DATASETS, OBJECTIVES
from robustbench_mtl.runner import run
from robustbench_mtl.types import Outputs


def test_conformance() -> None:
    testing.check_algorithm("focal_alpha")
    testing.check_algorithm("focal_alpha", aux=("rotation",))
    testing.check_objective("rotation")
    testing.check_backbone("small_cnn")
    testing.check_dataset("two_moons_spurious", n_train=200, n_val_per_group=20, n_test_per_group=20)


def _focal(gamma: float, alpha: float = 0.5):  # type: ignore[no-untyped-def]
    cls = ALGORITHMS.get("focal_alpha")
    algo = cls.__new__(cls)
    algo.hparams = cls.HParams(gamma=gamma, alpha=alpha)
    return algo


def test_focal_matches_the_formula_and_reduces_to_ce() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.0, 0.5], [1.0, 1.0]])
    y = torch.tensor([0, 1, -1])
    batch = type("B", (), {"y": {"y": y}})()
    out = Outputs(pooled=logits, logits={"y": logits})
    ce = torch.nn.functional.cross_entropy(logits[:2], y[:2], reduction="none")
    p_t = torch.exp(-ce)
    # alpha 0.25: class 0 weighs 0.75, class 1 weighs 0.25 (eq. 5)
    expected = torch.tensor([0.75, 0.25]) * (1 - p_t) ** 2 * ce
    assert torch.allclose(_focal(2.0, 0.25).task_losses(out, batch)[:2], expected)
    assert torch.allclose(_focal(0.0).task_losses(out, batch)[:2], 0.5 * ce)  # gamma 0, alpha 0.5: CE / 2
    assert _focal(2.0).task_losses(out, batch)[2] == 0  # a missing label contributes nothing


def test_rotation_rotates_by_quarter_turns() -> None:
    rot = OBJECTIVES.get("rotation").rotate
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    out = rot(x, torch.tensor([0, 1]))
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], torch.rot90(x[1], 1, dims=(1, 2)))


def test_two_moons_is_spurious_in_train_and_balanced_elsewhere() -> None:
    cls = DATASETS.get("two_moons_spurious")
    ds = cls(cls.HParams(n_train=1000, n_val_per_group=50, n_test_per_group=50), "two_moons_spurious")
    splits = ds.generate()
    train = splits["train"]
    s = (train.x[:, 2] > 0).long()
    assert 0.85 < float((s == train.y["y"]).float().mean()) < 0.95
    assert torch.bincount(splits["val"].g).tolist() == [50] * 4
    assert torch.equal(cls(ds.hparams, "x").generate()["test"].x, splits["test"].x)  # deterministic


def test_focal_runs_on_synthetic(tmp_path: Path) -> None:
    res = run(RunSpec(data="synthetic", algorithm="focal_alpha", overrides=("train.epochs=2",)), tmp_path / "r")
    assert res.final["status"] == "finished"
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["components"]["algorithm"]["dist"] == "robustbench-mtl-focal"


def test_focal_alpha_refuses_a_task_with_more_than_two_classes() -> None:
    import pytest

    from robustbench_mtl.errors import ConfigError

    with pytest.raises(ConfigError, match="needs binary tasks; task 'left' of dataset 'multidigits' has 10 classes"):
        run(RunSpec(data="multidigits", algorithm="focal_alpha"), Path("never-written"))
    assert not Path("never-written").exists()


def test_rotation_with_small_cnn_runs_on_toybirds(tmp_path: Path) -> None:
    spec = RunSpec(data="toybirds", algorithm="mt", aux=("rotation",), backbone="small_cnn",
                   overrides=("train.epochs=1",), threads=1)
    res = run(spec, tmp_path / "r")
    assert res.final["epochs_run"] == 1
    components = json.loads((tmp_path / "r" / "config.json").read_text())["components"]
    assert components["objective:rotation"]["dist"] == components["backbone"]["dist"] == "robustbench-mtl-focal"
