"""Metrics per split, task, group and class; flat keys `split/metric[/task][@group]`.

Accuracy over examples, groups and classes; per-class precision, recall and F1 with their macro means and
worst classes; the class difference; and, given the logits, AUROC and the expected calibration error, as
SubpopBench reports them (Yang et al., ICML 2023, `subpopbench/utils/eval_helper.py`). Formulas:
docs/results-format.md "Evaluation metrics". Everything is vectorised: evaluation runs every epoch.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .data.base import DataInfo

ECE_BINS = 15  # equal-width confidence bins, as Guo et al. 2017
# Per-class keys are written per task only: a mean over tasks of "class c" would mix unrelated classes.
PER_TASK_ONLY = ("class_precision", "class_recall", "class_f1")
# Metrics that read class labels only, never group labels (the rest are group metrics).
GROUP_FREE_METRICS = ("loss", "avg_acc", "worst_class_acc", "macro_precision", "macro_recall", "macro_f1",
                      "worst_class_precision", "worst_class_f1", "class_diff", "auroc", "ece", *PER_TASK_ONLY)


def membership_of(g: Tensor, n_groups: int) -> Tensor:
    """Group ids [N] (-1 = unknown) as a bool membership matrix [N, n_groups] (one group per example)."""
    keep = g >= 0
    m = torch.zeros(len(g), n_groups, dtype=torch.bool)
    m[keep.nonzero().flatten(), g[keep]] = True
    return m


def group_metrics(correct: Tensor, members: Tensor, names: tuple[str, ...], train_counts: tuple[int, ...],
                  overlapping: bool) -> dict[str, float]:
    """Per-group accuracy over each group's members, worst and balanced over the groups present, and the
    train-weighted average. With overlapping groups (an example in several) `avg_acc_duplicated` is the
    accuracy over (example, group) pairs: the released CivilComments code's average over duplicated rows."""
    hits = (members & correct.bool()[:, None]).sum(0).double()
    n = members.sum(0)
    acc, present = hits / n.clamp_min(1), n > 0
    out: dict[str, float] = {}
    out["worst_group_acc"] = float(acc[present].min()) if present.any() else float("nan")
    out["balanced_acc"] = float(acc[present].mean()) if present.any() else float("nan")
    w = torch.tensor(train_counts, dtype=torch.double)[:len(names)] * present if train_counts else None
    out["adjusted_acc"] = float((acc * w).sum() / w.sum()) if w is not None and w.sum() > 0 else float("nan")
    if overlapping:
        out["avg_acc_duplicated"] = float(hits.sum() / n.sum()) if n.sum() > 0 else float("nan")
    out.update({f"group_acc@{name}": float(acc[i]) for i, name in enumerate(names) if present[i]})
    return out


