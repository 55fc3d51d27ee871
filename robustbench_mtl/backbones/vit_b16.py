"""ViT-B/16 from a Hugging Face checkpoint (the paper's image backbone), fine-tuned, with patch masking."""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from ..data.base import DataInfo
from ..errors import ConfigError
from ..hparams import hp
from ..registry import BACKBONES
from ..types import Outputs
from .base import Backbone

DEFAULT_MODEL = "google/vit-base-patch16-224-in21k"


@dataclass(frozen=True)
class ViTB16HParams:
    model: str = hp(DEFAULT_MODEL, help="Hugging Face ViT model id, or a local directory holding its config.json "
                                        "(and weights, and optionally preprocessor_config.json)")
    pretrained: bool = hp(True, help="load the checkpoint's weights, as the paper fine-tunes them; false: the same "
                                     "architecture, randomly initialised")
    dropout: float = hp(0.0, ge=0, lt=1, help="dropout on hidden states and attention probabilities (the in21k "
                                              "checkpoint's config has 0)")
    init: str = hp("", help="directory written by `robustbench-mtl pretrain` to start from (after the weights "
                            "above); '' = none")


def hf_offline() -> bool:
    """Whether the Hugging Face Hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(f.strip().upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


def hf_fetch_hint(repo: str) -> str:
    """The command that puts `repo` into the Hugging Face cache (run where there is network)."""
    return f"`hf download {repo}` (huggingface_hub's CLI; run it where there is network, with this HF_HOME)"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars or load reports while loading: missing keys are checked by the caller."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@BACKBONES.register("vit_b16")
class ViTB16(Backbone):
    """Pretrained Vision Transformer (default ViT-B/16 in21k, as in the paper); pooled = [CLS], tokens = sequence.

    Reference: Dosovitskiy et al. 2021 (ViT); the paper's checkpoint `google/vit-base-patch16-224-in21k`, loaded
    as transformers' `ViTModel.from_pretrained(model, add_pooling_layer=False, use_mask_token=True)`
    (docs/methods.md#vit_b16). The input side is the dataset's: when it differs from the checkpoint's
    image_size (the paper: 384 with a 224 checkpoint), config.image_size is set to it and the position
    embeddings are interpolated on every forward (`interpolate_pos_encoding=True`, as the released code).
    Inputs are [0, 1] images, normalised here with the model's image-processor mean/std (0.5/0.5 for the
    in21k checkpoint, also when no processor config is available). pooled = [CLS] of last_hidden_state, after
    the final LayerNorm; tokens = the whole last_hidden_state, which the L1 penalty reads. `mask` ([B, L]
    bool over patches) replaces masked patch embeddings by the mask token, which is not in the in21k
    checkpoint and starts at zero (SimMIM / ViTForMaskedImageModeling). Offline (HF_HUB_OFFLINE=1) the
    weights must be in the Hugging Face cache or `model` a local directory; otherwise one error line names
    the command that fetches them.
    """

    HParams = ViTB16HParams
    modalities = ("image",)
    supports_masking = True
    has_tokens = True

    def __init__(self, hparams: ViTB16HParams, info: DataInfo) -> None:
        super().__init__(hparams, info)
        if len(info.input_shape) != 3:
            raise ConfigError(f"backbone 'vit_b16' needs images shaped (C, H, W); dataset '{info.name}' has "
                              f"inputs shaped {tuple(info.input_shape)}")
        channels, height, width = info.input_shape
        from transformers import ViTModel  # heavy import: keep `robustbench-mtl list` fast

        source, offline = self._source(hparams.model), hf_offline()
        config = self._config(source, offline)
        patch = _side(config.patch_size, "patch_size", hparams.model)
        if height != width or height % patch:
            raise ConfigError(f"backbone 'vit_b16' needs square images whose side is a multiple of the model's "
                              f"patch size {patch}; dataset '{info.name}' has {height}x{width}")
        if config.num_channels != channels:
            raise ConfigError(f"backbone 'vit_b16': model '{hparams.model}' reads {config.num_channels}-channel "
                              f"images but dataset '{info.name}' has {channels} channels")
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = hparams.dropout
        config._attn_implementation = "sdpa"  # fused attention, as vit_tiny
        if hparams.pretrained:
            self.vit = self._load(ViTModel, source, config, offline)
        else:  # no checkpoint to match: build the position embeddings at the data's size
            config.image_size = height
            self.vit = ViTModel(config, add_pooling_layer=False, use_mask_token=True)
        # What the checkpoint's position embeddings were trained for; HF interpolates them to the input side.
        self.checkpoint_size = _side(self.vit.embeddings.patch_embeddings.image_size, "image_size", hparams.model)
        self.interpolate = height != self.checkpoint_size
        self.vit.config.image_size = height  # as the released code (SimCLRViTModel) sets it
        self.out_dim = int(config.hidden_size)
        self.patch_size, self.grid, self.num_channels = patch, height // patch, channels
        mean, std = self._normalization(source, offline, channels)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    # -- loading -----------------------------------------------------------------------------------------------
    @staticmethod
    def _source(model: str) -> str:
        """A local directory (resolved) or a Hub id; a path that is not a directory is an error."""
        if not model.strip():
            raise ConfigError(f"backbone.model is empty; give a Hugging Face ViT id (e.g. {DEFAULT_MODEL}) or a "
                              f"local directory")
        path = Path(model).expanduser()
        if path.is_dir():
            return str(path.resolve())
        if path.is_absolute() or model.startswith((".", "~")) or path.exists():
            raise ConfigError(f"backbone.model={model!r} is not a directory holding a Hugging Face ViT "
                              f"(config.json); give a directory or a model id such as {DEFAULT_MODEL}")
        return model

    def _config(self, source: str, offline: bool) -> Any:
        """The model's ViTConfig: from the directory, the cache or the Hub; ViTConfig() for the default id offline."""
        from transformers import ViTConfig

        try:
            with quiet_transformers():
                return ViTConfig.from_pretrained(source, local_files_only=offline)
        except OSError as exc:  # transformers also reports a malformed id as OSError, with the reason
            if Path(source).is_dir():
                raise ConfigError(f"backbone 'vit_b16': {source} has no readable config.json "
                                  f"({_one_line(exc)})") from None
            if self.hparams.pretrained or source != DEFAULT_MODEL:
                raise self._unavailable(source, offline, exc) from None
        # pretrained=false with the paper's id and no way to read its config: ViTConfig's defaults are that
        # checkpoint's architecture (hidden 768, 12 layers, 12 heads, MLP 3072, patch 16, 224 px, LN eps 1e-12).
        warnings.warn(f"backbone 'vit_b16': the config of '{DEFAULT_MODEL}' is not in the Hugging Face cache and "
                      f"cannot be downloaded; building its architecture from ViTConfig defaults (ViT-B/16, "
                      f"random init, as backbone.pretrained=false asks)", stacklevel=3)
        return ViTConfig()

    def _load(self, vit_cls: Any, source: str, config: Any, offline: bool) -> Any:
        try:
            with quiet_transformers():
                vit, report = vit_cls.from_pretrained(
                    source, config=config, add_pooling_layer=False, use_mask_token=True,
                    local_files_only=offline, output_loading_info=True)
        except OSError as exc:
            if Path(source).is_dir():
                raise ConfigError(f"backbone 'vit_b16': {source} has no weights ({_one_line(exc)}); add them, or "
                                  f"set backbone.pretrained=false to train its architecture from scratch") from None
            raise self._unavailable(source, offline, exc) from None
        missing = sorted(k for k in report.get("missing_keys", ()) if "mask_token" not in k)
        mismatched = sorted(str(k) for k in report.get("mismatched_keys", ()))
        if missing or mismatched:
            warnings.warn(f"backbone 'vit_b16': '{source}' does not hold every ViTModel weight; randomly "
                          f"initialised: {(missing + mismatched)[:6]}", stacklevel=3)
        if vit.embeddings.mask_token is not None and any("mask_token" in k for k in report.get("missing_keys", ())):
            with torch.no_grad():  # not in the in21k checkpoint: SimMIM starts it at zero (HF does; make sure)
                vit.embeddings.mask_token.zero_()
        return vit

    @staticmethod
    def _unavailable(source: str, offline: bool, exc: Exception) -> ConfigError:
        from huggingface_hub import constants

        why = "the Hub is offline (HF_HUB_OFFLINE=1)" if offline else f"it could not be downloaded ({_one_line(exc)})"
        return ConfigError(
            f"backbone 'vit_b16': model '{source}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            f"{why}; fetch it with {hf_fetch_hint(source)}, or set backbone.model to a local directory "
            f"(or backbone.pretrained=false)")

    def _normalization(self, source: str, offline: bool, channels: int) -> tuple[list[float], list[float]]:
        """mean/std of the model's image processor (preprocessor_config.json), else 0.5/0.5 (the in21k one's)."""
        proc = self._processor_config(source, offline)
        mean, std = proc.get("image_mean", 0.5), proc.get("image_std", 0.5)
        if proc.get("do_normalize") is False:
            mean, std = 0.0, 1.0
        return _per_channel(mean, channels), _per_channel(std, channels)

    def _processor_config(self, source: str, offline: bool) -> dict[str, Any]:
        path: str | None = None
        if Path(source).is_dir():
            candidate = Path(source) / "preprocessor_config.json"
            path = str(candidate) if candidate.is_file() else None
        elif self.hparams.pretrained:  # the weights came from the Hub or its cache: so may the processor config
            try:
                from huggingface_hub import hf_hub_download

                path = hf_hub_download(source, "preprocessor_config.json", local_files_only=offline)
            except Exception:  # no processor config there (or no network): the in21k default applies
                path = None
        if path is None:
            return {}
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"backbone 'vit_b16': cannot read {path} ({_one_line(exc)})") from None
        return data if isinstance(data, dict) else {}

    # -- forward -----------------------------------------------------------------------------------------------
    def normalize(self, x: Tensor) -> Tensor:
        """What the transformer reads: (x - mean) / std with the model's processor statistics (default 0.5)."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Outputs:
        seq = self.vit(pixel_values=self.normalize(x), bool_masked_pos=mask,
                       interpolate_pos_encoding=self.interpolate).last_hidden_state
        return Outputs(pooled=seq[:, 0], tokens=seq)


def _side(value: Any, what: str, model: str) -> int:
    """A square size from an int or a pair."""
    if isinstance(value, int):
        return value
    a, b = value
    if a != b:
        raise ConfigError(f"backbone 'vit_b16': model '{model}' has a non-square {what} {tuple(value)}")
    return int(a)


def _per_channel(value: Any, channels: int) -> list[float]:
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
    if len(values) == channels:
        return values
    return [sum(values) / len(values)] * channels


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."
