"""ρ_spur: the share of input saliency of the correct-class score that falls on a task's spurious region."""
from __future__ import annotations

import contextlib
import inspect
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from .data._pairs import region_mask
from .data.base import TensorSplit
from .errors import ConfigError
from .selection import on_selected_models

# At most this many examples of a split (a fixed subset, the same for every run on the same data), so the
# cost after training is bounded whatever the split's size; multidigits' default test split (2000) fits whole.
MAX_EXAMPLES = 2000
SUBSET_SEED = 0  # not the run seed: every run of a dataset is measured on the same examples
MODALITIES = ("image", "tabular")  # text inputs are token ids, which have no gradient


class SaliencyUnavailable(RuntimeError):
    """The algorithm's prediction gives no gradient with respect to its inputs."""


def spurious_masks(dataset: Any, input_shape: tuple[int, ...]) -> dict[str, Tensor]:
    """Bool mask [*input_shape] per task the dataset declares a spurious region for ({} when it declares none,
    or its inputs are not differentiable)."""
    regions = getattr(dataset, "spurious_regions", None) or {}
    if getattr(dataset, "modality", None) not in MODALITIES:
        return {}
    masks = {}
    for task, region in regions.items():
        if hasattr(dataset, "spurious_mask"):
            mask = dataset.spurious_mask(task)
        elif len(region) != len(input_shape):
            raise ConfigError(f"{dataset.name}: spurious_regions['{task}'] has {len(region)} axes but one input "
                              f"has {len(input_shape)} ({list(input_shape)}); give one (start, stop) or None per axis")
        else:
            mask = region_mask(region, input_shape)
        if tuple(mask.shape) != tuple(input_shape) or mask.dtype != torch.bool:
            raise ConfigError(f"{dataset.name}: the spurious mask of task '{task}' is {mask.dtype} "
                              f"{list(mask.shape)}, but one input is {list(input_shape)}; it must be bool of that "
                              "shape")
        masks[task] = mask
    return masks


def subset(n: int, cap: int = MAX_EXAMPLES) -> Tensor | None:
    """Sorted indices of a fixed seeded subset of `cap` of `n` examples; None (all of them) when n <= cap."""
    if n <= cap:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(SUBSET_SEED))[:cap].sort().values


@contextlib.contextmanager
def _fp32(algo: Any) -> Iterator[None]:
    """Gradients in full precision: the algorithm's autocast off while inside (restored after)."""
    before, algo.autocast = getattr(algo, "autocast", None), None
    try:
        yield
    finally:
        algo.autocast = before


def _logits(algo: Any, x: Tensor) -> dict[str, Tensor]:
    """Logits per task through the algorithm's own `predict` (so STL's per-task models and any routed heads are
    the ones measured), with its no_grad decorator peeled off so gradients reach `x`."""
    out = inspect.unwrap(type(algo).predict)(algo, x)
    if not all(v.requires_grad for v in out.values()):
        raise SaliencyUnavailable(f"{type(algo).__name__}.predict gives no gradient with respect to its inputs "
                                  "(it computes under no_grad inside, or ignores them), so rho_spur cannot be measured")
    return out


def saliency_maps(algo: Any, split: TensorSplit, tasks: list[str], batch_size: int,
                  idx: Tensor | None = None) -> tuple[dict[str, Tensor], dict[str, int]]:
    """(per task, Σ over labelled examples of |∂ logit_t[y_t] / ∂x| [one stored input's shape], float64 on CPU;
    per task, the examples summed), over the examples at `idx` (all when None).

    The gradient is with respect to the stored inputs as floats ([0, 1] images), through `eval_transform`,
    in eval mode and fp32. One backward per task: |·| must be taken per task and example, and eval mode
    keeps examples independent, so the gradient of a batch's summed scores is each example's own."""
    rows = torch.arange(len(split), device=split.g.device) if idx is None else idx.to(split.g.device)
    maps = {t: torch.zeros(split.x.shape[1:], dtype=torch.float64) for t in tasks}
    counts = dict.fromkeys(tasks, 0)
    with _fp32(algo), torch.autocast(split.x.device.type, enabled=False):
        for start in range(0, len(rows), batch_size):
            at = rows[start:start + batch_size]
            x = split.raw(at).detach().float().clone().requires_grad_(True)
            with torch.enable_grad():
                out = _logits(algo, split.eval_transform(x) if split.eval_transform is not None else x)
                for t in tasks:
                    y = split.y[t][at]
                    keep = y >= 0
                    if not bool(keep.any()):
                        continue
                    score = out[t].gather(1, y.clamp_min(0)[:, None]).squeeze(1)[keep].sum()
                    (grad,) = torch.autograd.grad(score, x, retain_graph=True)
                    maps[t] += grad[keep].abs().sum(0).double().cpu()
                    counts[t] += int(keep.sum())
    return maps, counts


@torch.no_grad()
def rho_spur(algo: Any, split: TensorSplit, masks: dict[str, Tensor], batch_size: int = 512,
             max_examples: int = MAX_EXAMPLES) -> tuple[dict[str, float | None], dict[str, int]]:
    """(ρ_spur per task in `masks`, examples per task): the spurious region's share of the summed input
    saliency of the correct-class logit, over a fixed subset of at most `max_examples` of the split's
    examples (those with a label for the task); None where the saliency sums to 0."""
    maps, counts = saliency_maps(algo, split, list(masks), batch_size, subset(len(split), max_examples))
    rho = {}
    for t, m in maps.items():
        total = float(m.sum())
        rho[t] = float(m[masks[t].cpu()].sum()) / total if total > 0 else None
    return rho, counts


@torch.no_grad()
def selected_rho_spur(algo: Any, dataset: Any, split: TensorSplit, out: Path, selections: dict[str, Any],
                      batch_size: int, split_name: str = "test") -> dict[str, Any] | None:
    """ρ_spur per task of each protocol's selected model (selected/<protocol>.pt), written into its selections
    entry as `saliency: {"<split>/rho_spur/<task>": value}`; returns what was measured (split, subset,
    examples per task), or None when the dataset declares no spurious regions. The algorithm's model holds
    its own weights again afterwards. Protocols that chose the same record share one measurement."""
    masks = spurious_masks(dataset, tuple(split.x.shape[1:]))
    masks = {t: m for t, m in masks.items() if t in split.y}
    if not masks:
        return None
    t0 = time.perf_counter()
    info: dict[str, Any] = {"split": split_name, "max_examples": MAX_EXAMPLES, "subset_seed": SUBSET_SEED}
    counts: dict[str, int] = {}
    try:
        measured = on_selected_models(algo.model, out, selections, lambda: rho_spur(algo, split, masks, batch_size))
    except SaliencyUnavailable as exc:
        return {**info, "unavailable": str(exc), "examples": counts, "time_s": time.perf_counter() - t0}
    for name, (rho, counts) in measured.items():
        selections[name]["saliency"] = {f"{split_name}/rho_spur/{t}": v for t, v in rho.items()}
    return {**info, "examples": counts, "time_s": time.perf_counter() - t0}


__all__ = ["MAX_EXAMPLES", "SUBSET_SEED", "SaliencyUnavailable", "spurious_masks", "subset", "saliency_maps",
           "rho_spur", "selected_rho_spur"]
