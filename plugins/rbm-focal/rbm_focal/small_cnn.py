"""A small convolutional network for image datasets: two conv blocks, global pooling, a linear layer."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from robustbench_mtl.backbones.base import Backbone
from robustbench_mtl.data.base import DataInfo
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.hparams import Choice, hp
from robustbench_mtl.types import Outputs


@dataclass(frozen=True)
class SmallCNNHParams:
    channels: int = hp(32, ge=1, help="channels of the first conv block (the second has twice as many)")
    out_dim: int = hp(64, Choice((32, 64, 128)), ge=1, help="width D of the shared representation")


class SmallCNN(Backbone):
    """Small CNN: (conv 3x3 - ReLU - max-pool 2) x 2, global average pool, linear to out_dim; no masking.

    Reference: a LeNet-style baseline (LeCun et al. 1998) with global average pooling (Lin et al. 2014);
    a cheap alternative to vit_tiny that learns image tasks from scratch in a few CPU epochs.
    Inputs in [0, 1] are centred to [-1, 1].
    """

    HParams = SmallCNNHParams
    modalities = ("image",)

    def __init__(self, hparams: SmallCNNHParams, info: DataInfo) -> None:
        super().__init__(hparams, info)
        if len(info.input_shape) != 3:
            raise ConfigError(f"backbone 'small_cnn' needs images shaped (C, H, W); dataset '{info.name}' has "
                              f"inputs shaped {tuple(info.input_shape)}")
        c = hparams.channels
        self.features = nn.Sequential(
            nn.Conv2d(info.input_shape[0], c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.proj = nn.Linear(2 * c, hparams.out_dim)
        self.out_dim = hparams.out_dim

    def normalize(self, x: Tensor) -> Tensor:
        return (x - 0.5) / 0.5

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Outputs:
        return Outputs(pooled=self.proj(self.features(self.normalize(x))))
