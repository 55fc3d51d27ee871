"""Run-directory files: atomic writes, metrics.jsonl records, and reading finished runs back."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

CONFIG, METRICS, CHECKPOINT, FINAL = "config.json", "metrics.jsonl", "checkpoint.pt", "final.json"
LOCK = ".lock"  # a sweep job's lock file (sweep.job_lock): its presence alone is not a run
# Record keys that vary between identical runs; determinism checks ignore them.
TIMING_KEYS = ("time/epoch_s", "time/eval_s")


def partial_write(name: str) -> bool:
    """Whether a file name is one of `_atomic`'s temporary files: what a process killed mid-write leaves behind
    (it is never read as a result)."""
    return name.startswith(".") and name.endswith(".tmp")


def _atomic(path: Path, write: Any, durable: bool = True) -> None:
    """Readers see the old file or the complete new one, whatever happens to the writing process. `durable`
    also flushes the file and the rename to disk (fsync), so they survive a crash of the machine; per-epoch
    state skips it: two workers fsyncing every epoch queue on the disk (benchmarks/RESULTS.md, sweep
    throughput), and `sync_tree` flushes a run once, before its final.json vouches for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot open or sync a directory: best effort
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sync_tree(root: Path) -> None:
    """Flush every file and directory under `root` to disk: what per-epoch writes left to the page cache."""
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(Path(root))


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


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode(), durable)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    _atomic(Path(path), lambda fh: fh.write(data), durable)


def atomic_torch_save(obj: Any, path: Path, durable: bool = True) -> None:
    _atomic(Path(path), lambda fh: torch.save(obj, fh), durable)


def atomic_link(src: Path, path: Path) -> None:
    """`path` becomes a file with `src`'s bytes, atomically: a hard link (no second write), or a copy where the
    filesystem has none. A later replacement of `src` (a new file) leaves `path` as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, path)


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
    atomic_write_text(Path(path), text, durable=False)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Add one record as one line. A reader may meet a torn last line while it is written, or after a crash:
    `read_jsonl` stops before it, and a resume rewrites the file from the checkpoint's records."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(dumps(record, indent=None) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class RunRecord:
    """A finished run read back from its directory."""

    path: Path
    config: dict[str, Any]
    final: dict[str, Any]


@dataclass(frozen=True)
class SkippedRun:
    """A run directory with a final.json that could not be used, and why (one line)."""

    path: Path
    reason: str


# What a reader of finished runs (the leaderboard) relies on in config.json: (dotted key, type, type's name).
_CONFIG_NEEDS = (("identity", dict, "an object"), ("identity.seed", int, "an integer"), ("spec", dict, "an object"),
                 ("spec.data", str, "a string"), ("spec.algorithm", str, "a string"), ("backbone", str, "a string"),
                 ("objectives", list, "a list"), ("components", dict, "an object"),
                 ("algorithm_flags", dict, "an object"), ("algorithm_flags.uses_train_groups", bool, "true/false"),
                 ("algorithm_flags.uses_val_groups", bool, "true/false"))


def _lookup(obj: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _config_problem(config: Any) -> str | None:
    """Why config.json cannot describe a run, or None."""
    if not isinstance(config, dict):
        return f"{CONFIG} is not a JSON object"
    for key, kind, name in _CONFIG_NEEDS:
        value = _lookup(config, key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{CONFIG} has no {key} ({name})"
    aux = config["spec"].get("aux") or []
    if not isinstance(aux, list) or not all(isinstance(o, str) for o in [*config["objectives"], *aux]):
        return f"{CONFIG} objectives and spec.aux must be lists of names"
    if not all(isinstance(c, dict) for c in config["components"].values()):
        return f"{CONFIG} components must map each kind to an object"
    return None


def _final_problem(final: Any) -> str | None:
    """Why final.json is not a finished run's record, or None (a protocol lacking a metric is fine)."""
    if not isinstance(final, dict):
        return f"{FINAL} is not a JSON object"
    if final.get("status") != "finished":
        return f"{FINAL} status is {json.dumps(final.get('status'))}, not \"finished\""
    if not isinstance(final.get("selections"), dict):
        return f"{FINAL} has no selections (an object)"
    bad = [p for p, e in final["selections"].items() if not isinstance(e, dict)]
    return f"{FINAL} selections.{bad[0]} is not an object" if bad else None


def _read(path: Path) -> tuple[Any, str | None]:
    """(parsed JSON, None) or (None, one-line reason); a half-written or damaged file is not an exception."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except json.JSONDecodeError as exc:
        return None, f"{path.name} is not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno})"
    except UnicodeDecodeError:
        return None, f"{path.name} is not UTF-8 text"
    except OSError as exc:
        return None, f"{path.name} could not be read ({exc.strerror or exc})"


def scan_runs(root: Path) -> tuple[list[RunRecord], list[SkippedRun]]:
    """Every run directory under `root` with a final.json (the done marker), in path order: the usable
    runs, and the damaged ones with the reason each was skipped. Directories without final.json
    (still running, or failed) are neither: they are not finished."""
    runs, skipped = [], []
    for final_path in sorted(Path(root).rglob(FINAL)):
        run_dir = final_path.parent
        final, problem = _read(final_path)
        problem = problem or _final_problem(final)
        config, config_error = (None, None) if problem else _read(run_dir / CONFIG)
        problem = problem or config_error or _config_problem(config)
        if problem:
            skipped.append(SkippedRun(run_dir, problem))
        else:
            runs.append(RunRecord(run_dir, config, final))
    return runs, skipped


def finished_runs(root: Path) -> list[RunRecord]:
    """The usable finished runs under `root` (see `scan_runs`; damaged ones are left out)."""
    return scan_runs(root)[0]
