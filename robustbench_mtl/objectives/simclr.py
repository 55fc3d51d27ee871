"""SimCLR auxiliary task: NT-Xent contrastive loss between augmented views of the auxiliary images."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

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
class SimCLRHParams:
    weight: float = hp(1.0, Choice(PAPER_WEIGHT_GRID), ge=0, help="w_aux; the paper's grid is e^k, k in {-1, 0, 1}")
    temperature: float = hp(1.0, gt=0, help="NT-Xent temperature tau (released code: 1.0)")
    proj_dim: int = hp(0, ge=0, help="width of the projection head Linear(D, proj_dim) -> GELU; 0 = D (released code)")
    pairing: Literal["two_views", "official"] = hp(
        "two_views", help="two_views: two augmentations of the same aux images (correct SimCLR); official: the "
                          "released code's pairing of the detached end-task CLS with one augmented aux view")


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent over 2N embeddings: row k of z1 and row k of z2 are positives, all other rows negatives.

    Cosine similarities / tau with self-similarity removed, cross-entropy on the positive; the same value as the
    released code's [positive, negatives] logits with target 0 (CE does not depend on the column order).
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.arange(2 * n, device=z.device).roll(n)  # row i pairs with row i + n (mod 2N)
    return F.cross_entropy(sim, target)


@OBJECTIVES.register("simclr")
class SimCLR(AuxiliaryTask):
    """SimCLR: NT-Xent between two augmented views through a Linear -> GELU projection head (tau = 1).

    Reference: Chen et al. 2020 (SimCLR); the released mt_l1 code's `erm_mt2` on images (docs/methods.md#simclr).
    Views: RandomResizedCrop(scale (0.67, 1)), flip p=0.5, ColorJitter(0.8, 0.8, 0.8, 0.2) p=0.8, grayscale
    p=0.2, Gaussian blur (kernel int(0.1 * side) made odd, >= 3; sigma U(0.1, 2)) always; per-sample params.
    Colour ops apply to RGB images only. The released code feeds these views un-normalised ([0, 1]) while its
    end task is normalised; here the backbone normalises every input alike.
    pairing="two_views": two views of the same aux batch, both through the backbone; both passes go to L1.
    pairing="official" reproduces the released code: view 1 = the end-task pass's pooled output, detached;
    view 2 = the pooled output of one augmented pass of the aux batch (an independently shuffled batch, so
    pairs are generally different images); gradients reach the backbone only through view 2; unequal batch
    sizes are truncated to the smaller (the released code needs them equal); only the aux pass goes to L1.
    """

    HParams = SimCLRHParams
    modalities = ("image",)

    def __init__(self, hparams: SimCLRHParams, backbone: Backbone, info: DataInfo) -> None:
        super().__init__(hparams, backbone, info)
        if len(info.input_shape) != 3:
            raise ConfigError(f"objective 'simclr' needs images shaped (C, H, W); dataset '{info.name}' has "
                              f"inputs shaped {tuple(info.input_shape)}")
        dim = hparams.proj_dim or backbone.out_dim
        self.projection = nn.Sequential(nn.Linear(backbone.out_dim, dim), nn.GELU())
        self.augment = self._augmentations(*info.input_shape)

    @staticmethod
    def _augmentations(channels: int, height: int, width: int) -> nn.Sequential:
        import kornia.augmentation as K  # deferred: keeps `robustbench-mtl list` fast

        kernel = max(3, 2 * (int(0.1 * min(height, width)) // 2) + 1)  # odd, as the SimCLR blur needs
        ops: list[nn.Module] = [
            K.RandomResizedCrop((height, width), scale=(0.67, 1.0)),
            K.RandomHorizontalFlip(p=0.5),
        ]
        if channels == 3:  # saturation, hue and grayscale are defined for RGB only
            ops += [K.ColorJitter(0.8, 0.8, 0.8, 0.2, p=0.8), K.RandomGrayscale(p=0.2)]
        ops.append(K.RandomGaussianBlur((kernel, kernel), sigma=(0.1, 2.0), p=1.0))
        return nn.Sequential(*ops)

    @torch.no_grad()
    def view(self, x: Tensor) -> Tensor:
        """One augmented view per image, with per-sample random parameters from torch's global generator."""
        # float32 even under bf16 autocast: colour jitter and blur in bf16 would quantise the views
        with torch.autocast(device_type=x.device.type, enabled=False):
            # torchvision's PIL pipeline keeps pixels in [0, 1]; jitter here can overshoot slightly
            return self.augment(x.float()).clamp_(0.0, 1.0)

    def loss(self, model: "Model", batch: Batch, outputs: Outputs) -> tuple[Tensor, list[Outputs]]:
        if self.hparams.pairing == "official":
            return self._official(model, batch, outputs)
        n = len(batch)
        # one forward of 2N images: the ViT has no cross-sample ops, so this equals two passes of N, faster
        both = model(torch.cat([self.view(batch.x), self.view(batch.x)]), heads=False)
        passes = [_rows(both, slice(0, n)), _rows(both, slice(n, 2 * n))]
        z1, z2 = (self.projection(p.pooled) for p in passes)
        return nt_xent(z1, z2, self.hparams.temperature), passes

    def _official(self, model: "Model", batch: Batch, outputs: Outputs) -> tuple[Tensor, list[Outputs]]:
        aux = model(self.view(batch.x), heads=False)
        n = min(len(batch), outputs.pooled.shape[0])
        z1 = self.projection(outputs.pooled.detach()[:n])  # released code: cached end-task CLS, detached
        z2 = self.projection(aux.pooled[:n])
        return nt_xent(z1, z2, self.hparams.temperature), [aux]


def _rows(out: Outputs, rows: slice) -> Outputs:
    """The outputs of a subset of the batch (one view of a concatenated forward)."""
    return Outputs(pooled=out.pooled[rows], tokens=None if out.tokens is None else out.tokens[rows])
