"""Harness overhead: the runner's training step against a hand-written PyTorch loop, same model and data.

Both loops train an identical copy of the same model (backbone + linear head, ERM, the dataset's
optimizer settings) on the same in-memory data with the same batch size, in one process. Each loop
walks through whole shuffled epochs (a new permutation every epoch, the last batch smaller), so every
timed step sees a different batch. Rounds alternate harness / hand-written so that machine noise hits
both; the ratio of median step times is printed. `--profile` adds a cProfile of the harness rounds:
one extra, untimed round, reporting the share of its time spent in robustbench_mtl's own code
(outside torch and the backbone).

    python benchmarks/overhead.py --data toybirds --steps 40 --rounds 9 --threads 2
    python benchmarks/overhead.py --data synthetic --steps 300 --rounds 9 --threads 1 --profile
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import statistics
import time
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from robustbench_mtl.config import RunSpec, resolve
from robustbench_mtl.loaders import epoch_batches
from robustbench_mtl.runner import build, pick_device


def harness_batches(train: Any, batch_size: int) -> Iterator[Any]:
    """The runner's end-task batches, epoch after epoch."""
    epoch = 0
    while True:
        yield from epoch_batches(train, batch_size, seed=0, epoch=epoch)
        epoch += 1


def hand_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """What a researcher writes: a fresh permutation each epoch, slices of it."""
    gen = torch.Generator().manual_seed(1)
    while True:
        order = torch.randperm(len(x), generator=gen).to(x.device)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]


def timed(step: Callable[[], None], steps: int, cuda: bool) -> float:
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - t0


def hand_step(model: Any, opt: torch.optim.Optimizer, batches: Iterator[Any], autocast: Any) -> Callable[[], None]:
    def step() -> None:
        xb, yb = next(batches)
        with autocast:
            logits = model.heads["y"](model.backbone(xb.float().div(255) if xb.dtype == torch.uint8 else xb).pooled)
            loss = F.cross_entropy(logits.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def harness_share(profile: cProfile.Profile) -> float:
    """Fraction of the profiled time spent in robustbench_mtl's own functions (their own time, not callees)."""
    stats = pstats.Stats(profile)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    own = sum(v[2] for k, v in stats.stats.items() if "robustbench_mtl" in k[0]  # type: ignore[attr-defined]
              and "/backbones/" not in k[0])
    return own / total if total else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="toybirds")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per loop")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    ap.add_argument("--batch-size", type=int, default=0, help="0 = the dataset's default")
    ap.add_argument("--profile", action="store_true", help="also profile the harness rounds (cProfile)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = (f"train.batch_size={args.batch_size}",) if args.batch_size else ()
    # head_norm is a method choice, not harness machinery: off, so both loops compute the same thing.
    r = resolve(RunSpec(args.data, "erm", device=args.device, overrides=(*overrides, "model.head_norm=0")))
    device = pick_device(args.device)
    train = r.dataset.load()["train"].to(device)
    t, bs = r.hparams["train"], r.hparams["train"].batch_size
    algo = build(r, device, total_steps=10**6)
    model = copy.deepcopy(algo.model)
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(t.optimizer)
    opt = opt_cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay) if opt_cls else \
        torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    autocast = algo.autocast or torch.autocast(device.type, enabled=False)
    h_batches = harness_batches(train, bs)
    harness = lambda: algo.update(next(h_batches))  # noqa: E731
    hand = hand_step(model, opt, hand_batches(train.x, train.y["y"], bs), autocast)
    cuda = device.type == "cuda"

    timed(harness, 3, cuda), timed(hand, 3, cuda)  # warm-up both
    h, m = [], []
    for _ in range(args.rounds):
        h.append(timed(harness, args.steps, cuda))
        m.append(timed(hand, args.steps, cuda))
    hs, ms = statistics.median(h) / args.steps, statistics.median(m) / args.steps
    print(f"device={device} ({torch.cuda.get_device_name(device) if cuda else 'cpu'}), "
          f"threads={torch.get_num_threads()}, data={args.data}, backbone={r.backbone}, batch={bs}, "
          f"steps/round={args.steps}, rounds={args.rounds}, train examples={len(train)}")
    print(f"harness step: {1e3 * hs:.2f} ms   hand-written step: {1e3 * ms:.2f} ms   ratio: {hs / ms:.3f}")
    if args.profile:  # one extra round, after and apart from the timed ones
        profile = cProfile.Profile()
        profile.runcall(timed, harness, args.steps, cuda)
        print(f"profiled harness round: {100 * harness_share(profile):.1f}% of its time in robustbench_mtl's own "
              f"functions (their own time, backbones excluded)")


if __name__ == "__main__":
    main()
