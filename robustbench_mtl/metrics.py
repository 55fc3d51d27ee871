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


def task_metrics(pred: Tensor, y: Tensor, g: Tensor, n_classes: int, info: DataInfo) -> dict[str, float]:
    """Metrics of one task; `pred` and `y` are class ids, `g` group ids (-1 = unknown)."""
    labelled = y >= 0
    pred, y, g = pred[labelled].cpu(), y[labelled].cpu(), g[labelled].cpu()
    correct = (pred == y).double()
    out: dict[str, float] = {"avg_acc": float(correct.mean()) if len(y) else float("nan")}
    n_groups = len(info.group_names)
    if n_groups:
        acc, n = _rates(correct, g, n_groups)
        present = n > 0
        out["worst_group_acc"] = float(acc[present].min()) if present.any() else float("nan")
        out["balanced_acc"] = float(acc[present].mean()) if present.any() else float("nan")
        train = torch.tensor(info.train_group_counts, dtype=torch.double)[:n_groups]
        w = train * present
        out["adjusted_acc"] = float((acc * w).sum() / w.sum()) if w.sum() > 0 else float("nan")
        for i, name in enumerate(info.group_names):
            if present[i]:
                out[f"group_acc@{name}"] = float(acc[i])
    cacc, cn = _rates(correct, y, n_classes)
    out["worst_class_acc"] = float(cacc[cn > 0].min()) if (cn > 0).any() else float("nan")
    return out


def split_metrics(split: str, preds: dict[str, Tensor], y: dict[str, Tensor], g: Tensor,
                  info: DataInfo, loss: float | None = None) -> dict[str, float]:
    """All metrics of one split. With several tasks, each metric also appears per task (`.../task`)
    and the task-free key holds the mean over tasks."""
    per_task = {t: task_metrics(preds[t], y[t], g, info.tasks[t], info) for t in info.tasks}
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
