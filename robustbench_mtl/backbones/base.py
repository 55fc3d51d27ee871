"""The backbone contract: inputs -> shared representation (pooled [B, D], optional tokens [B, L, D])."""
from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..data.base import DataInfo
from ..errors import ConfigError
from ..hparams import NoHParams
from ..types import Outputs


class Backbone(nn.Module, abc.ABC):
    """Maps a batch of inputs to the shared representation the task heads and objectives read.

    `out_dim` is D. Backbones that accept a patch/token mask (`supports_masking`) replace masked
    positions by a learnable mask token and expose `patch_size` and `grid` for masked modelling.
    Text backbones read token ids [B, L] (padding = the tokenizer's pad id), give `tokenizer_dir`, expose
    `tokenizer`, and, for the language-modelling objectives, `mlm_head()` and `forward(x, causal=True)`
    (`supports_causal`).
    """

    HParams: ClassVar[type] = NoHParams
    modalities: ClassVar[tuple[str, ...]] = ("tabular",)
    supports_masking: ClassVar[bool] = False
    supports_causal: ClassVar[bool] = False
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
        cls.check_modality(name, info.modality, info.name)

    @classmethod
    def check_modality(cls, name: str, modality: str, data_name: str) -> None:
        if modality not in cls.modalities:
            raise ConfigError(
                f"backbone '{name}' reads {'/'.join(cls.modalities)} inputs but dataset '{data_name}' is "
                f"{modality}; pick another with --backbone (see `robustbench-mtl list backbones`)"
            )

    @classmethod
    def tokenizer_dir(cls, hparams: Any, dataset: Any) -> str:
        """Text backbones: a local directory holding the tokenizer the dataset is tokenised with (trained on
        the dataset's training text, or the checkpoint's); the dataset's token store is keyed by it."""
        raise ConfigError(f"backbone {cls.__name__} does not read text")

    def load_init(self, directory: str) -> None:
        """Start from the weights `robustbench-mtl pretrain` saved in `directory` (backbone.pt, read with
        weights_only=True); a missing file or another architecture is one ConfigError line."""
        load_pretrained_backbone(self, Path(directory))

    def normalize(self, x: Tensor) -> Tensor:
        """What the network reads for input `x` (masked-modelling targets use it); identity by default."""
        return x

    @abc.abstractmethod
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Outputs:
        """Shared representation of `x`; `mask` is a bool [B, L] of positions to mask (if supported)."""


BACKBONE_FILE, BACKBONE_META = "backbone.pt", "backbone.json"


def class_path(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def load_pretrained_backbone(backbone: nn.Module, directory: Path) -> None:
    """Load `directory`/backbone.pt into `backbone`, checking it was saved from the same architecture."""
    hint = f"create it with `robustbench-mtl pretrain --aux ... --data ... --out {directory}`"
    path, meta_path = directory / BACKBONE_FILE, directory / BACKBONE_META
    if not path.is_file() or not meta_path.is_file():
        raise ConfigError(f"backbone.init={directory}: no {BACKBONE_FILE} and {BACKBONE_META} there; {hint}")
    try:
        meta = json.loads(meta_path.read_text())
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"backbone.init={directory}: cannot read it ({type(exc).__name__}); {hint}") from None
    if meta.get("class") != class_path(backbone):
        raise ConfigError(f"backbone.init={directory} holds a {meta.get('backbone')!r} backbone "
                          f"({meta.get('class')}), not this run's {class_path(backbone)}; pass the matching --backbone")
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:  # same class, other architecture hparams (widths, patch size, ...)
        first = str(exc).strip().splitlines()[-1].strip()
        raise ConfigError(f"backbone.init={directory} does not fit this backbone's hparams ({first}); use the "
                          f"backbone hparams it was pretrained with: {meta.get('hparams')}") from None
