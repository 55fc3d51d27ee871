"""Accuracy metrics per split, task, group and class; flat keys `split/metric[/task][@group]`."""
from __future__ import annotations

import torch
from torch import Tensor

from .data.base import DataInfo


def _rates(correct: Tensor, ids: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(accuracy per id, count per id) for ids in [0, n); ids < 0 are skipped."""
    keep = ids >= 0
    totals = torch.bincount(ids[keep], minlength=n)[:n]
    hits = torch.bincount(ids[keep], weights=correct[keep].double(), minlength=n)[:n]
    return hits / totals.clamp_min(1), totals


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


def task_metrics(pred: Tensor, y: Tensor, g: Tensor, n_classes: int, info: DataInfo,
                 members: Tensor | None = None) -> dict[str, float]:
    """Metrics of one task; `pred` and `y` are class ids, `g` group ids (-1 = unknown), `members` the
    overlapping evaluation groups [N, G] of datasets that declare `eval_group_names` (else None)."""
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
    cacc, cn = _rates(correct, y, n_classes)
    out["worst_class_acc"] = float(cacc[cn > 0].min()) if (cn > 0).any() else float("nan")
    return out


def split_metrics(split: str, preds: dict[str, Tensor], y: dict[str, Tensor], g: Tensor,
                  info: DataInfo, loss: float | None = None, members: Tensor | None = None) -> dict[str, float]:
    """All metrics of one split. With several tasks, each metric also appears per task (`.../task`)
    and the task-free key holds the mean over tasks."""
    per_task = {t: task_metrics(preds[t], y[t], g, info.tasks[t], info, members) for t in info.tasks}
    out: dict[str, float] = {}
    if loss is not None:
        out[f"{split}/loss"] = loss
    names = list(next(iter(per_task.values())))
    for m in names:
        metric, _, group = m.partition("@")
        suffix = f"@{group}" if group else ""
        vals = [per_task[t][m] for t in per_task if m in per_task[t]]
        out[f"{split}/{metric}{suffix}"] = sum(vals) / len(vals)
        if len(per_task) > 1:
            for t in per_task:
                if m in per_task[t]:
                    out[f"{split}/{metric}/{t}{suffix}"] = per_task[t][m]
    return out
