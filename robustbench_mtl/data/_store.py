"""Decoded images on disk: one uint8 memory-mapped array per dataset, size and source fingerprint."""
from __future__ import annotations

import json
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


def build_array(key: str, shape: tuple[int, ...], dtype: Any, fill: Callable[[np.ndarray], None]) -> np.ndarray:
    """The store `key`: opened if one of this shape and dtype exists, else written by `fill(out)` into a new
    memory-mapped .npy, atomically (a crash or an error leaves no half-written store), and opened."""
    path = store_path(key)
    if path.exists():
        with _tolerant():
            arr = open_store(path)
            if arr.shape == shape and arr.dtype == np.dtype(dtype):
                return arr
        path.unlink(missing_ok=True)  # a store of another shape under this key is stale: rebuild
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        fill(out)
        out.flush()
        del out
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _write_sidecar(path, key, shape)
    return open_store(path)


def build_store(key: str, paths: Sequence[Any], side: int, decode: Decode, channels: int = 3,
                workers: int | None = None) -> np.ndarray:
    """Decode every image once into the image store `key` (uint8 [N, C, side, side], rows follow `paths`,
    whatever `decode` takes: file names, row indices). Decoding runs in threads (PIL releases the GIL) and
    writes straight into the memory map, so host memory holds a few images at a time."""
    def fill(out: np.ndarray) -> None:
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            for i, arr in enumerate(pool.map(lambda p: decode(p, side), paths)):
                out[i] = arr

    return build_array(key, (len(paths), channels, side, side), np.uint8, fill)


def _write_sidecar(path: Path, key: str, shape: tuple[int, ...]) -> None:
    """A human-readable note beside the store (what it is; the .npy header is authoritative)."""
    with _tolerant():
        path.with_suffix(".json").write_text(json.dumps({"key": key, "shape": list(shape)}) + "\n")


class _tolerant:
    """Swallow OS and format errors: a damaged or unreadable store is rebuilt, never trusted."""

    def __enter__(self) -> None: ...

    def __exit__(self, kind: type | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, (OSError, ValueError))


def read_rows(arr: np.ndarray, idx: Sequence[int]) -> np.ndarray:
    """The rows `idx` of the store `arr`, read with one positioned read each (os.preadv straight into the
    result), not through the memory map: pages read that way stay in the OS page cache but never enter the
    process's resident set, so host memory stays flat however much of the store an epoch reads. (Through
    the map, the kernel maps whole page-cache folios around each row: RSS grows towards the file's size.)"""
    out = np.empty((len(idx), *arr.shape[1:]), dtype=arr.dtype)
    row = out[0].nbytes if len(idx) else 0
    if not hasattr(os, "preadv") or not isinstance(arr, np.memmap) or arr.filename is None:
        return np.asarray(arr[np.asarray(idx)]) if len(idx) else out  # no preadv (Windows): the map
    view = memoryview(out).cast("B")
    fd = os.open(arr.filename, os.O_RDONLY)
    try:
        for k, i in enumerate(idx):
            if os.preadv(fd, [view[k * row:(k + 1) * row]], arr.offset + int(i) * row) != row:
                raise OSError(f"store {arr.filename} is shorter than its header says (row {int(i)})")
    finally:
        os.close(fd)
    return out


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing the store's memory (no copy)."""
    return torch.from_numpy(arr)


@dataclass
class MappedSplit(TensorSplit):
    """A split whose images stay in the on-disk store: `x` is a CPU tensor over the memory map (for its
    shape and dtype), and `gather` reads only the rows of each batch, with positioned reads
    (`read_rows`), so host memory stays flat as the dataset grows; on CUDA the rows go through pinned
    memory without blocking. `to(device)` moves the labels and ids and remembers the device. Loaders
    gather the next batches in a background thread (`prefetch`)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    store: np.ndarray | None = field(default=None, repr=False, compare=False)
    prefetch: bool = True

    def gather(self, idx: Tensor | slice) -> Tensor:
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        rows = torch.from_numpy(read_rows(self.store, idx.cpu().tolist())) if self.store is not None else \
            self.x[idx.cpu()]
        if self.device.type == "cuda":
            return rows.pin_memory().to(self.device, non_blocking=True)
        return rows.to(self.device)

    def to(self, device: torch.device | str) -> "MappedSplit":
        return replace(self, y={k: v.to(device) for k, v in self.y.items()}, g=self.g.to(device),
                       e=self.e.to(device), device=torch.device(device),
                       groups=None if self.groups is None else self.groups.to(device))

    def subset(self, idx: Tensor) -> "TensorSplit":
        """A subset is small (a half of val, say): it is read into memory on the split's device."""
        idx = idx.to(self.g.device)
        return TensorSplit(self.gather(idx), {k: v[idx] for k, v in self.y.items()}, self.g[idx], self.e[idx],
                           self.train_transform, self.eval_transform,
                           None if self.groups is None else self.groups[idx])
