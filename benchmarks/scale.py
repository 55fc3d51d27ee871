"""Host memory as an image dataset grows: peak RSS and step time training from the on-disk store.

For each size N (default 20k and 200k images at 64 px), one child process builds a store of N generated
images (uint8, 3 x stored side x stored side; no JPEG: this measures the training data path, not
decoding), and another a small model for one full epoch through the harness's loader (`MappedSplit`, prefetching,
on-device resize) and prints its peak resident set size (getrusage, which counts the store's pages the
process has touched) and its median step time. Flat memory means the 10x larger set costs about the
same RSS; the last line prints the ratios.

    python benchmarks/scale.py --sizes 20000 200000 --side 64 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def store_for(n: int, side: int) -> np.ndarray:
    """The store of N generated images (built once; a second call opens it)."""
    from robustbench_mtl.data import _store
    from robustbench_mtl.data._images import store_side

    rng = np.random.default_rng(0)
    stored = store_side(side, 0)
    return _store.build_store(f"scale-{n}-{stored}", range(n), stored,
                              lambda i, s: rng.integers(0, 256, (3, s, s), dtype=np.uint8), workers=1)


def child(n: int, side: int, batch: int, threads: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from robustbench_mtl.data import _store
    from robustbench_mtl.data._augment import image_transforms
    from robustbench_mtl.loaders import epoch_batches

    torch.set_num_threads(threads)
    arr = store_for(n, side)  # built by an earlier process: opening it touches no page
    y = torch.from_numpy(np.random.default_rng(1).integers(0, 2, n))
    train_tf, eval_tf = image_transforms("paper", side)
    split = _store.MappedSplit(_store.as_tensor(arr), {"y": y}, y * 2, torch.zeros(n, dtype=torch.long), train_tf,
                               eval_tf, store=arr)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 8, stride=8), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, side, side))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    steps = []
    for b in epoch_batches(split, batch, seed=0, epoch=0):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(b.x), b.y["y"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"n": n, "store_mb": arr.nbytes / 2**20, "peak_rss_mb": peak / 1024, "rss_before_train_mb": rss_before / 1024,
            "median_step_ms": 1e3 * statistics.median(steps), "steps": len(steps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 200000])
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--build", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:  # building writes every page: done in its own process, so it is not in the peak measured
        store_for(args.build, args.side)
        return
    if args.child:
        print(json.dumps(child(args.child, args.side, args.batch, args.threads)))
        return
    results = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "ROBUSTBENCH_MTL_CACHE": cache}
        for n in args.sizes:  # one process per size: each peak RSS is its own
            subprocess.run([sys.executable, __file__, "--build", str(n), "--side", str(args.side)], env=env, check=True)
            out = subprocess.run([sys.executable, __file__, "--child", str(n), "--side", str(args.side), "--batch",
                                  str(args.batch), "--threads", str(args.threads)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            r = results[-1]
            print(f"N={r['n']}: store {r['store_mb']:.0f} MB, peak RSS {r['peak_rss_mb']:.0f} MB, "
                  f"median step {r['median_step_ms']:.2f} ms over {r['steps']} steps (one epoch)")
    a, b = results[0], results[-1]
    print(f"x{b['n'] / a['n']:.0f} images: peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.3f}, "
          f"median step x{b['median_step_ms'] / a['median_step_ms']:.3f} (side {args.side}, batch {args.batch}, "
          f"threads {args.threads})")


if __name__ == "__main__":
    main()
