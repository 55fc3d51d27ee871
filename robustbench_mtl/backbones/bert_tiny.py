"""A small, randomly initialised BERT for text datasets, with a WordPiece tokenizer trained on the data."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..data.base import DataInfo, cache_dir
from ..hparams import hp
from ..registry import BACKBONES
from ..results import atomic_write_text
from ..types import Outputs
from ._bert import BertEncoder, new_mlm_head
from .base import Backbone

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass(frozen=True)
class BertTinyHParams:
    vocab_size: int = hp(4000, ge=len(SPECIAL) + 1, help="WordPiece vocabulary trained on the training text")
    hidden_size: int = hp(64, ge=1, help="width D of every token (the shared representation)")
    num_layers: int = hp(2, ge=1, help="number of transformer blocks")
    num_heads: int = hp(2, ge=1, help="attention heads per block; must divide hidden_size")
    intermediate_size: int = hp(128, ge=1, help="hidden width of each block's MLP")
    dropout: float = hp(0.1, ge=0, lt=1, help="dropout on hidden states and attention (BERT's 0.1)")
    head_dropout: float = hp(0.1, ge=0, lt=1, help="dropout on the pooled output before the task heads (0.1)")
    init: str = hp("", help="directory written by `robustbench-mtl pretrain` to start from; '' = random init")


def train_tokenizer(texts: list[str], vocab_size: int, directory: str) -> None:
    """A lower-casing WordPiece tokenizer trained on `texts` with BERT's special tokens and [CLS] a [SEP]
    (b [SEP]) templates, saved as a transformers fast tokenizer in `directory`."""
    from tokenizers import BertWordPieceTokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False)
    tok = trainer._tokenizer  # the tokenizers.Tokenizer the wrapper trained
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(directory)


@BACKBONES.register("bert_tiny")
class BertTiny(Backbone):
    """Small BERT (randomly initialised) with a WordPiece tokenizer trained on the dataset's training text.

    Reference: Devlin et al. 2019 (BERT), built as transformers' `BertModel` from a `BertConfig`; the text
    counterpart of `vit_tiny`: it runs offline on every text dataset. The tokenizer is trained once per
    dataset (its training split's text) and vocabulary size, and cached beside the data under
    $ROBUSTBENCH_MTL_CACHE/tokenizers. pooled = dropout(pooler(CLS)), the task heads' input; tokens =
    last_hidden_state. Supports MLM (a new BertOnlyMLMHead tied to the word embeddings) and CLM (a causal
    mask on the auxiliary pass). Details: docs/methods.md#bert_tiny.
    """

    HParams = BertTinyHParams
    modalities = ("text",)
    has_tokens = True
    supports_causal = True

    @classmethod
    def tokenizer_dir(cls, hparams: BertTinyHParams, dataset: Any) -> str:
        texts = dataset.texts("train")
        key = hashlib.sha256(repr((dataset.name, dataset.source_rows().digest, hparams.vocab_size)).encode())
        directory = cache_dir() / "tokenizers" / f"{dataset.name}-wordpiece{hparams.vocab_size}-{key.hexdigest()[:12]}"
        if not (directory / "done").exists():  # trained once; `done` is written last, so a crash retrains
            directory.mkdir(parents=True, exist_ok=True)
            train_tokenizer(texts, hparams.vocab_size, str(directory))
            atomic_write_text(directory / "done", "")
        return str(directory)

    def __init__(self, hparams: BertTinyHParams, info: DataInfo) -> None:
        super().__init__(hparams, info)
        from transformers import BertConfig, BertModel

        from ..data._text import load_tokenizer

        self.tokenizer = load_tokenizer(info.tokenizer)
        self.config = BertConfig(vocab_size=len(self.tokenizer), hidden_size=hparams.hidden_size,
                                 num_hidden_layers=hparams.num_layers, num_attention_heads=hparams.num_heads,
                                 intermediate_size=hparams.intermediate_size, hidden_dropout_prob=hparams.dropout,
                                 attention_probs_dropout_prob=hparams.dropout,
                                 max_position_embeddings=max(512, info.input_shape[0]),
                                 pad_token_id=self.tokenizer.pad_token_id)
        self.encoder = BertEncoder(BertModel(self.config, add_pooling_layer=True), self.tokenizer.pad_token_id,
                                   self.tokenizer.sep_token_id, hparams.head_dropout)
        self.out_dim = hparams.hidden_size

    def word_embeddings(self) -> nn.Embedding:
        return self.encoder.bert.embeddings.word_embeddings

    def mlm_head(self) -> tuple[nn.Module, str]:
        """(head, where it comes from): a new BertOnlyMLMHead tied to the word embeddings."""
        return new_mlm_head(self.config, self.word_embeddings()), "new (random init), decoder tied to the embeddings"

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False) -> Outputs:
        return self.encoder(x, causal)
