"""A small, randomly initialised Vision Transformer (HF ViTModel) for image datasets, with patch masking."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..data.base import DataInfo
from ..errors import ConfigError
from ..hparams import hp
from ..registry import BACKBONES
from ..types import Outputs
from .base import Backbone


# No search spaces on the architecture: the paper fixes its ViT and tunes only weights and optimisation,
# so a random hparam draw must not change the network.
@dataclass(frozen=True)
class ViTTinyHParams:
    hidden_size: int = hp(64, ge=1, help="width D of every token (the shared representation)")
    num_layers: int = hp(4, ge=1, help="number of transformer blocks")
    num_heads: int = hp(4, ge=1, help="attention heads per block; must divide hidden_size")
    intermediate_size: int = hp(128, ge=1, help="hidden width of each block's MLP")
    patch_size: int = hp(4, ge=1, help="side of the square patches; must divide the image side")
    dropout: float = hp(0.0, ge=0, lt=1, help="dropout on hidden states and attention probabilities")
    init: str = hp("", help="directory written by `robustbench-mtl pretrain` to start from; '' = this "
                            "backbone's own initialisation")


@BACKBONES.register("vit_tiny")
class ViTTiny(Backbone):
    """Small Vision Transformer (randomly initialised); pooled = final [CLS] token, tokens = whole sequence.

    Reference: Dosovitskiy et al. 2021 (ViT), built as transformers' `ViTModel(config, add_pooling_layer=False,
    use_mask_token=True)` from a `ViTConfig` (no pretrained weights are downloaded). Inputs are images in [0, 1];
    the backbone normalises them with mean = std = 0.5 (the released code's Normalize(0.5, 0.5)), so every
    objective feeds raw images. `mask` ([B, L] bool over patches) replaces masked patch embeddings by the
    learnable mask token (SimMIM). Outputs come after ViT's final LayerNorm, as the L1 penalty expects
    (docs/methods.md#l1).
    """

    HParams = ViTTinyHParams
    modalities = ("image",)
    supports_masking = True
    has_tokens = True

    def __init__(self, hparams: ViTTinyHParams, info: DataInfo) -> None:
        super().__init__(hparams, info)
        channels, height, width = self._image_shape(hparams, info)
        from transformers import ViTConfig, ViTModel  # heavy import: keep `robustbench-mtl list` fast

        config = ViTConfig(
            hidden_size=hparams.hidden_size, num_hidden_layers=hparams.num_layers,
            num_attention_heads=hparams.num_heads, intermediate_size=hparams.intermediate_size,
            hidden_dropout_prob=hparams.dropout, attention_probs_dropout_prob=hparams.dropout,
            image_size=height, patch_size=hparams.patch_size, num_channels=channels,
            encoder_stride=hparams.patch_size,
            attn_implementation="sdpa",  # fused attention: markedly faster than eager on CPU and GPU
        )
        self.vit = ViTModel(config, add_pooling_layer=False, use_mask_token=True)
        self.out_dim = hparams.hidden_size
        self.patch_size = hparams.patch_size
        self.grid = height // hparams.patch_size
        self.num_channels = channels

    @staticmethod
    def _image_shape(hparams: ViTTinyHParams, info: DataInfo) -> tuple[int, int, int]:
        if len(info.input_shape) != 3:
            raise ConfigError(f"backbone 'vit_tiny' needs images shaped (C, H, W); dataset '{info.name}' "
                              f"has inputs shaped {tuple(info.input_shape)}")
        c, h, w = info.input_shape
        p = hparams.patch_size
        if h != w or p <= 0 or h % p:
            raise ConfigError(f"backbone 'vit_tiny' needs square images whose side is a multiple of "
                              f"patch_size={p}; dataset '{info.name}' has {h}x{w}: set backbone.patch_size")
        if hparams.hidden_size % hparams.num_heads:
            raise ConfigError(f"backbone.num_heads={hparams.num_heads} must divide "
                              f"backbone.hidden_size={hparams.hidden_size}")
        return c, h, w

    def normalize(self, x: Tensor) -> Tensor:
        """What the transformer reads: [0, 1] images mapped to [-1, 1] (mean = std = 0.5)."""
        return (x - 0.5) / 0.5

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Outputs:
        seq = self.vit(pixel_values=self.normalize(x), bool_masked_pos=mask).last_hidden_state
        return Outputs(pooled=seq[:, 0], tokens=seq)
