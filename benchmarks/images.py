"""Training-input throughput: the on-disk store with on-device augmentation against decoding JPEGs each epoch.

Both pipelines turn the same JPEG files into the same kind of training batch: RandomResizedCrop to
side x side with scale (0.05, 1), no flip (the paper's end-task transform), float in [0, 1].
- harness: the images are decoded once into the store (`data/_images.py`, timed separately as the
  one-off cost), then each epoch gathers batches from the memory map (`MappedSplit`, prefetching) and
  crops them as one batched op (`data/_augment.py`);
- released: the released code's pipeline, PIL decode of every image every epoch, torchvision's
  RandomResizedCrop + ToTensor per image, batches stacked (a DataLoader with num_workers 0).
Rounds alternate the two; the ratio of median images/s is printed.

    python benchmarks/images.py --n 2000 --side 64 --rounds 3 --threads 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_jpegs(folder: Path, n: int, seed: int = 0) -> list[str]:
    """`n` JPEGs of varied sizes around Waterbirds' (a smooth random field, so they compress like photos)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(220, 360)), int(rng.integers(220, 360))
        small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
        paths.append(str(folder / f"{i:06d}.jpg"))
        img.save(paths[-1], quality=90)
    return paths


def released_epoch(paths: list[str], side: int, batch: int) -> int:
    from PIL import Image
    from torchvision import transforms

    tf = transforms.Compose([transforms.RandomResizedCrop(side, scale=(0.05, 1.0)), transforms.ToTensor()])
    order = torch.randperm(len(paths)).tolist()
    seen = 0
    for start in range(0, len(order), batch):
        xs = []
        for i in order[start:start + batch]:
            with Image.open(paths[i]) as im:
                xs.append(tf(im.convert("RGB")))
        seen += len(torch.stack(xs))
    return seen


def harness_epoch(split, batch: int, epoch: int) -> int:
    from robustbench_mtl.loaders import epoch_batches

    return sum(len(b.x) for b in epoch_batches(split, batch, seed=0, epoch=epoch))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="images")
    ap.add_argument("--side", type=int, default=64, help="model input side (the store keeps 8/7 of it)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from robustbench_mtl.data import _store
    from robustbench_mtl.data._augment import image_transforms
    from robustbench_mtl.data._images import store_images, store_side

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ROBUSTBENCH_MTL_CACHE"] = str(Path(tmp) / "cache")
        paths = write_jpegs(Path(tmp), args.n)
        t0 = time.perf_counter()
        arr = store_images("bench-images", paths, store_side(args.side, 0))
        build_s = time.perf_counter() - t0
        y = torch.zeros(args.n, dtype=torch.long)
        train_tf, eval_tf = image_transforms("paper", args.side)
        split = _store.MappedSplit(_store.as_tensor(arr), {"y": y}, y, y.clone(), train_tf, eval_tf, store=arr)
        harness_epoch(split, args.batch, 0), released_epoch(paths[:200], args.side, args.batch)  # warm-up
        h, r = [], []
        for k in range(args.rounds):
            t0 = time.perf_counter()
            n_h = harness_epoch(split, args.batch, k + 1)
            h.append(n_h / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            n_r = released_epoch(paths, args.side, args.batch)
            r.append(n_r / (time.perf_counter() - t0))
    hs, rs = statistics.median(h), statistics.median(r)
    print(f"images={args.n}, side={args.side} (stored {store_side(args.side, 0)}), batch={args.batch}, "
          f"threads={torch.get_num_threads()}, rounds={args.rounds}")
    print(f"one-off store build: {build_s:.1f} s ({args.n / build_s:.0f} images/s, decoding every JPEG once)")
    print(f"harness (store + on-device crop): {hs:.0f} images/s   released (PIL decode + crop per image): "
          f"{rs:.0f} images/s   ratio: {hs / rs:.2f}")


if __name__ == "__main__":
    main()
