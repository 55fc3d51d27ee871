"""Apply every registered selection protocol to one run's records, and keep each protocol's weights."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from .checkpoint import copy_state
from .registry import SELECTIONS
from .results import atomic_link, atomic_torch_save


T = TypeVar("T")


def selected_model_path(out: Path, protocol: str) -> Path:
    return Path(out) / "selected" / f"{protocol}.pt"


@torch.no_grad()
def on_selected_models(model: nn.Module, out: Path, selections: dict[str, Any], measure: Callable[[], T]) -> dict[str, T]:
    """`measure()` with `model` holding each protocol's selected weights (selected/<protocol>.pt), per protocol
    that saved some; protocols that chose the same record share one measurement. `model` holds its own
    weights again afterwards, also when `measure` raises."""
    own = copy_state(model)
    device = next(model.parameters()).device
    done: dict[tuple[Any, Any], T] = {}
    results: dict[str, T] = {}
    try:
        for name, entry in selections.items():
            path = selected_model_path(out, name)
            if not path.exists():
                continue
            key = (entry.get("phase"), entry.get("epoch"))  # one record, one set of weights
            if key not in done:
                model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
                done[key] = measure()
            results[name] = done[key]
    finally:
        model.load_state_dict(own)
    return results


def _split_view(record: dict[str, Any], split: str) -> dict[str, Any]:
    prefix = f"{split}/"
    return {k[len(prefix):]: v for k, v in record.items() if k.startswith(prefix)}


def _choose(proto: Any, records: list[dict[str, Any]], patience: int,
            selectable: Callable[[dict[str, Any]], bool] | None = None) -> int:
    """Index of the protocol's choice among the records the algorithm lets be selected. An
    `after_training` record (e.g. DFR's retrained heads) is the method's final model, so when one
    exists the protocol chooses among those records only."""
    pool = [i for i, r in enumerate(records) if selectable is None or selectable(r)]
    final = [i for i in pool if records[i].get("phase") == "after_training"]
    pool = final or pool
    if not pool:  # e.g. only first-stage records so far, and the algorithm excludes them
        return -1
    return pool[proto.select([records[i] for i in pool], patience)]


def select_all(records: list[dict[str, Any]], patience: int, out: Path | None = None,
               selectable: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """For each protocol: the chosen epoch and its val and test metrics (oracle ones labelled so)."""
    result = {}
    for name, cls in SELECTIONS.load_all():
        proto = cls()
        i = _choose(proto, records, patience, selectable)
        if i < 0:
            continue
        rec = records[i]
        entry = {"label": proto.label, "oracle": proto.oracle, "metric": proto.metric,
                 "uses_val_groups": proto.uses_val_groups, "epoch": rec["epoch"],
                 "val": _split_view(rec, "val"), "test": _split_view(rec, "test")}
        if "phase" in rec:
            entry["phase"] = rec["phase"]
        if out is not None and selected_model_path(out, name).exists():
            entry["weights"] = str(selected_model_path(out, name).relative_to(out))
        result[name] = entry
    return result


def _choices(records: list[dict[str, Any]], patience: int,
             selectable: Callable[[dict[str, Any]], bool] | None) -> dict[str, int]:
    """Each protocol's chosen index among `records` (-1: none selectable yet)."""
    return {name: _choose(cls(), records, patience, selectable) for name, cls in SELECTIONS.load_all()}


def chosen_weight_files(out: Path, records: list[dict[str, Any]], patience: int,
                        selectable: Callable[[dict[str, Any]], bool] | None = None) -> list[Path]:
    """The selected-weight files the protocols' choices among `records` point to, one per distinct file (the
    protocols that chose the same record share one, hard-linked)."""
    files: dict[Any, Path] = {}
    for name, i in _choices(records, patience, selectable).items():
        if i >= 0:
            path = selected_model_path(out, name)
            files.setdefault(path.stat().st_ino if path.exists() else path, path)
    return list(files.values())


def save_selected_models(out: Path, records: list[dict[str, Any]], patience: int, model: nn.Module,
                         selectable: Callable[[dict[str, Any]], bool] | None = None) -> None:
    """Save the model's weights for every protocol whose choice is the newest record: written once, the other
    protocols' files linked to it (with 12 protocols, one serialisation per epoch instead of 12). Not fsynced:
    per-epoch state, synced with the run at its end."""
    names = [name for name, i in _choices(records, patience, selectable).items() if i == len(records) - 1]
    if not names:
        return
    first = selected_model_path(out, names[0])
    atomic_torch_save(model.state_dict(), first, durable=False)
    for name in names[1:]:
        atomic_link(first, selected_model_path(out, name))
