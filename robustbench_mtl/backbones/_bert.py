"""What the BERT-family backbones share: inputs from token ids, the causal switch, pooled output, MLM head."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..types import Outputs


def token_types(ids: Tensor, sep_id: int) -> Tensor:
    """BERT segment ids from the token ids: 0 up to and including the first [SEP], 1 after (a text pair's
    second sentence and its [SEP]); padding after the last [SEP] is masked anyway."""
    is_sep = (ids == sep_id).long()
    return (is_sep.cumsum(1) - is_sep).clamp(max=1)


def attention_mask(ids: Tensor, pad_id: int, causal: bool) -> Tensor:
    """[B, L] key mask of real tokens; with `causal`, the [B, 1, L, L] mask that also hides later positions
    (CLM on the auxiliary pass only: the end-task pass stays bidirectional, as the released code's)."""
    keys = ids != pad_id
    if not causal:
        return keys.long()
    length = ids.shape[1]
    lower = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
    return (lower[None, None] & keys[:, None, None, :])


class BertEncoder(nn.Module):
    """A transformers BertModel read from token ids, as every BERT backbone uses it: attention and segment
    ids derived from the ids, pooled = dropout(pooler(CLS)) (the released code's head input, METHODS
    §1.3), tokens = last_hidden_state (what the L1 penalty reads, padding included, as the released code)."""

    def __init__(self, bert: nn.Module, pad_id: int, sep_id: int, head_dropout: float) -> None:
        super().__init__()
        self.bert, self.pad_id, self.sep_id = bert, pad_id, sep_id
        self.dropout = nn.Dropout(head_dropout)

    def forward(self, ids: Tensor, causal: bool = False) -> Outputs:
        out = self.bert(input_ids=ids, attention_mask=attention_mask(ids, self.pad_id, causal),
                        token_type_ids=token_types(ids, self.sep_id))
        return Outputs(pooled=self.dropout(out.pooler_output), tokens=out.last_hidden_state)


def new_mlm_head(config: Any, embeddings: nn.Embedding) -> nn.Module:
    """A randomly initialised BertOnlyMLMHead (dense + GELU + LayerNorm + decoder) whose decoder weight is
    tied to the input word embeddings, as BERT's."""
    from transformers.models.bert.modeling_bert import BertOnlyMLMHead

    head = BertOnlyMLMHead(config)
    head.predictions.decoder.weight = embeddings.weight
    return head


def special_ids(tokenizer: Any) -> list[int]:
    """Ids that masked and causal language modelling never select as targets to corrupt ([CLS], [SEP], [PAD]...)."""
    return sorted({int(i) for i in tokenizer.all_special_ids})
