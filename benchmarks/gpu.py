"""GPU throughput: vit_b16 mt_l1 + mim in the harness (store, on-device crops, bf16) against the released pipeline.

Both sides train the same model (ViT-B/16 at --side px with the MIM decoder and the L1 penalty, the
paper's mt_l1 + mim step: one end-task batch and one auxiliary batch, one summed loss, one step):
- harness: the images come from the on-disk store (decoded once), batches are gathered with prefetching
  and pinned non-blocking copies, cropped on the GPU, and the step runs under bf16 autocast;
- released: a replica of the released pipeline, fp32, every image decoded from JPEG with PIL and
  transformed with torchvision on the CPU each step (a DataLoader with num_workers 0), then copied.
It prints images/s of each (end-task images), their ratio, and the harness's model FLOP utilisation:
FLOPs of one step (torch's FlopCounterMode: matmuls and convolutions, forward and backward) x steps/s
over the device's peak bf16 FLOP/s (--peak-tflops, or a table of known devices).

    python benchmarks/gpu.py --side 224 --batch 32 --steps 20
    python benchmarks/gpu.py --tiny --steps 2 --allow-cpu      # a smoke test of the script on a CPU
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(name: str, given: float) -> float | None:
    return given or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def timed_rate(step: Callable[[int], None], steps: int, batch: int, device: torch.device) -> float:
    """Examples/s of `step(1) .. step(steps)`, timed between device synchronisations."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for k in range(1, steps + 1):
        step(k)
    sync()
    return steps * batch / (time.perf_counter() - t0)


def print_utilisation(name: str, flops: float, rate: float, batch: int, given_peak: float) -> None:
    """The harness's achieved model FLOP/s and its share of the device's peak bf16 FLOP/s."""
    peak = peak_tflops(name, given_peak)
    achieved = flops * rate / batch / 1e12
    util = f"{100 * achieved / peak:.1f}% of {peak:.0f} TFLOP/s" if peak else "peak unknown (pass --peak-tflops)"
    print(f"harness model FLOPs: {flops / 1e9:.1f} GFLOP/step, {achieved:.1f} TFLOP/s, utilisation {util}")


def build(side: int, tiny: bool, device: torch.device, tmp: Path):
    """The mt_l1 + mim algorithm on vit_b16 (random weights: throughput does not depend on them)."""
    from robustbench_mtl.config import ModelHParams, TrainHParams
    from robustbench_mtl.data.base import DataInfo
    from robustbench_mtl.hparams import build as build_hp
    from robustbench_mtl.registry import ALGORITHMS, BACKBONES, OBJECTIVES
    from robustbench_mtl.trainer import assemble

    model = "google/vit-base-patch16-224-in21k"
    if tiny:  # a small local ViT so the script can be checked anywhere, offline
        from transformers import ViTConfig

        ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=16,
                  image_size=side).save_pretrained(tmp / "vit")
        model = str(tmp / "vit")
    info = DataInfo("bench", "image", (3, side, side), {"y": 2}, ("g0", "g1", "g2", "g3"), (1, 1, 1, 1))
    classes = {"backbone": BACKBONES.get("vit_b16"), "algorithm": ALGORITHMS.get("mt_l1"),
               "objective:mim": OBJECTIVES.get("mim"), "objective:l1": OBJECTIVES.get("l1")}
    hparams = {"backbone": build_hp(classes["backbone"].HParams, "backbone", [{"model": model, "pretrained": "false"}]),
               "algorithm": classes["algorithm"].HParams(), "model": ModelHParams(),
               "train": TrainHParams(optimizer="sgd", lr=1e-3), "mim": classes["objective:mim"].HParams(),
               "l1": classes["objective:l1"].HParams()}
    return assemble(classes, hparams, ["mim", "l1"], info, 0, 10**6, device)


