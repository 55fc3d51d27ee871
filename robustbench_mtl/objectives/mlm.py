"""Masked language modelling auxiliary task (BERT): predict 15% of the tokens, corrupted 80/10/10."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backbones.base import Backbone
from ..data.base import DataInfo
from ..errors import ConfigError
from ..hparams import Choice, hp
from ..registry import OBJECTIVES
from ..types import Batch, Outputs
from .base import PAPER_WEIGHT_GRID, AuxiliaryTask

if TYPE_CHECKING:
    from ..model import Model


@dataclass(frozen=True)
class MLMHParams:
    weight: float = hp(1.0, Choice(PAPER_WEIGHT_GRID), ge=0, help="w_aux; the paper's grid is e^k, k in {-1, 0, 1}")
    probability: float = hp(0.15, gt=0, lt=1, help="fraction of non-special tokens selected (BERT: 0.15)")


def require_lm_backbone(name: str, backbone_name: str, backbone_cls: type, causal: bool = False) -> None:
    """One line if the backbone has no MLM head (or, for `causal`, cannot attend causally): checked at resolve time."""
    if not hasattr(backbone_cls, "mlm_head") or (causal and not getattr(backbone_cls, "supports_causal", False)):
        what = "that can attend causally" if causal else "with an MLM head"
        raise ConfigError(f"objective '{name}' needs a BERT-family backbone {what}, and '{backbone_name}' is not one; "
                          f"use --backbone bert_tiny or bert")


def mask_tokens(ids: Tensor, probability: float, special: Tensor, mask_id: int, vocab: int) -> tuple[Tensor, Tensor]:
    """(corrupted ids, labels) as transformers' DataCollatorForLanguageModeling: each non-special token is
    selected with `probability`; of those, 80% become [MASK], 10% a random token, 10% stay; labels are the
    original ids at selected positions and -100 elsewhere. Draws from torch's global generator (seeded and
    checkpointed by the runner) on the CPU, so a seed gives the same masks on every device."""
    cpu = ids.cpu()
    chosen = (torch.rand(cpu.shape) < probability) & ~torch.isin(cpu, special)
    labels = torch.where(chosen, cpu, torch.full_like(cpu, -100))
    replaced = (torch.rand(cpu.shape) < 0.8) & chosen
    randomised = (torch.rand(cpu.shape) < 0.5) & chosen & ~replaced
    corrupted = torch.where(replaced, torch.full_like(cpu, mask_id), cpu)
    corrupted = torch.where(randomised, torch.randint(vocab, cpu.shape), corrupted)
    return corrupted.to(ids.device), labels.to(ids.device)


@OBJECTIVES.register("mlm")
class MLM(AuxiliaryTask):
    """Masked language modelling: BERT's 15% / 80-10-10 corruption, cross-entropy on the selected tokens.

    Reference: Devlin et al. 2019 (BERT); the released mt_l1 code's MLM with transformers'
    DataCollatorForLanguageModeling(mlm_probability=0.15) and the pretrained BertOnlyMLMHead (docs/methods.md#mlm).
    [CLS], [SEP], [PAD] (every special token) are never selected. The head is the backbone's: the
    checkpoint's pretrained `cls.predictions` head, decoder tied to the word embeddings, where it has one;
    else a new head (config.json's `notes` say which). Loss = mean CE over the selected tokens (labels
    -100 elsewhere); the L1 penalty reads the corrupted pass's tokens.
    """

    HParams = MLMHParams
    modalities = ("text",)

    def __init__(self, hparams: MLMHParams, backbone: Backbone, info: DataInfo) -> None:
        super().__init__(hparams, backbone, info)
        require_lm_backbone("mlm", type(backbone).__name__, type(backbone))
        self.head, self.head_source = backbone.mlm_head()
        tok = backbone.tokenizer
        self.mask_id, self.vocab = int(tok.mask_token_id), len(tok)
        self.register_buffer("special", torch.tensor(sorted({int(i) for i in tok.all_special_ids})), persistent=False)

    @classmethod
    def check(cls, name: str, backbone_name: str, backbone_cls: type[Backbone], info: DataInfo) -> None:
        super().check(name, backbone_name, backbone_cls, info)
        require_lm_backbone(name, backbone_name, backbone_cls)

    def notes(self) -> dict[str, Any]:
        return {"head": self.head_source}

    def loss(self, model: "Model", batch: Batch, outputs: Outputs) -> tuple[Tensor, list[Outputs]]:
        corrupted, labels = mask_tokens(batch.x, self.hparams.probability, self.special.cpu(), self.mask_id,
                                        self.vocab)
        out = model(corrupted, heads=False)
        assert out.tokens is not None
        return token_loss(self.head(out.tokens), labels), [out]


def token_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the positions whose label is not -100; 0 (with a gradient) if there are none,
    where plain cross-entropy would give NaN (a tiny batch can select no token)."""
    if not bool((labels != -100).any()):
        return scores.float().sum() * 0.0
    return F.cross_entropy(scores.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
