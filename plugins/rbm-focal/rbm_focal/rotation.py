"""Rotation prediction auxiliary task: predict by how many quarter turns each auxiliary image was rotated."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustbench_mtl.backbones.base import Backbone
from robustbench_mtl.data.base import DataInfo
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.hparams import Choice, hp
from robustbench_mtl.objectives.base import PAPER_WEIGHT_GRID, AuxiliaryTask
from robustbench_mtl.types import Batch, Outputs

if TYPE_CHECKING:
    from robustbench_mtl.model import Model


@dataclass(frozen=True)
class RotationHParams:
    weight: float = hp(1.0, Choice(PAPER_WEIGHT_GRID), ge=0, help="w_aux; the paper's grid is e^k, k in {-1, 0, 1}")


class Rotation(AuxiliaryTask):
    """Rotation prediction: a linear head on the pooled representation predicts k of a k * 90 degree turn, CE.

    Reference: Gidaris et al., "Unsupervised Representation Learning by Predicting Image Rotations" (ICLR 2018).
    One rotation per auxiliary image, k uniform in {0, 1, 2, 3} from torch's global generator (seeded and
    checkpointed by the runner), rather than all four copies: the same cost per step as the other objectives.
    Needs square images. Its one pass goes to the L1 penalty.
    """

    HParams = RotationHParams
    modalities = ("image",)

    def __init__(self, hparams: RotationHParams, backbone: Backbone, info: DataInfo) -> None:
        super().__init__(hparams, backbone, info)
        if len(info.input_shape) != 3 or info.input_shape[1] != info.input_shape[2]:
            raise ConfigError(f"objective 'rotation' needs square images (C, H, H); dataset '{info.name}' has "
                              f"inputs shaped {tuple(info.input_shape)}")
        self.head = nn.Linear(backbone.out_dim, 4)

    @staticmethod
    def rotate(x: Tensor, k: Tensor) -> Tensor:
        """Each image x[i] turned counter-clockwise by k[i] quarter turns."""
        out = x.clone()
        for quarter in range(1, 4):
            rows = k == quarter
            if rows.any():
                out[rows] = torch.rot90(x[rows], quarter, dims=(2, 3))
        return out

    def loss(self, model: "Model", batch: Batch, outputs: Outputs) -> tuple[Tensor, list[Outputs]]:
        k = torch.randint(0, 4, (len(batch),)).to(batch.x.device)  # CPU draw: same labels on every device
        rep = model(self.rotate(batch.x, k), heads=False)
        return F.cross_entropy(self.head(rep.pooled).float(), k), [rep]
