"""SubpopBench's selection criteria: the epoch each picks on hand-made records (maximising and minimising),
their flags, their metrics being real record keys, and how their rows show in the leaderboard."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from robustbench_mtl import leaderboard as lb
from robustbench_mtl.data.base import DataInfo
from robustbench_mtl.metrics import split_metrics
from robustbench_mtl.registry import SELECTIONS
from robustbench_mtl.selections.base import Selection

from test_leaderboard import make_run

NEW = {  # name -> (metric, label, oracle, minimize)
    "val_balanced": ("val/macro_recall", "Val-Bal", False, False),
    "val_avg_precision": ("val/macro_precision", "Val-Prec", False, False),
    "val_worst_precision": ("val/worst_class_precision", "Val-WC-Prec", False, False),
    "val_avg_f1": ("val/macro_f1", "Val-F1", False, False),
    "val_worst_f1": ("val/worst_class_f1", "Val-WC-F1", False, False),
    "val_auroc": ("val/auroc", "Val-AUROC", False, False),
    "val_class_diff": ("val/class_diff", "Val-CDiff", False, True),
    "oracle_avg": ("test/avg_acc", "Oracle avg (test)", True, False),
}
# The epoch at which each protocol's metric is best (highest; lowest for the class difference).
BEST_AT = {"val_balanced": 1, "val_avg_precision": 2, "val_worst_precision": 3, "val_avg_f1": 4,
           "val_worst_f1": 0, "val_auroc": 2, "val_class_diff": 3, "oracle_avg": 4}


def _records() -> list[dict[str, Any]]:
    """Five epochs: every metric 0.5 (class difference 0.3), except 0.9 (0.05) at its protocol's epoch."""
    records = []
    for epoch in range(5):
        rec: dict[str, Any] = {"epoch": epoch}
        for name, (metric, _, _, minimize) in NEW.items():
            best = BEST_AT[name] == epoch
            rec[metric] = (0.05 if best else 0.3) if minimize else (0.9 if best else 0.5)
        records.append(rec)
    records[4]["val/auroc"] = None  # a missing value (JSON null) is never chosen
    return records


def _select(name: str, records: list[dict[str, Any]], patience: int = 0) -> int:
    return SELECTIONS.get(name)().select(records, patience)


@pytest.mark.parametrize("name", sorted(NEW))
def test_each_protocol_picks_the_epoch_its_metric_is_best(name: str) -> None:
    assert _select(name, _records()) == BEST_AT[name]


@pytest.mark.parametrize("name", sorted(NEW))
def test_flags_labels_and_metric(name: str) -> None:
    cls = SELECTIONS.get(name)
    metric, label, oracle, minimize = NEW[name]
    assert (cls.metric, cls.label, cls.oracle, cls.minimize) == (metric, label, oracle, minimize)
    assert cls.uses_val_groups is False  # class labels only: none of them reads group labels


def test_labels_are_distinct_over_every_protocol() -> None:
    labels = [cls.label for _, cls in SELECTIONS.load_all()]
    assert len(labels) == len(set(labels))


def test_every_metric_is_a_key_the_metrics_write() -> None:
    info = DataInfo("toy", "tabular", (2,), {"y": 2}, ("a", "b"), (5, 5))
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.0], [0.0, 2.0]])
    y, g = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 0, 1, 1])
    keys = {**split_metrics("val", {"y": logits.argmax(1)}, {"y": y}, g, info, logits={"y": logits}),
            **split_metrics("test", {"y": logits.argmax(1)}, {"y": y}, g, info, logits={"y": logits})}
    for name, cls in SELECTIONS.load_all():
        assert cls.metric in keys, name


def test_minimising_ties_nulls_and_patience() -> None:
    diff = SELECTIONS.get("val_class_diff")()
    rows = [{"val/class_diff": v} for v in (0.5, 0.3, 0.4, 0.4, 0.1)]
    assert diff.select(rows, 0) == 4
    assert diff.select(rows, 2) == 1  # 0.4, 0.4: two epochs without a lower value, so it would have stopped
    assert diff.select([{"val/class_diff": v} for v in (0.2, 0.1, 0.1)], 0) == 1  # the first lowest wins
    assert diff.select([{"val/class_diff": v} for v in (None, 0.3, math.nan, 0.2)], 0) == 3
    assert diff.select([{}, {}], 0) == 0  # nothing to choose from: the first epoch


