"""Reconstruction auxiliary task: decode the input from the shared representation (synthetic experiment)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.base import Backbone
from ..data.base import DataInfo
from ..hparams import Choice, hp
from ..registry import OBJECTIVES
from ..types import Batch, Outputs
from .base import PAPER_WEIGHT_GRID, AuxiliaryTask

if TYPE_CHECKING:
    from ..model import Model


@dataclass(frozen=True)
class ReconHParams:
    weight: float = hp(1.0, Choice(PAPER_WEIGHT_GRID), ge=0, help="w_aux")
    unit_decoder: bool = hp(True, help="project each decoder column to unit L2 norm after every step; without "
                                       "it the decoder rescales to undo a penalty on the shared layer")


@OBJECTIVES.register("recon")
class Recon(AuxiliaryTask):
    """Reconstruct the (flattened) input from the pooled shared representation with a linear decoder, MSE.

    Reference: the auxiliary task of the synthetic experiment of arXiv 2312.03151 (Fig. 4), as reconstructed
    in docs/methods.md#synthetic [RECON: the paper's exact aux target is not published].
    Details: docs/methods.md#recon.
    """

    HParams = ReconHParams
    modalities = ("tabular", "image")

    def __init__(self, hparams: ReconHParams, backbone: Backbone, info: DataInfo) -> None:
        super().__init__(hparams, backbone, info)
        self.input_shape = tuple(info.input_shape)
        self.decoder = nn.Linear(backbone.out_dim, math.prod(info.input_shape))
        self.post_step()

    def loss(self, model: "Model", batch: Batch, outputs: Outputs) -> tuple[Tensor, list[Outputs]]:
        x = batch.x
        if x.dim() == 4 and tuple(x.shape[1:]) != self.input_shape:  # images stored above the model's side
            x = F.interpolate(x.float(), size=self.input_shape[1:], mode="bilinear", antialias=True)
        rep = model(x, heads=False)
        recon = self.decoder(rep.pooled)
        return F.mse_loss(recon.float(), x.flatten(1).float()), [rep]

    @torch.no_grad()
    def post_step(self) -> None:
        if self.hparams.unit_decoder:
            w = self.decoder.weight  # [input_dim, D]: column j decodes representation unit j
            w.div_(w.norm(dim=0, keepdim=True).clamp_min(1e-12))