def harness_rate(algo, paths: list[str], side: int, batch: int, steps: int, device: torch.device) -> tuple[float, float]:
    """(images/s, FLOPs of one step) training from the store with on-device crops under bf16."""
    from torch.utils.flop_counter import FlopCounterMode

    from robustbench_mtl.data import _store
    from robustbench_mtl.data._augment import image_transforms
    from robustbench_mtl.data._images import store_images, store_side
    from robustbench_mtl.loaders import AuxStream, epoch_batches

    arr = store_images(f"gpu-bench-{side}", paths, store_side(side, 0))
    y = torch.zeros(len(paths), dtype=torch.long)
    train_tf, eval_tf = image_transforms("paper", side)
    split = _store.MappedSplit(_store.as_tensor(arr), {"y": y}, y, y.clone(), train_tf, eval_tf,
                               store=arr).to(device)
    aux = AuxStream(split, batch, 0)
    if device.type == "cuda":
        algo.autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    batches = (b for epoch in range(10**6) for b in epoch_batches(split, batch, 0, epoch))
    algo.update(next(batches), aux.next())  # warm-up
    with FlopCounterMode(display=False) as counter:
        algo.update(next(batches), aux.next())
    return timed_rate(lambda k: algo.update(next(batches), aux.next()), steps, batch, device), \
        float(counter.get_total_flops())


def released_rate(algo, paths: list[str], side: int, batch: int, steps: int, device: torch.device) -> float:
    """Images/s of the released pipeline's replica: fp32, PIL + torchvision per image on the CPU each step."""
    from PIL import Image
    from torchvision import transforms

    from robustbench_mtl.types import Batch

    end = transforms.Compose([transforms.RandomResizedCrop(side, scale=(0.05, 1.0)), transforms.ToTensor()])
    view = transforms.Compose([transforms.RandomResizedCrop(side, scale=(0.67, 1.0)), transforms.RandomHorizontalFlip(),
                               transforms.ToTensor()])
    algo.autocast = None

    def load(tf, idx: list[int]) -> torch.Tensor:
        out = []
        for i in idx:
            with Image.open(paths[i]) as im:
                out.append(tf(im.convert("RGB")))
        return torch.stack(out).to(device)

    def step(k: int) -> None:
        idx = [(k * batch + j) % len(paths) for j in range(batch)]
        ids = torch.tensor(idx, device=device)
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        # The harness's MIM crops its own view again: the replica hands it the decoded aux images as they are.
        algo.update(Batch(load(end, idx), {"y": zeros}, zeros, zeros, ids), Batch(load(view, idx), {}, zeros, zeros, ids))

    step(0)  # warm-up
    return timed_rate(step, steps, batch, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak bf16 TFLOP/s; 0 = known table")
    ap.add_argument("--tiny", action="store_true", help="a small ViT instead of ViT-B/16 (checks the script)")
    ap.add_argument("--allow-cpu", action="store_true", help="run without CUDA (no meaningful figures)")
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("gpu.py measures a CUDA device and torch sees none (use --allow-cpu to check the script)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from images import write_jpegs  # benchmarks/images.py, beside this script: the same JPEGs

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("ROBUSTBENCH_MTL_CACHE", str(Path(tmp) / "cache"))
        paths = write_jpegs(Path(tmp), args.images)
        h_rate, flops = harness_rate(build(args.side, args.tiny, device, Path(tmp)), paths, args.side, args.batch,
                                     args.steps, device)
        r_rate = released_rate(build(args.side, args.tiny, device, Path(tmp)), paths, args.side, args.batch,
                               args.steps, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={name}, model={'tiny ViT' if args.tiny else 'ViT-B/16'}, side={args.side}, batch={args.batch}, "
          f"steps={args.steps}")
    print(f"harness (store, GPU crops, bf16): {h_rate:.1f} images/s   released replica (PIL per step, fp32): "
          f"{r_rate:.1f} images/s   ratio: {h_rate / r_rate:.2f}")
    print_utilisation(name, flops, h_rate, args.batch, args.peak_tflops)


if __name__ == "__main__":
    main()
