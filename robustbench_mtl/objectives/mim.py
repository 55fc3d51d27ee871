"""Masked image modelling auxiliary task (SimMIM-style): reconstruct masked patches from the ViT tokens."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.base import Backbone
from ..data.base import DataInfo
from ..errors import ConfigError
from ..hparams import Choice, hp
from ..registry import OBJECTIVES
from ..types import Batch, Outputs
from .base import PAPER_WEIGHT_GRID, AuxiliaryTask

if TYPE_CHECKING:
    from ..model import Model

@dataclass(frozen=True)
class MIMHParams:
    weight: float = hp(1.0, Choice(PAPER_WEIGHT_GRID), ge=0, help="w_aux; the paper's grid is e^k, k in {-1, 0, 1}")
    mask_ratio: float = hp(0.6, gt=0, le=1, help="fraction of mask blocks masked (ceil(ratio * blocks))")
    mask_patch_size: int = hp(0, ge=0, help="side of a mask block in pixels; 0 = twice the backbone's patch size "
                                      "(the released 32 for patch 16), or the patch size when that leaves fewer "
                                      "than 4 blocks a side; a multiple of it dividing the image side")


@OBJECTIVES.register("mim")
class MIM(AuxiliaryTask):
    """Masked image modelling: L1 reconstruction of the masked patches from a 1x1-conv + PixelShuffle decoder.

    Reference: SimMIM (Xie et al. 2022) as in transformers' ViTForMaskedImageModeling and run_mim.py's
    MaskGenerator; docs/methods.md#mim [RECON: the released mt_l1 code references but never defines its
    MIMViTModel]. Aux view: RandomResizedCrop(scale (0.67, 1), ratio (3/4, 4/3)) + horizontal flip, per
    sample. The target is the backbone's *normalised* input (mean = std = 0.5), as SimMIM/HF reconstruct
    pixel_values; loss = sum(|x - x_hat| * mask) / (sum(mask) + 1e-5) / C. The L1 penalty reads the masked pass.
    """

    HParams = MIMHParams
    modalities = ("image",)
    needs_masking = True

    def __init__(self, hparams: MIMHParams, backbone: Backbone, info: DataInfo) -> None:
        super().__init__(hparams, backbone, info)
        import kornia.augmentation as K  # deferred: keeps `robustbench-mtl list` fast

        p, grid, channels = (getattr(backbone, a, None) for a in ("patch_size", "grid", "num_channels"))
        if not (p and grid and channels):
            raise ConfigError("objective 'mim' needs a backbone exposing patch_size, grid and num_channels "
                              "(e.g. --backbone vit_tiny or vit_b16)")
        size = p * grid
        # 0: twice the patch (run_mim's 32 for patch 16), unless that leaves fewer than 4 blocks a side.
        block = hparams.mask_patch_size or (2 * p if size // (2 * p) >= 4 else p)
        if block % p or size % block:
            raise ConfigError(f"mim.mask_patch_size={block} must be a multiple of the backbone's patch size "
                              f"{p} and divide the image side {size}")
        self.patch_size, self.grid, self.channels = p, grid, channels
        self.rand_size, self.scale = size // block, block // p
        self.mask_count = math.ceil(hparams.mask_ratio * self.rand_size**2)
        self.augment = nn.Sequential(
            K.RandomResizedCrop((size, size), scale=(0.67, 1.0), ratio=(3 / 4, 4 / 3)),
            K.RandomHorizontalFlip(p=0.5),
        )
        self.decoder = nn.Sequential(nn.Conv2d(backbone.out_dim, p * p * channels, 1), nn.PixelShuffle(p))

    def make_mask(self, batch_size: int, device: torch.device) -> Tensor:
        """One mask per image, bool [B, grid^2]: `mask_count` random blocks, each upsampled to scale^2 patches.

        Drawn on the CPU from torch's global generator (seeded and checkpointed by the runner), so a seed
        gives the same masks on every device.
        """
        blocks = self.rand_size**2
        chosen = torch.rand(batch_size, blocks).argsort(dim=1)[:, : self.mask_count]
        mask = torch.zeros(batch_size, blocks, dtype=torch.bool).scatter_(1, chosen, True)
        mask = mask.view(batch_size, self.rand_size, self.rand_size)
        mask = mask.repeat_interleave(self.scale, 1).repeat_interleave(self.scale, 2)
        return mask.flatten(1).to(device)

    @torch.no_grad()
    def view(self, x: Tensor) -> Tensor:
        # float32 even under bf16 autocast: resampling in bf16 would quantise the reconstruction target
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.augment(x.float())

    def reconstruct(self, tokens: Tensor) -> Tensor:
        """Pixels [B, C, H, W] (normalised scale) from the patch tokens [B, 1 + grid^2, D]."""
        patches = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, self.grid, self.grid)
        return self.decoder(patches)

    def masked_l1(self, target: Tensor, recon: Tensor, mask: Tensor) -> Tensor:
        """Mean |target - recon| over the pixels of masked patches and over channels."""
        pix = mask.view(-1, self.grid, self.grid).repeat_interleave(self.patch_size, 1)
        pix = pix.repeat_interleave(self.patch_size, 2).unsqueeze(1).float()
        err = F.l1_loss(recon.float(), target.float(), reduction="none")
        return (err * pix).sum() / (pix.sum() + 1e-5) / self.channels

    def loss(self, model: "Model", batch: Batch, outputs: Outputs) -> tuple[Tensor, list[Outputs]]:
        x = self.view(batch.x)
        mask = self.make_mask(x.shape[0], x.device)
        out = model(x, mask=mask, heads=False)
        assert out.tokens is not None
        target = model.backbone.normalize(x)
        return self.masked_l1(target, self.reconstruct(out.tokens), mask), [out]
