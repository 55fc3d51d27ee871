"""What every text dataset shares: tokenising once into an int32 store, and token splits trimmed per batch."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ._store import MappedSplit, as_tensor, build_array
from .base import SPLITS, Dataset, TensorSplit

Text = Union[str, tuple[str, str]]  # one text, or a (premise, hypothesis) pair
CHUNK = 4096  # rows tokenised at a time: memory stays bounded whatever the dataset size


@dataclass(frozen=True)
class TextSource:
    """A text dataset's rows in its own order: the text (or pair), label, training group, split (0/1/2),
    the overlapping evaluation groups [N, G] where the dataset has them, and a digest of the source."""

    texts: Sequence[Text]
    y: np.ndarray
    g: np.ndarray
    split: np.ndarray
    digest: str
    groups: np.ndarray | None = None


@dataclass
class TokenSplit(MappedSplit):
    """Token ids [N, max_length] int32 padded with `pad_id`, and each row's length: a batch is read and
    trimmed to its longest row (BERT's cost grows with the sequence), as long ids for the embeddings."""

    lengths: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long), repr=False)
    pad_id: int = 0

    def gather(self, idx: Tensor | slice) -> Tensor:
        idx = torch.arange(len(self))[idx] if isinstance(idx, slice) else idx.cpu()
        longest = int(self.lengths[idx].max()) if len(idx) else 1
        return super().gather(idx)[:, :max(longest, 1)]

    def raw(self, idx: Tensor | slice, rows: Tensor | None = None) -> Tensor:
        return (self.gather(idx) if rows is None else rows).long()

    def subset(self, idx: Tensor) -> TensorSplit:
        """Kept as a token split (in memory): its rows keep their lengths, so batches stay trimmed."""
        idx = idx.to(self.g.device)
        cpu = idx.cpu()
        return TokenSplit(self.gather(cpu).cpu(), {k: v[idx] for k, v in self.y.items()}, self.g[idx], self.e[idx],
                          groups=None if self.groups is None else self.groups[idx], device=self.device, store=None,
                          prefetch=False, lengths=self.lengths[cpu], pad_id=self.pad_id)


def load_tokenizer(directory: str) -> Any:
    """The fast tokenizer saved in `directory` (no download: it is always a local directory)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def tokenizer_fingerprint(directory: str) -> str:
    """A digest of the tokenizer's files: token ids are only reused with the very same tokenizer."""
    h = hashlib.sha256()
    for f in sorted(Path(directory).glob("*")):
        if f.is_file() and f.suffix in (".json", ".txt", ".model"):
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def tokenize_rows(tokenizer: Any, texts: Sequence[Text], max_length: int, out: np.ndarray,
                  lengths: np.ndarray) -> None:
    """Token ids of `texts` into `out` [N, max_length] (truncated, padded) and their lengths, in chunks."""
    for start in range(0, len(texts), CHUNK):
        chunk = list(texts[start:start + CHUNK])
        pairs = isinstance(chunk[0], tuple)
        first, second = ([t[0] for t in chunk], [t[1] for t in chunk]) if pairs else (chunk, None)
        enc = tokenizer(first, second, truncation=True, max_length=max_length, padding="max_length")
        ids = np.asarray(enc["input_ids"], dtype=np.int32)
        out[start:start + len(chunk)] = ids
        lengths[start:start + len(chunk)] = np.asarray(enc["attention_mask"], dtype=np.int32).sum(1)


class TextDataset(Dataset):
    """A dataset of texts (or text pairs) with labels: a subclass gives `text_source()`; this class tokenises
    each split once with the run's tokenizer (set by `use_tokenizer`, from the backbone) into an int32
    store keyed by dataset, split, tokenizer, max_length and the source digest, and serves token splits."""

    modality = "text"
    default_backbone = "bert_tiny"
    version: ClassVar[str] = "1"

    def __init__(self, hparams: Any, name: str) -> None:
        super().__init__(hparams, name)
        self._tokenizer: str = ""
        self._text_source: TextSource | None = None

    def text_source(self) -> TextSource:
        """The rows of the dataset; readers of files check them here and raise one line naming a problem."""
        raise NotImplementedError

    def source_rows(self) -> TextSource:
        if self._text_source is None:
            self._text_source = self.text_source()
        return self._text_source

    def texts(self, split: str) -> list[str]:
        """The raw texts of `split` (both sides of a pair), e.g. to train a tokenizer on the training text."""
        src = self.source_rows()
        rows = [src.texts[i] for i in np.flatnonzero(src.split == SPLITS.index(split))]
        return [s for t in rows for s in (t if isinstance(t, tuple) else (t,))]

    def use_tokenizer(self, directory: str) -> None:
        self._tokenizer, self._splits = directory, None

    def tokenizer_dir(self) -> str:
        return self._tokenizer

    def input_shape(self, train: TensorSplit) -> tuple[int, ...]:
        return (self.hparams.max_length,)

    def store_key(self, split: str) -> str:
        parts = (self.name, self.version, split, tokenizer_fingerprint(self._tokenizer), self.hparams.max_length,
                 self.source_rows().digest)
        return f"{self.name}-v{self.version}-{split}-{hashlib.sha256(repr(parts).encode()).hexdigest()[:16]}"

    def load(self) -> dict[str, TensorSplit]:
        if self._splits is None:
            self._splits = self.generate()
        return self._splits

    def generate(self) -> dict[str, TensorSplit]:
        if not self._tokenizer:
            raise ConfigError(f"dataset '{self.name}' is text: it needs a text backbone (e.g. --backbone bert_tiny "
                              f"or bert) to tokenise it")
        src, tok = self.source_rows(), load_tokenizer(self._tokenizer)
        return {name: self._split(src, i, name, tok) for i, name in enumerate(SPLITS)}

    def _split(self, src: TextSource, i: int, name: str, tok: Any) -> TokenSplit:
        rows = np.flatnonzero(src.split == i)
        n, length = len(rows), self.hparams.max_length
        lengths = np.zeros(n, dtype=np.int32)
        ids = build_array(self.store_key(name), (n, length), np.int32,
                          lambda out: tokenize_rows(tok, [src.texts[r] for r in rows], length, out, lengths))
        lens = build_array(self.store_key(name) + "-lengths", (n,), np.int32, lambda out: out.__setitem__(
            slice(None), lengths if lengths.any() else (np.asarray(ids) != tok.pad_token_id).sum(1)))
        y, g = torch.as_tensor(src.y[rows], dtype=torch.long), torch.as_tensor(src.g[rows], dtype=torch.long)
        groups = None if src.groups is None else torch.as_tensor(src.groups[rows], dtype=torch.bool)
        return TokenSplit(as_tensor(ids), {"y": y}, g, torch.zeros(n, dtype=torch.long), groups=groups, store=ids,
                          lengths=torch.as_tensor(np.asarray(lens), dtype=torch.long), pad_id=int(tok.pad_token_id))

    def fingerprint(self) -> str:
        return hashlib.sha256(repr((self.source_rows().digest, tokenizer_fingerprint(self._tokenizer),
                                    self.hparams.max_length)).encode()).hexdigest()[:16]