def class_scores(pred: Tensor, y: Tensor, n_classes: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(precision, recall, F1, present) per class from one confusion count. A 0/0 precision (a class never
    predicted) is 0, as sklearn's `zero_division=0`; F1 = 2 TP / (true + predicted), which equals
    2PR / (P + R) and is 0 when TP = 0. `present`: the class has a labelled example."""
    true_n = torch.bincount(y, minlength=n_classes)[:n_classes].double()
    pred_n = torch.bincount(pred, minlength=n_classes)[:n_classes].double()
    tp = torch.bincount(y[pred == y], minlength=n_classes)[:n_classes].double()
    precision = tp / pred_n.clamp_min(1)
    recall = tp / true_n.clamp_min(1)
    f1 = 2 * tp / (true_n + pred_n).clamp_min(1)
    return precision, recall, f1, true_n > 0


def class_diff(recall: Tensor) -> float:
    """SubpopBench's class difference: Σ_{i<j} |recall_i - recall_j| over the given classes (for two
    classes, max minus min); NaN without classes."""
    if len(recall) == 0:
        return float("nan")
    return float((recall[:, None] - recall[None, :]).abs().sum() / 2)


def class_metrics(pred: Tensor, y: Tensor, n_classes: int) -> dict[str, float]:
    """Per-class precision, recall and F1 (`class_f1@c<k>`), their macro means and worst classes over the
    classes present in `y`, and the class difference. Worst-class recall is `worst_class_acc`."""
    precision, recall, f1, present = class_scores(pred, y, n_classes)
    out: dict[str, float] = {"worst_class_acc": float("nan")}
    names = ("precision", "recall", "f1")
    if present.any():
        p, r, f = precision[present], recall[present], f1[present]
        out["worst_class_acc"] = float(r.min())
        out.update({f"macro_{n}": float(v.mean()) for n, v in zip(names, (p, r, f))})
        out.update({"worst_class_precision": float(p.min()), "worst_class_f1": float(f.min())})
    else:
        out.update({k: float("nan") for k in ("macro_precision", "macro_recall", "macro_f1",
                                               "worst_class_precision", "worst_class_f1")})
    out["class_diff"] = class_diff(recall[present])
    for c in present.nonzero().flatten().tolist():
        out.update({f"class_{n}@c{c}": float(v[c]) for n, v in zip(names, (precision, recall, f1))})
    return out


def auc(score: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve of `score` for the bool labels `positive`: the Mann-Whitney rank formula
    (the fraction of (positive, negative) pairs ordered correctly, ties counting 1/2); NaN without both."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = torch.unique(score, return_inverse=True, return_counts=True)
    upper = counts.cumsum(0).double()
    mid_rank = upper - (counts.double() - 1) / 2  # tied scores share the mean of their 1-based ranks
    rank_sum = mid_rank[inverse][positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc(log_probs: Tensor, y: Tensor) -> float:
    """Binary: AUROC of the positive-class score (log p1 - log p0, a logit difference, so confident
    predictions do not tie at probability 1.0). More classes: the macro mean of one-vs-rest AUROCs over the
    classes that have positives and negatives. NaN when the split has fewer than two classes."""
    if log_probs.shape[1] == 2:
        return auc(log_probs[:, 1] - log_probs[:, 0], y == 1)
    per_class = [auc(log_probs[:, c], y == c) for c in range(log_probs.shape[1])]  # a loop over classes only
    defined = [a for a in per_class if not math.isnan(a)]
    return sum(defined) / len(defined) if defined else float("nan")


def ece(log_probs: Tensor, y: Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-class confidence: Σ_b (n_b / N) |acc_b - conf_b| over `bins`
    equal-width bins (k/bins, (k+1)/bins]; = Σ_b |Σ_{i in b} (correct_i - conf_i)| / N."""
    if len(y) == 0:
        return float("nan")
    conf, pred = log_probs.max(1)
    conf = conf.exp()
    inner_edges = torch.linspace(0, 1, bins + 1, dtype=torch.double)[1:-1]
    b = torch.bucketize(conf, inner_edges, right=False)  # edges belong to the lower bin
    gap = torch.bincount(b, weights=(pred == y).double() - conf, minlength=bins)
    return float(gap.abs().sum() / len(y))


def task_metrics(pred: Tensor, y: Tensor, g: Tensor, n_classes: int, info: DataInfo,
                 members: Tensor | None = None, logits: Tensor | None = None) -> dict[str, float]:
    """Metrics of one task; `pred` and `y` are class ids, `g` group ids (-1 = unknown), `members` the
    overlapping evaluation groups [N, G] of datasets that declare `eval_group_names` (else None), `logits`
    the model's scores [N, n_classes] (else no AUROC and ECE)."""
    labelled = y >= 0
    pred, y, g = pred[labelled].cpu(), y[labelled].cpu(), g[labelled].cpu()
    correct = (pred == y).double()
    out: dict[str, float] = {"avg_acc": float(correct.mean()) if len(y) else float("nan")}
    if members is not None and info.eval_group_names:
        out.update(group_metrics(correct, members[labelled].cpu(), info.eval_group_names,
                                 info.train_eval_group_counts, overlapping=True))
    elif info.group_names:
        out.update(group_metrics(correct, membership_of(g, len(info.group_names)), info.group_names,
                                 info.train_group_counts, overlapping=False))
    out.update(class_metrics(pred, y, n_classes))
    if logits is not None:
        log_probs = torch.log_softmax(logits[labelled].cpu().double(), dim=1)
        out["auroc"], out["ece"] = auroc(log_probs, y), ece(log_probs, y)
    return out


def split_metrics(split: str, preds: dict[str, Tensor], y: dict[str, Tensor], g: Tensor,
                  info: DataInfo, loss: float | None = None, members: Tensor | None = None,
                  logits: dict[str, Tensor] | None = None) -> dict[str, float]:
    """All metrics of one split. With several tasks, each metric also appears per task (`.../task`)
    and the task-free key holds the mean over the tasks that have it (per-class keys: per task only)."""
    per_task = {t: task_metrics(preds[t], y[t], g, info.tasks[t], info, members,
                                None if logits is None else logits[t]) for t in info.tasks}
    out: dict[str, float] = {}
    if loss is not None:
        out[f"{split}/loss"] = loss
    names = dict.fromkeys(m for metrics in per_task.values() for m in metrics)  # tasks may differ in classes
    for m in names:
        metric, _, group = m.partition("@")
        suffix = f"@{group}" if group else ""
        vals = [per_task[t][m] for t in per_task if m in per_task[t]]
        if len(per_task) == 1 or metric not in PER_TASK_ONLY:
            out[f"{split}/{metric}{suffix}"] = sum(vals) / len(vals)
        if len(per_task) > 1:
            for t in per_task:
                if m in per_task[t]:
                    out[f"{split}/{metric}/{t}{suffix}"] = per_task[t][m]
    return out
