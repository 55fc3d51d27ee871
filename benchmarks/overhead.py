"""Harness overhead: the runner's training step against a hand-written PyTorch loop, same model and data.

Both loops train an identical copy of the same model (backbone + linear head, ERM, the dataset's
optimizer settings) on the same in-memory data with the same batch size, in one process. Rounds
alternate harness / hand-written so that machine noise hits both; the ratio of medians is printed.

    python benchmarks/overhead.py --data toybirds --steps 30 --rounds 5
    python benchmarks/overhead.py --data synthetic --steps 200 --rounds 7
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from robustbench_mtl.config import RunSpec, resolve
from robustbench_mtl.loaders import epoch_batches
from robustbench_mtl.runner import build, pick_device


def harness_round(algo, train, batch_size: int, steps: int, epoch: int) -> float:
    batches = epoch_batches(train, batch_size, seed=0, epoch=epoch)
    sync = torch.cuda.synchronize if train.x.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        batch = next(batches, None) or next(epoch_batches(train, batch_size, 0, epoch + 1))
        algo.update(batch)
    sync()
    return time.perf_counter() - t0


def hand_round(model, opt, x, y, batch_size: int, steps: int, epoch: int, autocast) -> float:
    """The loop a researcher would write: permute, slice, forward, cross-entropy, backward, step."""
    gen = torch.Generator().manual_seed(epoch)
    order = torch.randperm(len(x), generator=gen).to(x.device)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        idx = order[(i * batch_size) % len(x):][:batch_size]
        with autocast:
            logits = model.heads["y"](model.backbone(x[idx]).pooled)
            loss = F.cross_entropy(logits.float(), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="toybirds")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per loop")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=0, help="0 = the dataset's default")
    args = ap.parse_args()

    overrides = (f"train.batch_size={args.batch_size}",) if args.batch_size else ()
    # head_norm is a method choice, not harness machinery: off, so both loops compute the same thing.
    r = resolve(RunSpec(args.data, "erm", device=args.device, overrides=(*overrides, "model.head_norm=0")))
    device = pick_device(args.device)
    train = r.dataset.load()["train"].to(device)
    bs = r.hparams["train"].batch_size
    algo = build(r, device, total_steps=10**6)
    model = copy.deepcopy(algo.model)
    t = r.hparams["train"]
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(t.optimizer)
    opt = opt_cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay) if opt_cls else \
        torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    autocast = algo.autocast or torch.autocast(device.type, enabled=False)
    x, y = train.x, train.y["y"]

    harness_round(algo, train, bs, 3, 0)  # warm-up both
    hand_round(model, opt, x, y, bs, 3, 0, autocast)
    h, m = [], []
    for k in range(args.rounds):
        h.append(harness_round(algo, train, bs, args.steps, k + 1))
        m.append(hand_round(model, opt, x, y, bs, args.steps, k + 1, autocast))
    hs, ms = statistics.median(h) / args.steps, statistics.median(m) / args.steps
    print(f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"threads={torch.get_num_threads()}, data={args.data}, backbone={r.backbone}, batch={bs}, "
          f"steps/round={args.steps}, rounds={args.rounds}")
    print(f"harness step: {1e3 * hs:.2f} ms   hand-written step: {1e3 * ms:.2f} ms   ratio: {hs / ms:.3f}")


if __name__ == "__main__":
    main()
