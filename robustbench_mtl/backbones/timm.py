"""Any timm image model (ViTs, CNNs, ...) as a backbone, pretrained by default; no patch masking."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from robustbench_mtl.backbones.base import Backbone
from robustbench_mtl.backbones.vit_b16 import hf_fetch_hint, hf_offline
from robustbench_mtl.data.base import DataInfo
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.hparams import hp
from robustbench_mtl.registry import BACKBONES
from robustbench_mtl.types import Outputs

# The original Google ViT-B/16 ImageNet-21k weights: the checkpoint the paper fine-tunes
# (google/vit-base-patch16-224-in21k), here through timm, so `--backbone timm` defaults to the paper's network.
DEFAULT_MODEL = "vit_base_patch16_224.orig_in21k"


@dataclass(frozen=True)
class TimmHParams:
    model: str = hp(DEFAULT_MODEL, help="timm model name, optionally with a pretrained tag (timm.list_models(), "
                                        "timm.list_pretrained()); e.g. resnet50.a1_in1k, convnext_tiny")
    pretrained: bool = hp(True, help="load timm's pretrained weights for `model` (Hugging Face Hub or torch hub "
                                     "cache); false: the same architecture, randomly initialised")
    init: str = hp("", help="directory written by `robustbench-mtl pretrain` to start from (after the weights "
                            "above); '' = none")


@BACKBONES.register("timm")
class Timm(Backbone):
    """A timm model (default ViT-B/16 in21k, the paper's weights); pooled = its pooled features, tokens = its map.

    Reference: Wightman, PyTorch Image Models (timm), `timm.create_model(model, pretrained, num_classes=0)`
    (docs/methods.md#timm). pooled = `forward_head(forward_features(x), pre_logits=True)`: the model's own
    pooling ([CLS] after the final norm for ViTs, global average pooling for CNNs). tokens: for
    transformer-like models the forward_features sequence [B, L, D]; for CNNs the final feature map
    [B, C, H, W] (or NHWC) flattened to [B, H*W, C], so the L1 penalty's `all_tokens` target is defined
    (models whose pooled width differs from the map's, e.g. a conv head after the map, give no tokens and
    the L1 reads pooled). Fixed-size models (ViTs) are built at the dataset's image size (`img_size`; timm
    resamples pretrained position embeddings once); CNNs take any size. Inputs in [0, 1] are normalised
    with the model's pretrained_cfg mean/std. No patch masking, so `mim` refuses it.
    """

    HParams = TimmHParams
    modalities = ("image",)
    has_tokens = True

    def __init__(self, hparams: TimmHParams, info: DataInfo) -> None:
        super().__init__(hparams, info)
        if len(info.input_shape) != 3:
            raise ConfigError(f"backbone 'timm' needs images shaped (C, H, W); dataset '{info.name}' has inputs "
                              f"shaped {tuple(info.input_shape)}")
        channels, height, width = info.input_shape
        try:
            import timm  # the timm package (absolute import), deferred: keeps `robustbench-mtl list` fast
            from timm.models import get_pretrained_cfg
        except ImportError:
            raise ConfigError("backbone 'timm' needs the timm package: pip install -e \".[vision]\" (or pip "
                              "install timm)") from None

        name = hparams.model
        if not timm.is_model(name):
            arch = name.partition(".")[0]
            close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}?" if close else "see timm.list_models()"
            raise ConfigError(f"backbone 'timm': unknown timm model '{name}'; {hint}")
        if hparams.pretrained and not timm.list_pretrained(name):
            raise ConfigError(f"backbone 'timm': timm has no pretrained weights for '{name}' (see "
                              f"timm.list_pretrained('{name.partition('.')[0]}*')); set backbone.pretrained=false")
        cfg = get_pretrained_cfg(name)
        kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": channels}
        if cfg is not None and cfg.fixed_input_size and tuple(cfg.input_size[-2:]) != (height, width):
            kwargs["img_size"] = (height, width)  # ViT-like: position embeddings for the data's size
        try:
            self.net = timm.create_model(name, pretrained=hparams.pretrained, **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            raise ConfigError(f"backbone 'timm': '{name}' reads {cfg.input_size[-2]}x{cfg.input_size[-1]} images "
                              f"only but dataset '{info.name}' has {height}x{width}") from None
        except OSError as exc:  # hub or URL download failed (offline, no network, not cached)
            raise ConfigError(self._unavailable(name, cfg, exc)) from None
        pcfg = getattr(self.net, "pretrained_cfg", None) or {}
        self.out_dim = int(getattr(self.net, "head_hidden_size", None) or self.net.num_features)
        self.token_dim = int(self.net.num_features)
        self.output_fmt = str(getattr(self.net, "output_fmt", "NCHW"))
        mean, std = (_per_channel(pcfg.get(k), channels, d) for k, d in (("mean", 0.5), ("std", 0.5)))
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @staticmethod
    def _unavailable(name: str, cfg: Any, exc: OSError) -> str:
        if hf_offline():
            why = "the Hub is offline (HF_HUB_OFFLINE=1)"
        else:
            why = f"they could not be downloaded ({' '.join(str(exc).split())[:120]})"
        if cfg is not None and cfg.hf_hub_id:
            fetch = hf_fetch_hint(cfg.hf_hub_id.partition("@")[0])
        elif cfg is not None and cfg.url:
            fetch = f"`curl -L {cfg.url}` into torch's hub cache, $TORCH_HOME/hub/checkpoints/"
        else:
            fetch = "timm's instructions for this model"
        return (f"backbone 'timm': pretrained weights of '{name}' are not cached and {why}; fetch them with "
                f"{fetch}, or set backbone.pretrained=false")

    def normalize(self, x: Tensor) -> Tensor:
        """What the network reads: (x - mean) / std with the model's pretrained_cfg statistics."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Outputs:
        feats = self.net.forward_features(self.normalize(x))
        pooled = self.net.forward_head(feats, pre_logits=True)
        return Outputs(pooled=pooled, tokens=self._tokens(feats, pooled))

    def _tokens(self, feats: Any, pooled: Tensor) -> Tensor | None:
        """[B, L, D] from forward_features: sequences as they are, feature maps flattened over space."""
        if not isinstance(feats, Tensor) or pooled.shape[-1] != self.token_dim:
            return None
        if feats.dim() == 3:
            return feats
        if feats.dim() == 4:
            nhwc = self.output_fmt == "NHWC" or (feats.shape[1] != self.token_dim and feats.shape[-1] == self.token_dim)
            return feats.flatten(1, 2) if nhwc else feats.flatten(2).transpose(1, 2)
        return None


def _per_channel(value: Any, channels: int, default: float) -> list[float]:
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(default if value is None
                                                                                         else value)]
    return values if len(values) == channels else [sum(values) / len(values)] * channels
