"""SubpopBench's richer metrics (per-class precision/recall/F1, macro and worst class, class difference, AUROC,
ECE) against hand computations, and their keys with one and with several tasks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from robustbench_mtl.data.base import DataInfo
from robustbench_mtl.metrics import auc, split_metrics

ONE = DataInfo("toy", "tabular", (2,), {"y": 3}, (), ())


def _binary_logits(p1: list[float]) -> torch.Tensor:
    """Two-class logits whose softmax gives class 1 the probability p1 (logit difference = log-odds)."""
    p = torch.tensor(p1, dtype=torch.double)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)


def test_per_class_macro_worst_and_class_diff_by_hand() -> None:
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    p = torch.tensor([0, 0, 1, 2, 1, 1, 0, 2, 1, 1])
    # true counts 4, 3, 3; predicted counts 3, 5, 2; true positives 2, 2, 1
    m = split_metrics("val", {"y": p}, {"y": y}, torch.full((10,), -1), ONE)
    prec, rec, f1 = (2 / 3, 2 / 5, 1 / 2), (2 / 4, 2 / 3, 1 / 3), (4 / 7, 4 / 8, 2 / 5)  # F1 = 2 TP / (true + pred)
    for c in range(3):
        assert m[f"val/class_precision@c{c}"] == pytest.approx(prec[c])
        assert m[f"val/class_recall@c{c}"] == pytest.approx(rec[c])
        assert m[f"val/class_f1@c{c}"] == pytest.approx(f1[c])
    assert m["val/macro_precision"] == pytest.approx(47 / 90)
    assert m["val/macro_recall"] == pytest.approx(1 / 2)
    assert m["val/macro_f1"] == pytest.approx(103 / 210)
    assert m["val/worst_class_precision"] == pytest.approx(2 / 5)
    assert m["val/worst_class_f1"] == pytest.approx(2 / 5)
    assert m["val/worst_class_acc"] == pytest.approx(1 / 3)  # the worst-class recall
    assert m["val/class_diff"] == pytest.approx(1 / 6 + 1 / 6 + 1 / 3)  # |1/2-2/3| + |1/2-1/3| + |2/3-1/3|
    assert "val/auroc" not in m and "val/ece" not in m  # no logits given: no score metrics


def test_never_predicted_and_absent_classes() -> None:
    # class 2 is in y but never predicted (precision 0, as sklearn's zero_division=0); class 1 is predicted but
    # absent from y, so it has no per-class keys and is not in the macro means or the worst class.
    y = torch.tensor([0, 0, 2, 2])
    p = torch.tensor([0, 1, 0, 0])
    m = split_metrics("val", {"y": p}, {"y": y}, torch.full((4,), -1), ONE)
    assert m["val/class_precision@c2"] == 0.0 and m["val/class_f1@c2"] == 0.0
    assert "val/class_f1@c1" not in m
    assert m["val/macro_precision"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["val/macro_recall"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["val/class_diff"] == pytest.approx(1 / 2) and m["val/worst_class_precision"] == 0.0


def test_class_metrics_agree_with_sklearn() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=gen)
    p = torch.where(torch.rand(300, generator=gen) < 0.6, y, torch.randint(0, 3, (300,), generator=gen))
    m = split_metrics("val", {"y": p}, {"y": y}, torch.full((300,), -1), ONE)
    sk = precision_recall_fscore_support(y.numpy(), p.numpy(), labels=[0, 1, 2], zero_division=0)
    for name, values in zip(("precision", "recall", "f1"), sk[:3]):
        assert m[f"val/macro_{name}"] == pytest.approx(float(np.mean(values)))


def test_auroc_counts_correctly_ordered_pairs() -> None:
    # positives score 0.9, 0.4, 0.6; negatives 0.3, 0.6, 0.1, 0.5. Pairs won: 0.9 beats all 4; 0.4 beats 0.3
    # and 0.1 (2); 0.6 beats 0.3, 0.1, 0.5 and ties 0.6 (3 + 1/2). 9.5 of 12 pairs.
    scores = [0.9, 0.4, 0.6, 0.3, 0.6, 0.1, 0.5]
    y = torch.tensor([1, 1, 1, 0, 0, 0, 0])
    assert auc(torch.tensor(scores), y == 1) == pytest.approx(9.5 / 12)
    info = DataInfo("toy", "tabular", (2,), {"y": 2}, (), ())
    logits = _binary_logits(scores)
    m = split_metrics("val", {"y": logits.argmax(1)}, {"y": y}, torch.full((7,), -1), info, logits={"y": logits})
    assert m["val/auroc"] == pytest.approx(9.5 / 12)
    one_class = split_metrics("val", {"y": logits.argmax(1)}, {"y": torch.ones(7, dtype=torch.long)},
                              torch.full((7,), -1), info, logits={"y": logits})
    assert math.isnan(one_class["val/auroc"])


def test_multiclass_auroc_is_the_macro_one_vs_rest_mean() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(200, 3, generator=gen)
    y = torch.randint(0, 3, (200,), generator=gen)
    logits[torch.arange(200), y] += 1.0
    m = split_metrics("val", {"y": logits.argmax(1)}, {"y": y}, torch.full((200,), -1), ONE, logits={"y": logits})
    probs = torch.softmax(logits.double(), 1).numpy()
    assert m["val/auroc"] == pytest.approx(roc_auc_score(y.numpy(), probs, multi_class="ovr", average="macro"))


def test_ece_with_fifteen_bins_by_hand() -> None:
    # confidences (top-class probability) and correctness, with bins (k/15, (k+1)/15]:
    #   0.92 right and 0.88 wrong -> bin (0.867, 0.933]: accuracy 1/2, mean confidence 0.90, gap 0.40
    #   0.70 right                -> bin (0.667, 0.733]: gap 0.30
    #   0.55 right (class 0)      -> bin (0.533, 0.600]: gap 0.45
    p1 = [0.92, 0.88, 0.70, 0.45]
    y = torch.tensor([1, 0, 1, 0])
    info = DataInfo("toy", "tabular", (2,), {"y": 2}, (), ())
    logits = _binary_logits(p1)
    m = split_metrics("val", {"y": logits.argmax(1)}, {"y": y}, torch.full((4,), -1), info, logits={"y": logits})
    assert m["val/ece"] == pytest.approx(2 / 4 * 0.40 + 1 / 4 * 0.30 + 1 / 4 * 0.45)
    # per-example |correct - confidence| would give (0.08 + 0.88 + 0.30 + 0.45) / 4: binning matters
    assert m["val/ece"] != pytest.approx((0.08 + 0.88 + 0.30 + 0.45) / 4)


def test_unlabelled_examples_are_left_out_of_score_metrics() -> None:
    info = DataInfo("toy", "tabular", (2,), {"y": 2}, (), ())
    logits = _binary_logits([0.9, 0.2, 0.6, 0.99])
    y = torch.tensor([1, 0, 1, -1])  # the last one is unlabelled: its confident score must not count
    m = split_metrics("val", {"y": logits.argmax(1)}, {"y": y}, torch.full((4,), -1), info, logits={"y": logits})
    kept = split_metrics("val", {"y": logits[:3].argmax(1)}, {"y": y[:3]}, torch.full((3,), -1), info,
                         logits={"y": logits[:3]})
    assert m["val/auroc"] == kept["val/auroc"] == 1.0
    assert m["val/ece"] == pytest.approx(kept["val/ece"])


def test_several_tasks_keep_the_task_naming() -> None:
    info = DataInfo("toy", "tabular", (2,), {"t1": 2, "t2": 3}, ("a", "b"), (5, 5))
    y = {"t1": torch.tensor([0, 1, 1, 0]), "t2": torch.tensor([2, 0, 1, -1])}
    logits = {"t1": torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]]),
              "t2": torch.tensor([[0.0, 0.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])}
    preds = {t: v.argmax(1) for t, v in logits.items()}
    m = split_metrics("test", preds, y, torch.tensor([0, 1, 0, 1]), info, logits=logits)
    # t1: predictions 0 1 0 1 against 0 1 1 0 -> each class 1 of 2 right and 1 of 2 predicted right
    assert m["test/macro_f1/t1"] == pytest.approx(1 / 2)
    # t2: labelled 2 0 1, predicted 2 0 2 -> F1: c0 1, c1 0, c2 2/3
    assert m["test/macro_f1/t2"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert m["test/macro_f1"] == pytest.approx((1 / 2 + 5 / 9) / 2)  # the task-free key: mean over tasks
    assert m["test/class_f1/t2@c2"] == pytest.approx(2 / 3) and m["test/class_precision/t1@c0"] == 0.5
    assert not [k for k in m if k.startswith(("test/class_f1@", "test/class_precision@", "test/class_recall@"))]
    assert {"test/auroc/t1", "test/auroc/t2", "test/ece/t1", "test/ece/t2", "test/auroc", "test/ece"} <= set(m)
    assert m["test/class_diff/t1"] == 0.0 and m["test/class_diff/t2"] == pytest.approx(2.0)  # |1-0|+|1-1|+|0-1|
