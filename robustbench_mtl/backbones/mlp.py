"""MLP backbone for tabular inputs: hidden ReLU layers, then a normalized representation layer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import math
from torch import Tensor, nn

from ..data.base import DataInfo
from ..hparams import Choice, hp
from ..registry import BACKBONES
from ..types import Outputs
from .base import Backbone


@dataclass(frozen=True)
class MLPHParams:
    hidden: tuple[int, ...] = hp((), ge=1, help="widths of hidden ReLU layers before the representation layer")
    rep_dim: int = hp(64, Choice((8, 16, 64, 128)), ge=1, help="width D of the shared representation")
    norm: Literal["layernorm", "none"] = hp("layernorm", help="normalization of the representation layer")
    dropout: float = hp(0.0, ge=0, lt=1, help="dropout after each hidden layer")
    init: str = hp("", help="directory written by `robustbench-mtl pretrain` to start from; '' = this "
                            "backbone's own initialisation")


@BACKBONES.register("mlp")
class MLP(Backbone):
    """Multilayer perceptron for tabular data; the representation is LayerNorm(W h + b).

    The representation layer is the 'shared layer' of the synthetic experiment (docs/methods.md#synthetic).
    """

    HParams = MLPHParams
    modalities = ("tabular",)

    def __init__(self, hparams: MLPHParams, info: DataInfo) -> None:
        super().__init__(hparams, info)
        layers: list[nn.Module] = []
        width = math.prod(info.input_shape)
        for h in hparams.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(hparams.dropout)]
            width = h
        layers.append(nn.Linear(width, hparams.rep_dim))
        if hparams.norm == "layernorm":
            layers.append(nn.LayerNorm(hparams.rep_dim))
        self.net = nn.Sequential(*layers)
        self.out_dim = hparams.rep_dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Outputs:
        return Outputs(pooled=self.net(x.flatten(1)))
