"""Causal language modelling auxiliary task (BERT as a decoder): predict each next token of the batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..backbones.base import Backbone
from ..data.base import DataInfo
from ..hparams import Choice, hp
from ..registry import OBJECTIVES
from ..types import Batch, Outputs
from .base import PAPER_WEIGHT_GRID, AuxiliaryTask
from .mlm import require_lm_backbone, token_loss

if TYPE_CHECKING:
    from ..model import Model


@dataclass(frozen=True)
class CLMHParams:
    weight: float = hp(1.0, Choice(PAPER_WEIGHT_GRID), ge=0, help="w_aux; the paper's grid is e^k, k in {-1, 0, 1}")


@OBJECTIVES.register("clm")
class CLM(AuxiliaryTask):
    """Causal language modelling: the auxiliary pass attends causally; the MLM head predicts the next token.

    Reference: the released mt_l1 code's `erm_mt2` on text (docs/methods.md#clm): the model loaded with
    is_decoder=True, switched to causal attention for the auxiliary pass only (the end-task pass stays
    bidirectional); transformers' DataCollatorForLanguageModeling(mlm=False): labels = the input ids with
    [PAD] set to -100 ([CLS] and [SEP] stay targets); loss = CE(scores[:, :-1], labels[:, 1:]), the mean
    over predicted positions, with the same (pretrained where available) BertOnlyMLMHead as `mlm`.
    """

    HParams = CLMHParams
    modalities = ("text",)

    def __init__(self, hparams: CLMHParams, backbone: Backbone, info: DataInfo) -> None:
        super().__init__(hparams, backbone, info)
        require_lm_backbone("clm", type(backbone).__name__, type(backbone), causal=True)
        self.head, self.head_source = backbone.mlm_head()
        self.pad_id = int(backbone.tokenizer.pad_token_id)

    @classmethod
    def check(cls, name: str, backbone_name: str, backbone_cls: type[Backbone], info: DataInfo) -> None:
        super().check(name, backbone_name, backbone_cls, info)
        require_lm_backbone(name, backbone_name, backbone_cls, causal=True)

    def notes(self) -> dict[str, Any]:
        return {"head": self.head_source}

    def loss(self, model: "Model", batch: Batch, outputs: Outputs) -> tuple[Tensor, list[Outputs]]:
        ids = batch.x
        labels = ids.masked_fill(ids == self.pad_id, -100)
        out = model(ids, heads=False, causal=True)
        assert out.tokens is not None
        scores = self.head(out.tokens)
        return token_loss(scores[:, :-1], labels[:, 1:]), [out]
