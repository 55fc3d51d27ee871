"""Batched image transforms on the run's device: the eval resize and the paper's end-task augmentation."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Augment = Literal["paper", "none"]
# The released code's end-task training transform: RandomResizedCrop(384, scale=(0.05, 1)), no flip.
PAPER_SCALE = (0.05, 1.0)


class Resize(nn.Module):
    """Bilinear resize of a batch [B, C, H, W] to side x side, antialiased (as torchvision's Resize on
    PIL images); the identity when the batch already has that size."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side = side

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] == (self.side, self.side):
            return x
        with torch.autocast(device_type=x.device.type, enabled=False):  # resampling in bf16 would quantise
            return F.interpolate(x.float(), size=(self.side, self.side), mode="bilinear", antialias=True,
                                 align_corners=False)


class CropResize(nn.Module):
    """RandomResizedCrop to side x side with per-image parameters from torch's global generator (which
    the runner seeds and checkpoints, so runs stay deterministic); no flip, as the paper's end task."""

    def __init__(self, side: int, scale: tuple[float, float] = PAPER_SCALE) -> None:
        super().__init__()
        import kornia.augmentation as K  # deferred: keeps `robustbench-mtl list` fast

        self.crop = K.RandomResizedCrop((side, side), scale=scale, ratio=(3 / 4, 4 / 3))

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.crop(x.float())


def image_transforms(augment: Augment, side: int) -> tuple[nn.Module | None, nn.Module]:
    """(train transform, eval transform) that turn stored images into what a model of input side `side`
    reads: eval = Resize(side); train = the paper's crop ('paper') or the eval resize ('none')."""
    resize = Resize(side)
    return (CropResize(side) if augment == "paper" else None), resize