def test_oracle_sees_every_epoch_and_a_plain_selection_still_maximises() -> None:
    rows = [{"test/avg_acc": v, "val/avg_acc": v} for v in (0.5, 0.6, 0.55, 0.55, 0.9)]
    assert _select("oracle_avg", rows, patience=2) == 4  # the oracle ignores patience
    assert _select("val_avg", rows, patience=2) == 1

    class Plain(Selection):  # a plugin protocol written before `minimize` existed
        metric = "val/avg_acc"

    assert Plain().select(rows, 0) == 4


# -- the leaderboard -----------------------------------------------------------------------------------
def _with_new_protocols(run: Path, class_diff: float) -> None:
    """Add every new protocol's entry to a fake run's final.json, as the runner writes them: its val metric
    0.7 (the class difference `class_diff`); the oracle's test metric is the run's own."""
    final = json.loads((run / "final.json").read_text())
    base = final["selections"]["val_avg"]
    for name, (metric, label, oracle, _) in NEW.items():
        split, _, key = metric.partition("/")
        entry = json.loads(json.dumps(base))
        entry.update(label=label, oracle=oracle, metric=metric, uses_val_groups=False)
        if split == "val":
            entry["val"][key] = class_diff if name == "val_class_diff" else 0.7
        final["selections"][name] = entry
    (run / "final.json").write_text(json.dumps(final))


def test_leaderboard_chooses_the_lowest_mean_class_difference(tmp_path: Path) -> None:
    for seed in range(2):
        _with_new_protocols(make_run(tmp_path, f"a{seed}", seed, 0.5, 0.4, 0.8, lr=0.01), class_diff=0.1 + seed / 10)
        _with_new_protocols(make_run(tmp_path, f"b{seed}", seed, 0.5, 0.9, 0.9, lr=0.1), class_diff=0.3)
    rows = lb.collect_rows(tmp_path)
    (row,) = [r for r in rows if r["protocol"] == "val_class_diff"]
    assert row["runs"] == ["a0", "a1"] and row["selection_score_mean"] == pytest.approx(0.15)
    assert row["selection_rule"].startswith("lowest mean val/class_diff over 2 seeds")
    (balanced,) = [r for r in rows if r["protocol"] == "val_balanced"]  # 0.7 both: the first configuration
    assert balanced["selection_rule"].startswith("best mean val/macro_recall")


def test_markdown_setting_column_order_and_oracle_labels(tmp_path: Path) -> None:
    _with_new_protocols(make_run(tmp_path, "erm", 0, 0.5, 0.4, 0.8), class_diff=0.2)
    _with_new_protocols(make_run(tmp_path, "gdro", 0, 0.5, 0.6, 0.8, algorithm="group_dro", train_groups=True),
                        class_diff=0.2)
    md = lb.render_markdown(lb.collect_rows(tmp_path), "synthetic")
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert "| Train groups | Val groups | Attr. setting | Configs |" in lines[0]
    assert "| erm | mlp | No-GP | 40.0 | 80.0 | 1 | no | no | none | 1 |" in md
    assert "| erm | mlp | Val-GP | 40.0 | 80.0 | 1 | no | yes | val | 1 |" in md
    assert "| group_dro | mlp | Val-GP | 60.0 | 80.0 | 1 | yes | yes | train + val | 1 |" in md
    assert "| group_dro | mlp | Val-CDiff | 60.0 | 80.0 | 1 | yes | no | train | 1 |" in md
    assert "| erm | mlp | *Oracle (test)* | 40.0 | 80.0 | 1 | no | no (test groups) | none |" in md
    assert "| erm | mlp | *Oracle avg (test)* | 40.0 | 80.0 | 1 | no | no (test labels) | none |" in md
    order = list(dict.fromkeys(ln.split(" | ")[2] for ln in lines[2:]))
    assert order == ["Val-GP", "No-GP", "Val-WC", "Val-Bal", "Val-Prec", "Val-WC-Prec", "Val-F1", "Val-WC-F1",
                     "Val-AUROC", "Val-CDiff", "*Oracle (test)*", "*Oracle avg (test)*"]
    assert "Attr. setting: SubpopBench's attribute-availability setting" in md
