"""LeNet trunk for small grayscale images (MT-CRL's Multi-MNIST encoder): two 5x5 convolutions, then FC -> 50."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..data.base import DataInfo
from ..errors import ConfigError
from ..hparams import hp
from ..registry import BACKBONES
from ..types import Outputs
from .base import Backbone

KERNEL = 5
MIN_SIDE = 16  # two 5x5 valid convolutions and two 2x2 poolings need at least 16 px to leave one cell


@dataclass(frozen=True)
class LeNetHParams:
    rep_dim: int = hp(50, ge=1, help="width D of the representation (the FC layer's output)")
    dropout: float = hp(0.5, ge=0, lt=1, help="channel dropout (Dropout2d) after the second convolution")
    final_relu: bool = hp(True, help="ReLU after the FC layer, as Sener & Koltun's MultiLeNetR [RECON]")
    init: str = hp("", help="directory written by `robustbench-mtl pretrain` to start from; '' = this "
                            "backbone's own initialisation")


def pooled_side(side: int) -> int:
    """Side after conv5x5, maxpool 2, conv5x5, maxpool 2 (valid convolutions, floor pooling)."""
    return ((side - KERNEL + 1) // 2 - KERNEL + 1) // 2


@BACKBONES.register("lenet")
class LeNet(Backbone):
    """LeNet trunk: conv5x5 C->10, maxpool, ReLU, conv5x5 10->20, dropout, maxpool, ReLU, flatten, FC->50.

    Reference: the Multi-MNIST trunk of the MT-CRL reconstruction [RECON] (Hu et al., NeurIPS 2022;
    docs/methods.md#lenet), which is the shared encoder of Sener & Koltun's multi-task MNIST (NeurIPS 2018,
    `MultiLeNetR`: Dropout2d, and a ReLU after the FC layer, kept by default: backbone.final_relu). Reads any
    C x H x W image with H, W >= 16 (C = 1 for MNIST); the FC layer's input size comes from the input shape
    (20 x 4 x 11 = 880 for 1x28x56). pooled = the 50-d output; no tokens. Inputs are read as given, in [0, 1]
    (no MNIST mean/std normalisation) [RECON].
    """

    HParams = LeNetHParams
    modalities = ("image",)

    def __init__(self, hparams: LeNetHParams, info: DataInfo) -> None:
        super().__init__(hparams, info)
        channels, height, width = self._image_shape(info)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 10, KERNEL), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(10, 20, KERNEL), nn.Dropout2d(hparams.dropout), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
        )
        self.fc = nn.Linear(20 * pooled_side(height) * pooled_side(width), hparams.rep_dim)
        self.act = nn.ReLU() if hparams.final_relu else nn.Identity()
        self.out_dim = hparams.rep_dim

    @classmethod
    def check(cls, name: str, info: DataInfo) -> None:
        """Images only, shaped (C, H, W) with H, W >= 16: checked at resolve time, before any file is written."""
        super().check(name, info)
        cls._image_shape(info)

    @staticmethod
    def _image_shape(info: DataInfo) -> tuple[int, int, int]:
        shape = tuple(info.input_shape)
        if len(shape) != 3 or min(shape[1:]) < MIN_SIDE:
            raise ConfigError(f"backbone 'lenet' needs images shaped (C, H, W) with H, W >= {MIN_SIDE}; dataset "
                              f"'{info.name}' has inputs shaped {shape}")
        return shape  # type: ignore[return-value]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Outputs:
        return Outputs(pooled=self.act(self.fc(self.features(x))))
