"""The backbone contract: inputs -> shared representation (pooled [B, D], optional tokens [B, L, D])."""
from __future__ import annotations

import abc
from typing import Any, ClassVar

from torch import Tensor, nn

from ..data.base import DataInfo
from ..errors import ConfigError
from ..hparams import NoHParams
from ..types import Outputs


class Backbone(nn.Module, abc.ABC):
    """Maps a batch of inputs to the shared representation the task heads and objectives read.

    `out_dim` is D. Backbones that accept a patch/token mask (`supports_masking`) replace masked
    positions by a learnable mask token and expose `patch_size` and `grid` for masked modelling.
    """

    HParams: ClassVar[type] = NoHParams
    modalities: ClassVar[tuple[str, ...]] = ("tabular",)
    supports_masking: ClassVar[bool] = False
    has_tokens: ClassVar[bool] = False
    out_dim: int
    # Declared by backbones with `supports_masking`: patch side, patches per side, input channels.
    patch_size: int
    grid: int
    num_channels: int

    def __init__(self, hparams: Any, info: DataInfo) -> None:
        super().__init__()
        self.hparams = hparams
        self.info = info

    @classmethod
    def check(cls, name: str, info: DataInfo) -> None:
        """Raise ConfigError if this backbone cannot read the dataset's inputs."""
        if info.modality not in cls.modalities:
            raise ConfigError(
                f"backbone '{name}' reads {'/'.join(cls.modalities)} inputs but dataset '{info.name}' is "
                f"{info.modality}; pick another with --backbone (see `robustbench-mtl list backbones`)"
            )

    def normalize(self, x: Tensor) -> Tensor:
        """What the network reads for input `x` (masked-modelling targets use it); identity by default."""
        return x

    @abc.abstractmethod
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Outputs:
        """Shared representation of `x`; `mask` is a bool [B, L] of positions to mask (if supported)."""
