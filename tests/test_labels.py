"""Label access: group and environment ids reach only the algorithms that declare a use, and say so."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from robustbench_mtl.algorithms.base import Algorithm
from robustbench_mtl.config import RunSpec
from robustbench_mtl.data.base import TensorSplit
from robustbench_mtl.data.synthetic import Synthetic
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.registry import ALGORITHMS, DATASETS
from robustbench_mtl.runner import run

SHORT = ("train.epochs=1",)


def _spy(base: type, seen: dict[str, Any], **flags: Any) -> type:
    """An algorithm of class `base` with `flags` that records the ids and info it is given."""

    class Spy(base):  # type: ignore[misc, valid-type]
        """Records the group and environment ids it sees (a test algorithm)."""

        def setup(self, train: TensorSplit) -> None:
            seen["info"] = self.info
            super().setup(train)

        def update(self, batch, aux_batch=None):
            seen.setdefault("g", set()).update(batch.g.tolist())
            seen.setdefault("e", set()).update(batch.e.tolist())
            seen.setdefault("pairs", set()).update(zip(batch.idx.tolist(), batch.e.tolist()))
            return super().update(batch, aux_batch)

        def after_training(self, val: TensorSplit):
            seen["val_g"] = set(val.g.tolist())
            return super().after_training(val)

    for k, v in flags.items():
        setattr(Spy, k, v)
    return Spy


def _config(out: Path) -> dict[str, Any]:
    return json.loads((out / "config.json").read_text())


def test_group_free_algorithm_sees_no_groups_counts_or_environments(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setitem(ALGORITHMS._items, "_spy_free", _spy(Algorithm, seen))
    out = run(RunSpec("synthetic", "_spy_free", overrides=SHORT), tmp_path / "r").out_dir
    assert seen["g"] == {-1} and seen["e"] == {-1} and seen["val_g"] == {-1}
    assert seen["info"].train_group_counts == () and len(seen["info"].group_names) == 4
    flags = _config(out)["algorithm_flags"]
    assert flags == {"uses_train_groups": False, "uses_val_groups": False, "uses_environments": False,
                     "environments": None}
    assert _config(out)["data"]["train_group_counts"] != []  # the run's own record keeps them


def test_group_user_sees_groups_and_counts_but_not_environments(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setitem(ALGORITHMS._items, "_spy_groups", _spy(Algorithm, seen, uses_train_groups=True,
                                                               uses_val_groups=True))
    run(RunSpec("synthetic", "_spy_groups", overrides=SHORT), tmp_path / "r")
    assert seen["g"] == {0, 1, 2, 3} and seen["e"] == {-1} and seen["val_g"] == {0, 1, 2, 3}
    assert sum(seen["info"].train_group_counts) == 1000


@pytest.mark.parametrize("name", ["irm", "vrex"])
def test_environment_methods_use_training_groups_where_none_are_declared(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setitem(ALGORITHMS._items, f"_spy_{name}", _spy(ALGORITHMS.get(name), seen))
    out = run(RunSpec("synthetic", f"_spy_{name}", overrides=SHORT), tmp_path / "r").out_dir
    train_g = Synthetic(Synthetic.HParams(), "synthetic").load()["train"].g
    assert seen["g"] == {-1}  # group ids stay hidden; the environments carry them
    assert all(e == int(train_g[i]) for i, e in seen["pairs"]) and seen["e"] == {0, 1, 2, 3}
    flags = _config(out)["algorithm_flags"]
    assert flags["uses_train_groups"] is True and flags["environments"] == "train_groups"


class _WithEnvironments(Synthetic):
    """Synthetic with two declared training environments: the first and second half of train."""

    environment_names = ("first", "second")

    def generate(self) -> dict[str, TensorSplit]:
        splits = super().generate()
        train = splits["train"]
        e = (torch.arange(len(train)) >= len(train) // 2).long()
        return {**splits, "train": TensorSplit(train.x, train.y, train.g, e)}


class _OneGroup(Synthetic):
    """Synthetic whose training split holds a single group."""

    def generate(self) -> dict[str, TensorSplit]:
        splits = super().generate()
        t = splits["train"]
        return {**splits, "train": TensorSplit(t.x, t.y, torch.zeros_like(t.g), t.e)}


def test_declared_environments_are_passed_and_groups_stay_hidden(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setitem(DATASETS._items, "_with_envs", _WithEnvironments)
    monkeypatch.setitem(ALGORITHMS._items, "_spy_irm", _spy(ALGORITHMS.get("irm"), seen))
    out = run(RunSpec("_with_envs", "_spy_irm", overrides=SHORT), tmp_path / "r").out_dir
    assert seen["g"] == {-1} and all(e == int(i >= 500) for i, e in seen["pairs"])
    config = _config(out)
    assert config["algorithm_flags"]["uses_train_groups"] is False
    assert config["algorithm_flags"]["environments"] == "dataset"
    assert config["data"]["environment_names"] == ["first", "second"]
    assert config["data"]["train_env_counts"] == [500, 500]


@pytest.mark.parametrize("name", ["irm", "vrex"])
def test_fewer_than_two_environments_is_one_clear_error(name: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DATASETS._items, "_one_group", _OneGroup)
    with pytest.raises(ConfigError, match=f"algorithm '{name}' needs at least 2 training environments"):
        run(RunSpec("_one_group", name, overrides=SHORT), tmp_path / "r")
    assert not (tmp_path / "r").exists()
    run(RunSpec("_one_group", "erm", overrides=SHORT), tmp_path / "erm")  # group-free methods still run


def test_list_and_show_say_which_labels_an_algorithm_uses() -> None:
    from robustbench_mtl.catalog import describe, list_components

    rows = {r["name"]: r for r in list_components("algorithms")}
    assert rows["irm"]["environments"] is True and rows["irm"]["train groups"] is False
    assert rows["dfr"]["val groups"] is True and rows["group_dro"]["train groups"] is True
    facts = describe("algorithm", "vrex")["facts"]
    assert "training groups" in facts["uses environments"]
