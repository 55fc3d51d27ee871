"""Apply every registered selection protocol to one run's records, and keep each protocol's weights."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .registry import SELECTIONS
from .results import atomic_torch_save


def selected_model_path(out: Path, protocol: str) -> Path:
    return Path(out) / "selected" / f"{protocol}.pt"


def _split_view(record: dict[str, Any], split: str) -> dict[str, Any]:
    prefix = f"{split}/"
    return {k[len(prefix):]: v for k, v in record.items() if k.startswith(prefix)}


def select_all(records: list[dict[str, Any]], patience: int, out: Path | None = None) -> dict[str, Any]:
    """For each protocol: the chosen epoch and its val and test metrics (oracle ones labelled so)."""
    result = {}
    for name, cls in SELECTIONS.load_all():
        proto = cls()
        rec = records[proto.select(records, patience)]
        entry = {"label": proto.label, "oracle": proto.oracle, "metric": proto.metric,
                 "uses_val_groups": proto.uses_val_groups, "epoch": rec["epoch"],
                 "val": _split_view(rec, "val"), "test": _split_view(rec, "test")}
        if out is not None and selected_model_path(out, name).exists():
            entry["weights"] = str(selected_model_path(out, name).relative_to(out))
        result[name] = entry
    return result


def save_selected_models(out: Path, records: list[dict[str, Any]], patience: int, model: nn.Module) -> None:
    """Save the model's weights for every protocol whose choice is the newest record."""
    for name, cls in SELECTIONS.load_all():
        if cls().select(records, patience) == len(records) - 1:
            atomic_torch_save(model.state_dict(), selected_model_path(out, name))
