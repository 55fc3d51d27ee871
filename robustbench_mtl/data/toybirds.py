"""Toybirds: a small Waterbirds-like image task (handwritten digits on land or water backgrounds)."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..hparams import hp
from ..registry import DATASETS
from .base import WATERBIRDS_GROUPS, Dataset, TensorSplit, group_ids

SIDE = 32  # canvas side in pixels
# Exact per-group counts (landbird_land, landbird_water, waterbird_land, waterbird_water).
# Train copies Waterbirds' train split; val/test are balanced within each class and keep
# Waterbirds' ~3:1 landbird:waterbird ratio, scaled down so that evaluation stays cheap.
GROUP_COUNTS = {"train": (3498, 184, 56, 1057), "val": (300, 300, 100, 100), "test": (600, 600, 200, 200)}
POOL_FRACTIONS = {"train": 0.6, "val": 0.2}  # test gets the rest of each digit class
_SPLIT_SALT = {"train": 1, "val": 2, "test": 3}  # one generator per split: changing one never shifts another

# (land colour A, land colour B, water colour A, water colour B) per palette. "colour": green/brown land and
# blue water, so the background is readable from the mean colour and a network learns it before anything
# else. "texture": all four share nearly one mean colour, so only the texture (blotches vs horizontal
# stripes) tells land from water; from scratch a network then learns the digit first and the background
# later, the dynamics that make early stopping and robust methods matter.
PALETTES = {
    "colour": ((0.22, 0.42, 0.14), (0.45, 0.32, 0.16), (0.08, 0.22, 0.52), (0.30, 0.55, 0.82)),
    "texture": ((0.25, 0.38, 0.40), (0.35, 0.42, 0.30), (0.22, 0.36, 0.42), (0.38, 0.44, 0.28)),
}


@dataclass(frozen=True)
class ToyBirdsHParams:
    seed: int = hp(0, help="seed of the data draw (fixed splits; the run seed does not change the data)")
    digit_size: int = hp(24, ge=1, le=SIDE, help="side in pixels of the upscaled 8x8 digit (the foreground 'bird')")
    max_shift: int = hp(2, ge=0, help="largest digit offset in pixels from the centre (clipped to stay inside)")
    palette: Literal["texture", "colour"] = hp("texture", help="texture: land and water differ only in texture "
                                              "(default); colour: they also differ in colour, an easier cue")
    noise: float = hp(0.04, ge=0, help="std of the fine per-pixel noise added to every background")


@dataclass(frozen=True)
class SplitPlan:
    """What one split draws before rendering: labels, places and the digit image behind each example."""

    y: Tensor
    place: Tensor
    digit: Tensor  # indices into sklearn's load_digits()


@functools.lru_cache(maxsize=1)  # read once per process; callers never modify the tensors
def _load_digits() -> tuple[Tensor, Tensor]:
    """The 1797 sklearn digits as [N, 8, 8] intensities in [0, 1] and their digit classes."""
    from sklearn.datasets import load_digits  # ships with sklearn, no download

    d = load_digits()
    return torch.from_numpy(d.images).float() / 16.0, torch.from_numpy(d.target).long()


def _coords(n: int) -> tuple[Tensor, Tensor]:
    """Row and column coordinates in [0, 1), shaped to broadcast against [n, 1, SIDE, SIDE]."""
    r = torch.arange(SIDE, dtype=torch.float32) / SIDE
    return r.view(1, 1, SIDE, 1).expand(n, 1, SIDE, SIDE), r.view(1, 1, 1, SIDE).expand(n, 1, SIDE, SIDE)


def _mix(a: tuple[float, ...], b: tuple[float, ...], w: Tensor) -> Tensor:
    """Per-pixel blend of two RGB colours by weight w [n, 1, H, W] -> [n, 3, H, W]."""
    ca, cb = torch.tensor(a).view(1, 3, 1, 1), torch.tensor(b).view(1, 3, 1, 1)
    return ca * (1 - w) + cb * w


def land(n: int, gen: torch.Generator, colours: tuple[tuple[float, ...], ...]) -> Tensor:
    """Green/brown low-frequency blotches: coarse noise upsampled, so the cue is texture and colour."""
    coarse = torch.rand(n, 1, 5, 5, generator=gen)
    w = F.interpolate(coarse, size=(SIDE, SIDE), mode="bicubic", align_corners=False)
    w = ((w - 0.5) * 1.8 + 0.5).clamp(0, 1)  # more contrast so blotches read as patches, not haze
    shade = 0.85 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen)  # lighting differs per image
    return _mix(colours[0], colours[1], w) * shade


def water(n: int, gen: torch.Generator, colours: tuple[tuple[float, ...], ...]) -> Tensor:
    """Blue horizontal wave stripes: a sinusoid along y with random frequency, phase and slight wobble."""
    rows, cols = _coords(n)
    freq = 2.0 + 4.0 * torch.rand(n, 1, 1, 1, generator=gen)  # cycles per image height
    phase = 2 * math.pi * torch.rand(n, 1, 1, 1, generator=gen)
    wobble = 0.6 * torch.rand(n, 1, 1, 1, generator=gen) * torch.sin(2 * math.pi * 1.5 * cols + phase)
    w = 0.5 + 0.35 * torch.sin(2 * math.pi * freq * rows + phase + wobble)
    shade = 0.85 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen)
    return _mix(colours[2], colours[3], w) * shade


def render(digits: Tensor, place: Tensor, gen: torch.Generator, h: ToyBirdsHParams) -> Tensor:
    """Composite digits [n, 8, 8] onto land (place 0) or water (place 1) backgrounds -> [n, 3, 32, 32]."""
    n, s = len(digits), h.digit_size
    is_water = place.view(n, 1, 1, 1).bool()
    # Both backgrounds are drawn for every image so the generator stream does not depend on place.
    colours = PALETTES[h.palette]
    bg = torch.where(is_water, water(n, gen, colours), land(n, gen, colours))
    bg = bg + h.noise * torch.randn(n, 3, SIDE, SIDE, generator=gen)
    alpha_small = F.interpolate(digits.unsqueeze(1), size=(s, s), mode="bilinear", align_corners=False)
    alpha = torch.zeros(n, 1, SIDE, SIDE)
    centre, reach = (SIDE - s) // 2, min(h.max_shift, (SIDE - s) // 2)
    offs = centre + torch.randint(-reach, reach + 1, (n, 2), generator=gen)
    for i, (r, c) in enumerate(offs.tolist()):  # n cheap slice copies; the pixels stay vectorized
        alpha[i, :, r:r + s, c:c + s] = alpha_small[i]
    # The same whitish stroke for both classes: only the digit's shape carries the label.
    bright = 0.8 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen)
    tint = 0.05 * (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1)
    fg = (0.95 * bright + tint).clamp(0, 1)
    return (bg * (1 - alpha) + fg * alpha).clamp(0, 1).float().contiguous()


@DATASETS.register("toybirds")
class ToyBirds(Dataset):
    """Waterbirds stand-in: 32x32 handwritten digits (y = digit >= 5) on land or water backgrounds.

    Reference: Waterbirds (Sagawa et al., ICLR 2020), whose train group counts 3498/184/56/1057 it
    copies exactly; this is a cheap embedded stand-in built from sklearn's digits, NOT Waterbirds.
    Groups are label x background; val/test are balanced over backgrounds within each class and
    draw their digits from handwriting unseen in train (disjoint digit pools).
    Details: docs/methods.md#toybirds.
    """

    HParams = ToyBirdsHParams
    tasks = {"y": 2}
    group_names = WATERBIRDS_GROUPS
    modality = "image"
    default_backbone = "vit_tiny"
    version = "2"
    # CPU-sized defaults: the Quickstart's mt_l1 + simclr run takes about 2 minutes on 2 cores. The paper's
    # L1 weight (e^-1, for a pretrained ViT-B) stops a from-scratch tiny ViT from learning the end task at
    # all here, so the L1 default is smaller; patch 8 gives 16 tokens a 32x32 image.
    defaults = {
        "train.epochs": 10, "train.batch_size": 64, "train.lr": 1e-3, "train.optimizer": "adamw",
        "train.weight_decay": 0.05, "train.patience": 10, "backbone.patch_size": 8, "l1.weight": 0.05,
    }

    def _gen(self, split: str, stage: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.hparams.seed * 1000 + _SPLIT_SALT[split] * 10 + stage)

    def digit_pools(self) -> dict[str, Tensor]:
        """Disjoint indices into load_digits() per split, stratified by digit (60/20/20, fixed by seed)."""
        _, target = _load_digits()
        gen = self._gen("train", 0)
        pools: dict[str, list[Tensor]] = {"train": [], "val": [], "test": []}
        for d in range(10):
            idx = torch.nonzero(target == d).flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)]
            a = round(POOL_FRACTIONS["train"] * len(idx))
            b = a + round(POOL_FRACTIONS["val"] * len(idx))
            for split, part in (("train", idx[:a]), ("val", idx[a:b]), ("test", idx[b:])):
                pools[split].append(part)
        return {k: torch.cat(v).sort().values for k, v in pools.items()}

    def plan(self, split: str) -> SplitPlan:
        """Labels, places and digit indices of `split` (cheap; the test suite checks pool disjointness)."""
        _, target = _load_digits()
        pool = self.digit_pools()[split]
        gen = self._gen(split, 1)
        g = torch.arange(4).repeat_interleave(torch.tensor(GROUP_COUNTS[split]))
        g = g[torch.randperm(len(g), generator=gen)]  # interleave groups so no split is sorted
        y, place = g // 2, g % 2
        digit = torch.empty(len(g), dtype=torch.long)
        for label in (0, 1):  # draw with replacement from the pool's digits of the needed label
            cand = pool[(target[pool] >= 5).long() == label]
            where = torch.nonzero(y == label).flatten()
            digit[where] = cand[torch.randint(len(cand), (len(where),), generator=gen)]
        return SplitPlan(y, place, digit)

    def _split(self, split: str) -> TensorSplit:
        images, _ = _load_digits()
        p = self.plan(split)
        x = render(images[p.digit], p.place, self._gen(split, 2), self.hparams)
        return TensorSplit(x, {"y": p.y}, group_ids(p.y, p.place, 2), torch.zeros(len(p.y), dtype=torch.long))

    def generate(self) -> dict[str, TensorSplit]:
        return {split: self._split(split) for split in ("train", "val", "test")}
