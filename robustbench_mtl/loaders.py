"""Minibatch streams over splits (in memory or on disk): the end-task loader and the independent auxiliary stream."""
from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator

import torch
from torch import Tensor

from .data.base import TensorSplit
from .types import Batch


def stream_seed(*parts: object) -> int:
    """A stable 63-bit seed from (run seed, stream name, epoch): independent streams, no shared state."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def epoch_order(n: int, seed: int, stream: str, epoch: int, weights: Tensor | None = None,
                repeats: Tensor | None = None) -> Tensor:
    """Example order for one epoch: a permutation of the n examples; n weighted draws with replacement;
    or a permutation of the upsampled dataset where example i appears repeats[i] times."""
    gen = torch.Generator().manual_seed(stream_seed(seed, stream, epoch))
    if weights is not None and repeats is not None:
        raise ValueError("an epoch is either weighted draws or an upsampled pass, not both")
    if repeats is not None:
        copies = torch.repeat_interleave(torch.arange(n), repeats.long().cpu())
        return copies[torch.randperm(len(copies), generator=gen)]
    if weights is None:
        return torch.randperm(n, generator=gen)
    return torch.multinomial(weights.double().cpu(), n, replacement=True, generator=gen)


def epoch_length(n: int, repeats: Tensor | None = None) -> int:
    """Examples in one epoch: n, or the size of the upsampled dataset."""
    return n if repeats is None else int(repeats.long().sum())


def epoch_batches(split: TensorSplit, batch_size: int, seed: int, epoch: int, weights: Tensor | None = None,
                  repeats: Tensor | None = None) -> Iterator[Batch]:
    """The end-task batches of one epoch (the last one may be smaller, as a DataLoader's).

    For splits read from disk (`prefetch` true) the next batches' rows are gathered in a background
    thread while the current one trains; transforms (which draw random numbers) stay in this thread,
    so results do not depend on thread timing.
    """
    order = epoch_order(len(split), seed, "train", epoch, weights, repeats).to(split.g.device)
    chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if not getattr(split, "prefetch", False):
        for idx in chunks:
            yield split.batch(idx)
        return
    for idx, rows in prefetched(chunks, split.gather):
        yield split.batch(idx, rows)


def prefetched(items: list[Tensor], load: Callable[[Tensor], Tensor], depth: int = 2) -> Iterator[tuple[Tensor, Tensor]]:
    """(item, load(item)) in order, with up to `depth` loads running ahead in one worker thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque[Future[Tensor]] = deque()
        for i, item in enumerate(items):
            while len(pending) <= depth and i + len(pending) < len(items):
                pending.append(pool.submit(load, items[i + len(pending)]))
            yield item, pending.popleft().result()


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


class AuxStream:
    """Input-only batches from an independently shuffled pass over the training inputs.

    Re-shuffled when exhausted, as the released code re-creates its auxiliary iterator
    (docs/methods.md#batching). Labels and groups are withheld: auxiliary tasks are self-supervised.
    `state()` / `load_state()` let a resumed run continue the stream exactly.
    """

    def __init__(self, split: TensorSplit, batch_size: int, seed: int) -> None:
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.epoch, self.pos = 0, 0
        self._order: Tensor | None = None

    def _ensure_order(self) -> Tensor:
        if self._order is None:
            self._order = epoch_order(len(self.split), self.seed, "aux", self.epoch).to(self.split.g.device)
        return self._order

    def next(self) -> Batch:
        if self.pos >= len(self.split):
            self.epoch, self.pos, self._order = self.epoch + 1, 0, None
        idx = self._ensure_order()[self.pos:self.pos + self.batch_size]
        self.pos += len(idx)
        # The stored inputs, untransformed: each auxiliary task takes its own views of them (the released
        # code's aux loader has its own transforms, applied to the image, not to the end-task view).
        hidden = torch.full_like(self.split.g[idx], -1)
        return Batch(self.split.raw(idx), {}, hidden, hidden.clone(), idx)

    def state(self) -> list[int]:
        return [self.epoch, self.pos]

    def load_state(self, state: list[int]) -> None:
        self.epoch, self.pos = int(state[0]), int(state[1])
        self._order = None
