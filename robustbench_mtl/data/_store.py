"""Decoded images on disk: one uint8 memory-mapped array per dataset, size and source fingerprint."""
from __future__ import annotations

import json
import mmap
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .base import TensorSplit, cache_dir

Decode = Callable[[Any, int], np.ndarray]  # (path, side) -> uint8 [C, side, side]


def store_path(key: str) -> Path:
    """Where the store for `key` lives: <cache>/stores/<key>.npy (a .npy header, then the raw rows)."""
    return cache_dir() / "stores" / f"{key}.npy"


def open_store(path: Path) -> np.ndarray:
    """The store as a read-only (copy-on-write) memory map: pages are read from disk when touched."""
    return np.load(path, mmap_mode="c")


def build_store(key: str, paths: Sequence[Any], side: int, decode: Decode, channels: int = 3,
                workers: int | None = None) -> np.ndarray:
    """Decode every image once into a new store (atomically: a crash leaves no half-written store).

    Rows follow `paths` (whatever `decode` takes: file names, row indices). Decoding runs in threads (PIL releases the GIL) and writes straight into the
    memory map, so host memory holds a few images at a time whatever the dataset size.
    """
    path = store_path(key)
    if path.exists():
        with _tolerant():
            arr = open_store(path)
            if arr.shape == (len(paths), channels, side, side) and arr.dtype == np.uint8:
                return arr
        path.unlink(missing_ok=True)  # a store of another shape under this key is stale: rebuild
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), channels, side, side))
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            for i, arr in enumerate(pool.map(lambda p: decode(p, side), paths)):
                out[i] = arr
        out.flush()
        del out
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _write_sidecar(path, key, len(paths), side)
    return open_store(path)


def _write_sidecar(path: Path, key: str, n: int, side: int) -> None:
    """A human-readable note beside the store (what it is; the .npy header is authoritative)."""
    with _tolerant():
        path.with_suffix(".json").write_text(json.dumps({"key": key, "rows": n, "side": side}) + "\n")


class _tolerant:
    """Swallow OS and format errors: a damaged or unreadable store is rebuilt, never trusted."""

    def __enter__(self) -> None: ...

    def __exit__(self, kind: type | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, (OSError, ValueError))


def release_pages(arr: np.ndarray) -> None:
    """Drop the pages of `arr` that this process has touched from its resident set. They stay in the
    OS page cache (the file is unchanged), so the next read is cheap; without this, a pass over the store
    would count the whole file in the process's RSS."""
    base = arr
    while getattr(base, "base", None) is not None and not isinstance(base, mmap.mmap):
        base = base.base
    if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        with _tolerant():
            base.madvise(mmap.MADV_DONTNEED)


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing the store's memory (no copy)."""
    return torch.from_numpy(arr)


@dataclass
class MappedSplit(TensorSplit):
    """A split whose images stay in the on-disk store: `x` is a CPU tensor over the memory map and only
    the rows of each batch are read. `to(device)` moves the labels and ids and remembers the device;
    `gather` copies a batch's rows through pinned memory without blocking (CUDA), and drops touched
    pages from the process's resident set whenever `release_bytes` have been read since the last time,
    so host memory stays flat as the dataset grows. Loaders gather the next batches in a background
    thread (`prefetch`)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    store: np.ndarray | None = field(default=None, repr=False, compare=False)
    release_bytes: int = 64 * 2**20
    prefetch: bool = True

    def __post_init__(self) -> None:
        self._read = 0

    def gather(self, idx: Tensor | slice) -> Tensor:
        rows = self.x[idx.cpu() if isinstance(idx, Tensor) else idx]
        self._read += rows.numel() * rows.element_size()
        if self.store is not None and self._read >= self.release_bytes:
            self._read = 0
            release_pages(self.store)
        if self.device.type == "cuda":
            return rows.pin_memory().to(self.device, non_blocking=True)
        return rows.to(self.device)

    def to(self, device: torch.device | str) -> "MappedSplit":
        return replace(self, y={k: v.to(device) for k, v in self.y.items()}, g=self.g.to(device),
                       e=self.e.to(device), device=torch.device(device))

    def subset(self, idx: Tensor) -> "TensorSplit":
        """A subset is small (a half of val, say): it is read into memory on the split's device."""
        idx = idx.to(self.g.device)
        return TensorSplit(self.gather(idx), {k: v[idx] for k, v in self.y.items()}, self.g[idx], self.e[idx],
                           self.train_transform, self.eval_transform)
