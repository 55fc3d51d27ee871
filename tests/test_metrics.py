"""Metric definitions against hand computations."""
from __future__ import annotations

import pytest
import torch

from robustbench_mtl.data.base import DataInfo
from robustbench_mtl.metrics import split_metrics
from robustbench_mtl.selections.base import best_with_patience

INFO = DataInfo("toy", "tabular", (2,), {"y": 2}, ("a", "b", "c", "d"), (70, 10, 5, 15))


def test_group_class_and_adjusted_metrics() -> None:
    # group a: 3/4 right, b: 1/2, c: 0/1, d: 2/2 -> 6/9 overall
    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3])
    p = torch.tensor([0, 0, 0, 1, 0, 1, 0, 1, 1])
    m = split_metrics("val", {"y": p}, {"y": y}, g, INFO, loss=0.5)
    assert m["val/avg_acc"] == pytest.approx(6 / 9)
    assert m["val/worst_group_acc"] == 0.0
    assert m["val/group_acc@a"] == 0.75 and m["val/group_acc@b"] == 0.5 and m["val/group_acc@d"] == 1.0
    assert m["val/balanced_acc"] == pytest.approx((0.75 + 0.5 + 0 + 1) / 4)
    assert m["val/adjusted_acc"] == pytest.approx((70 * 0.75 + 10 * 0.5 + 5 * 0 + 15 * 1) / 100)
    assert m["val/worst_class_acc"] == pytest.approx(min(4 / 6, 2 / 3))
    assert m["val/loss"] == 0.5


def test_empty_groups_are_skipped_and_multitask_keys() -> None:
    info = DataInfo("toy", "tabular", (2,), {"t1": 2, "t2": 3}, ("a", "b"), (5, 5))
    y = {"t1": torch.tensor([0, 1, 1]), "t2": torch.tensor([2, 2, -1])}
    p = {"t1": torch.tensor([0, 1, 0]), "t2": torch.tensor([2, 0, 1])}
    m = split_metrics("test", p, y, torch.tensor([0, 0, 0]), info)
    assert "test/group_acc/t1@b" not in m
    assert m["test/avg_acc/t1"] == pytest.approx(2 / 3)
    assert m["test/avg_acc/t2"] == pytest.approx(1 / 2)  # label -1 (missing) is not scored
    assert m["test/avg_acc"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_patience_resimulation() -> None:
    vals = [0.1, 0.5, 0.4, 0.4, 0.6, 0.9]
    assert best_with_patience(vals, 0) == 5
    assert best_with_patience(vals, 2) == 1  # stalls at epochs 2 and 3: would have stopped there
    assert best_with_patience(vals, 3) == 5
    assert best_with_patience([0.5, 0.5, 0.5], 0) == 0  # strict improvement: first best wins
