"""Run-directory files: atomic writes, metrics.jsonl records, and reading finished runs back."""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

CONFIG, METRICS, CHECKPOINT, FINAL = "config.json", "metrics.jsonl", "checkpoint.pt", "final.json"
# Record keys that vary between identical runs; determinism checks ignore them.
TIMING_KEYS = ("time/epoch_s", "time/eval_s")


def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN; a missing value is honest
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(_jsonable(obj), indent=indent, sort_keys=False, allow_nan=False)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON so that readers see the old file or the complete new one, never a part."""
    data = (dumps(obj) + "\n").encode()
    _atomic(Path(path), lambda fh: fh.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(Path(path), lambda fh: fh.write(text.encode()))


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic(Path(path), lambda fh: torch.save(obj, fh))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete records (a line that does not parse ends the read)."""
    if not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def rewrite_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace metrics.jsonl atomically (used on resume to drop epochs after the checkpoint)."""
    text = "".join(dumps(r, indent=None) + "\n" for r in records)
    atomic_write_text(Path(path), text)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class RunRecord:
    """A finished run read back from its directory."""

    path: Path
    config: dict[str, Any]
    final: dict[str, Any]


def finished_runs(root: Path) -> list[RunRecord]:
    """Every run directory under `root` that holds a final.json (the done marker)."""
    runs = []
    for final in sorted(Path(root).rglob(FINAL)):
        run_dir = final.parent
        if not (run_dir / CONFIG).exists():
            continue
        runs.append(RunRecord(run_dir, read_json(run_dir / CONFIG), read_json(final)))
    return runs
