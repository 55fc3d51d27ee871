"""Hyperparameter parsing, precedence, errors and seeded draws."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import pytest

from robustbench_mtl.config import RunSpec, resolve
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.hparams import Choice, LogUniform, build, coerce, draw, hp


@dataclass(frozen=True)
class HP:
    lr: float = hp(0.1, LogUniform(1e-4, 1.0))
    width: int = hp(8, Choice((4, 8, 16)))
    mode: Literal["a", "b"] = hp("a")
    flag: bool = hp(False)
    sizes: tuple[int, ...] = hp((1, 2))


@dataclass(frozen=True)
class HPMore(HP):
    extra: float = hp(1.0, LogUniform(0.1, 10.0))


def test_precedence_lowest_first() -> None:
    h = build(HP, "s", [{"lr": 0.2, "width": 4}, {"lr": "0.3"}, {}])
    assert (h.lr, h.width) == (0.3, 4)


def test_types_are_parsed_and_checked() -> None:
    assert coerce("s.flag", bool, "true") is True
    assert coerce("s.sizes", tuple[int, ...], "3,4") == (3, 4)
    assert coerce("s.width", int, "16") == 16
    with pytest.raises(ConfigError, match="s.width expects an integer, got 'x'"):
        coerce("s.width", int, "x")
    with pytest.raises(ConfigError, match="one of a, b"):
        build(HP, "s", [{"mode": "c"}])
    with pytest.raises(ConfigError, match="expects a number"):
        build(HP, "s", [{"lr": True}])


def test_unknown_key_suggests() -> None:
    with pytest.raises(ConfigError, match=r"unknown hyperparameter 's.lx'; did you mean s.lr"):
        build(HP, "s", [{"lx": 1}])


def test_draws_are_seeded_per_field() -> None:
    a, b = draw(HP, "algorithm", 3), draw(HPMore, "algorithm", 3)
    assert a == {k: v for k, v in b.items() if k in a}  # adding a field shifts no other draw
    assert draw(HP, "algorithm", 3) == a and draw(HP, "algorithm", 4) != a
    assert draw(HP, "algorithm", 0) == {}  # seed 0 = the defaults
    assert 1e-4 <= a["lr"] <= 1.0 and a["width"] in (4, 8, 16)


def test_run_precedence_default_dataset_preset_set(tmp_path) -> None:
    preset = tmp_path / "p.toml"
    preset.write_text("[train]\nlr = 0.01\nbatch_size = 20\n")
    r = resolve(RunSpec("synthetic", "erm", preset=str(preset), overrides=("train.batch_size=10",)))
    t = r.hparams["train"]
    assert t.epochs == 100  # dataset default beats the class default (20)
    assert t.lr == 0.01  # preset beats the dataset default (0.05)
    assert t.batch_size == 10  # --set beats the preset
    assert t.patience == 0 and t.optimizer == "adam"


@pytest.mark.parametrize("bad, message", [
    (("train.lr=abc",), "train.lr expects a number, got 'abc'"),
    (("trian.lr=1",), "scope 'trian' is not part of this run"),
    (("train.lx=1",), "did you mean train.lr"),
    (("lr=1",), "expects scope.field=value"),
    (("recon.weight=1",), "scope 'recon' is not part of this run"),
])
def test_bad_set_is_one_clear_error(bad: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(RunSpec("synthetic", "erm", overrides=bad))


def test_hparams_seed_changes_searchable_fields_only() -> None:
    base = resolve(RunSpec("synthetic", "mt_l1", aux=("recon",))).hparams
    drawn = resolve(RunSpec("synthetic", "mt_l1", aux=("recon",), hparams_seed=5)).hparams
    assert drawn["train"].epochs == base["train"].epochs  # no search space: never drawn
    assert drawn["recon"].weight in (0.3679, 1.0, 2.7183)
    assert drawn != base


def test_bounds_refuse_values_outside_the_declared_range() -> None:
    @dataclass(frozen=True)
    class H:
        n: int = hp(1, ge=1, help="at least one")
        rate: float = hp(0.5, gt=0, le=1, help="in (0, 1]")
        widths: tuple[int, ...] = hp((4,), ge=1, help="each at least one")
        free: float = hp(-3.0, help="unbounded")

    assert build(H, "s", [{"n": "3", "rate": "1", "widths": "2,3", "free": "-1e9"}]) == H(3, 1.0, (2, 3), -1e9)
    for key, value, message in [("n", "0", "s.n must be >= 1, got 0"), ("rate", "0", "s.rate must be in (0, 1]"),
                                ("rate", "1.5", "s.rate must be in (0, 1], got 1.5"),
                                ("widths", "4,0", "s.widths must be >= 1, got 0")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            build(H, "s", [{key: value}])


def test_every_registered_default_and_search_space_lies_in_its_range() -> None:
    from robustbench_mtl.config import ModelHParams, TrainHParams
    from robustbench_mtl.hparams import check_declaration, fields_of
    from robustbench_mtl.registry import REGISTRIES

    checked = 0
    for reg in REGISTRIES.values():
        for name, cls in reg.load_all():
            for info in fields_of(cls.HParams) if hasattr(cls, "HParams") else []:
                check_declaration(name, info)
                checked += 1
    for info in [*fields_of(TrainHParams), *fields_of(ModelHParams)]:
        check_declaration("train", info)
        checked += 1
    assert checked > 60
    bounded = {f.name: f.bounds.describe() for f in fields_of(TrainHParams)}
    assert bounded["epochs"] == ">= 1" and bounded["lr"] == "> 0" and bounded["weight_decay"] == ">= 0"
