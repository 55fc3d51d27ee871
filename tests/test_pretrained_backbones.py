"""The pretrained image backbones vit_b16, timm and resnet50: loading, shapes, masking, objectives, CLI, offline.

Nothing here reaches the network: every test runs with HF_HUB_OFFLINE=1 and empty, temporary HF_HOME and
TORCH_HOME, pretrained weights come from tiny checkpoints saved to temporary directories, and torch's
downloader is replaced where a test needs it to fail.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from robustbench_mtl import testing
from robustbench_mtl.algorithms.mt_l1 import MTL1
from robustbench_mtl.cli import main
from robustbench_mtl.config import TrainHParams
from robustbench_mtl.data.base import DataInfo
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.hparams import NoHParams, build
from robustbench_mtl.model import Model
from robustbench_mtl.registry import BACKBONES, OBJECTIVES
from robustbench_mtl.types import Batch

ROOT = Path(__file__).resolve().parents[1]
INFO32 = DataInfo("toyimg", "image", (3, 32, 32), {"y": 2}, ("g0", "g1"), (8, 8))
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network and no user cache: HF offline, HF_HOME and TORCH_HOME in this test's temp dir."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    # huggingface_hub reads these once, at import: patch what transformers and timm consult at call time
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))


def _save_vit(path: Path, processor: dict | None = None, **config) -> Path:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(123)
    model = ViTModel(ViTConfig(**{**TINY, "patch_size": 4, "image_size": 16, **config}), add_pooling_layer=False)
    model.save_pretrained(path)
    if processor is not None:
        (path / "preprocessor_config.json").write_text(json.dumps(processor))
    return path


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 1-layer ViT (hidden 32, patch 4) trained for 16 px: a stand-in for the in21k checkpoint."""
    return _save_vit(tmp_path_factory.mktemp("tiny_vit"))


def backbone(name: str, info: DataInfo = INFO32, **overrides):  # type: ignore[no-untyped-def]
    cls = BACKBONES.get(name)
    return cls(build(cls.HParams, "backbone", [overrides]), info)


def images(n: int, side: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def make_batch(n: int, side: int = 32, seed: int = 1) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(images(n, side, seed), {"y": torch.randint(0, 2, (n,), generator=gen)},
                 torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), torch.arange(n))


def make_model(bb, info: DataInfo = INFO32, **objectives: dict) -> Model:  # type: ignore[no-untyped-def]
    objs = {}
    for name, over in objectives.items():
        cls = OBJECTIVES.get(name)
        objs[name] = cls(cls.HParams(**over), bb, info)
    return Model(bb, info.tasks, objs)


# -- the kit's conformance checks ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,overrides", [
    ("vit_b16", {"pretrained": True}),
    ("vit_b16", {"pretrained": False}),
    ("timm", {"model": "resnet10t", "pretrained": False}),
    ("timm", {"model": "vit_tiny_patch16_224", "pretrained": False}),
    ("resnet50", {"pretrained": False}),
], ids=["vit_b16", "vit_b16-scratch", "timm-resnet10t", "timm-vit_tiny", "resnet50"])
def test_check_backbone(name: str, overrides: dict, tiny_vit: Path) -> None:
    if name == "vit_b16":
        overrides = {**overrides, "model": str(tiny_vit)}
    testing.check_backbone(name, **overrides)


def test_importing_the_modules_stays_light() -> None:
    code = ("import sys, robustbench_mtl.backbones.vit_b16, robustbench_mtl.backbones.timm, "
            "robustbench_mtl.backbones.resnet50; "
            "print([m for m in ('transformers', 'timm', 'torchvision', 'huggingface_hub') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.stdout.strip() == "[]"
    assert BACKBONES.get("timm").__module__ == "robustbench_mtl.backbones.timm"


# -- vit_b16 ---------------------------------------------------------------------------------------------------
def test_vit_b16_loads_the_checkpoint_from_a_local_directory(tiny_vit: Path) -> None:
    from transformers import ViTModel

    saved = ViTModel.from_pretrained(tiny_vit, add_pooling_layer=False)
    bb = backbone("vit_b16", model=str(tiny_vit))
    for key, value in saved.state_dict().items():
        assert torch.equal(bb.vit.state_dict()[key], value), key
    fresh = backbone("vit_b16", model=str(tiny_vit), pretrained=False).vit.state_dict()  # random weights
    assert all(fresh[k].shape == v.shape for k, v in saved.state_dict().items()  # the same architecture,
               if "position_embeddings" not in k)  # built for the data's 32 px (no checkpoint to match)
    assert sum(not torch.equal(fresh[k], v) for k, v in saved.state_dict().items() if v.dim() == 2) > 4
    assert (bb.out_dim, bb.patch_size, bb.grid, bb.num_channels) == (32, 4, 8, 3)
    assert bb.vit.config._attn_implementation == "sdpa" and bb.vit.pooler is None
    assert torch.equal(bb.mean.flatten(), torch.full((3,), 0.5)) and torch.equal(bb.std, bb.mean)  # in21k's
    assert not any("mean" in k or "std" in k for k in bb.state_dict())  # statistics are not checkpoint state


def test_vit_b16_pooled_is_cls_after_the_final_layernorm(tiny_vit: Path) -> None:
    bb = backbone("vit_b16", model=str(tiny_vit)).eval()
    x = images(2)
    with torch.no_grad():
        out = bb(x)
        ref = bb.vit(pixel_values=(x - 0.5) / 0.5, interpolate_pos_encoding=True).last_hidden_state
    assert out.pooled.shape == (2, 32) and out.tokens.shape == (2, 1 + 64, 32)
    assert torch.equal(out.tokens, ref) and torch.equal(out.pooled, ref[:, 0])
    ln = bb.vit.layernorm  # the last op: every token has (about) the LN's mean bias / unit variance
    assert torch.allclose(((out.tokens - ln.bias) / ln.weight).mean(-1), torch.zeros(2, 65), atol=1e-5)


def test_vit_b16_interpolates_position_embeddings_to_the_data_size(tiny_vit: Path) -> None:
    bb = backbone("vit_b16", model=str(tiny_vit))  # checkpoint for 16 px (4x4 patches), data 32 px (8x8)
    assert bb.interpolate and bb.checkpoint_size == 16 and bb.vit.config.image_size == 32
    assert bb.vit.embeddings.position_embeddings.shape == (1, 1 + 16, 32)  # the trained table is kept
    pos = bb.vit.embeddings.interpolate_pos_encoding(torch.zeros(1, 65, 32), 32, 32)
    assert pos.shape == (1, 65, 32) and torch.equal(pos[:, 0], bb.vit.embeddings.position_embeddings[:, 0])
    bb.eval()
    with torch.no_grad():
        a = bb(images(2)).tokens
    assert torch.isfinite(a).all()
    same = backbone("vit_b16", DataInfo("s", "image", (3, 16, 16), {"y": 2}, (), ()), model=str(tiny_vit))
    assert not same.interpolate and same.grid == 4 and same(images(2, 16)).tokens.shape == (2, 17, 32)
    scratch = backbone("vit_b16", model=str(tiny_vit), pretrained=False)  # no checkpoint: built at 32 px
    assert not scratch.interpolate and scratch.vit.embeddings.position_embeddings.shape == (1, 65, 32)


def test_vit_b16_mask_token_starts_at_zero_and_masks(tiny_vit: Path) -> None:
    from safetensors.torch import load_file

    assert not any("mask_token" in k for k in load_file(tiny_vit / "model.safetensors"))  # as in21k: absent
    torch.manual_seed(0)
    bb = backbone("vit_b16", model=str(tiny_vit)).eval()
    assert bb.vit.embeddings.mask_token.shape == (1, 1, 32) and not bb.vit.embeddings.mask_token.any()
    x, mask = images(2), torch.zeros(2, 64, dtype=torch.bool)
    mask[:, ::3] = True
    pix = mask.view(2, 8, 8).repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1)
    changed = torch.where(pix, torch.rand_like(x), x)
    with torch.no_grad():
        assert not torch.allclose(bb(x, mask).pooled, bb(x).pooled)  # masking changes the output
        assert torch.allclose(bb(x, mask).tokens, bb(changed, mask).tokens, atol=1e-6)  # masked pixels unseen
    bb(x, mask).tokens.sum().backward()
    assert bb.vit.embeddings.mask_token.grad.abs().sum() > 0  # the mask token is trained


def test_vit_b16_reads_the_processor_normalisation(tmp_path: Path) -> None:
    path = _save_vit(tmp_path / "vit", processor={"image_mean": [0.485, 0.456, 0.406],
                                                  "image_std": [0.229, 0.224, 0.225], "do_normalize": True})
    bb = backbone("vit_b16", model=str(path))
    x = images(1)
    assert torch.allclose(bb.normalize(x)[0, 1], (x[0, 1] - 0.456) / 0.224)


def test_vit_b16_configuration_errors(tiny_vit: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="multiple of the model's patch size 4"):
        backbone("vit_b16", DataInfo("odd", "image", (3, 30, 30), {"y": 2}, (), ()), model=str(tiny_vit))
    with pytest.raises(ConfigError, match="1 channels"):
        backbone("vit_b16", DataInfo("gray", "image", (1, 32, 32), {"y": 2}, (), ()), model=str(tiny_vit))
    with pytest.raises(ConfigError, match="not a directory"):
        backbone("vit_b16", model=str(tmp_path / "missing"))
    (tmp_path / "config_only").mkdir()
    from transformers import ViTConfig

    ViTConfig(**TINY).save_pretrained(tmp_path / "config_only")
    with pytest.raises(ConfigError, match="has no weights.*backbone.pretrained=false"):
        backbone("vit_b16", model=str(tmp_path / "config_only"))
    assert backbone("vit_b16", model=str(tmp_path / "config_only"), pretrained=False).out_dim == 32


def test_vit_b16_offline_without_the_checkpoint_is_one_clear_error() -> None:
    with pytest.raises(ConfigError) as err:
        backbone("vit_b16")  # the default, google/vit-base-patch16-224-in21k, pretrained
    msg = str(err.value)
    assert "\n" not in msg and "'google/vit-base-patch16-224-in21k'" in msg
    assert "`hf download google/vit-base-patch16-224-in21k`" in msg
    with pytest.raises(ConfigError, match="hf download someone/other-vit"):
        backbone("vit_b16", model="someone/other-vit", pretrained=False)


def test_vit_b16_scratch_offline_falls_back_to_the_vit_b16_architecture() -> None:
    info = DataInfo("s", "image", (3, 32, 32), {"y": 2}, (), ())
    with pytest.warns(UserWarning, match="ViTConfig defaults"):
        bb = backbone("vit_b16", info, pretrained=False)
    c = bb.vit.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size, c.patch_size) == \
        (768, 12, 12, 3072, 16)
    assert bb.out_dim == 768 and bb.grid == 2


# -- MIM, SimCLR and L1 with the new backbones ---------------------------------------------------------------
def test_mim_with_vit_b16_has_the_papers_geometry(tmp_path: Path) -> None:
    # A ViT with patch 16 and a 224 checkpoint, run at 384 px: the paper's setting, with a tiny width.
    path = _save_vit(tmp_path / "p16", patch_size=16, image_size=224)
    info = DataInfo("big", "image", (3, 384, 384), {"y": 2}, (), ())
    bb = backbone("vit_b16", info, model=str(path))
    assert (bb.patch_size, bb.grid, bb.interpolate) == (16, 24, True)
    mim = make_model(bb, info, mim={}).objectives["mim"]
    assert (mim.rand_size, mim.scale, mim.mask_count) == (12, 2, 87)  # 32 px blocks, ceil(0.6 * 144)
    mask = mim.make_mask(2, torch.device("cpu"))
    assert mask.shape == (2, 576) and mask.sum(1).tolist() == [348, 348]
    out = bb(images(2, 384), mask)
    assert out.tokens.shape == (2, 577, 32) and mim.reconstruct(out.tokens).shape == (2, 3, 384, 384)


def test_mim_l1_and_simclr_train_vit_b16(tiny_vit: Path) -> None:
    torch.manual_seed(0)
    model = make_model(backbone("vit_b16", model=str(tiny_vit)), mim={}, simclr={}, l1={})
    algo = MTL1(model, NoHParams(), TrainHParams(), INFO32, total_steps=4)
    before = model.backbone.vit.embeddings.mask_token.detach().clone()
    metrics = algo.update(make_batch(4), make_batch(4, seed=2))
    assert all(math.isfinite(v) for v in metrics.values())
    assert all(any(k.endswith(name) for k in metrics) for name in ("mim", "simclr", "l1"))
    l1 = model.objectives["l1"]  # all_tokens: the whole last_hidden_state of every pass, masked one included
    assert l1.normalizers == {"end": 4 * 65 * 32, "mim/0": 4 * 65 * 32, "simclr/0": 4 * 65 * 32,
                              "simclr/1": 4 * 65 * 32}
    assert not torch.equal(before, model.backbone.vit.embeddings.mask_token)  # MIM trained the mask token
    mim = model.objectives["mim"]
    assert (mim.patch_size, mim.grid, mim.rand_size, mim.scale) == (4, 8, 4, 2)  # default block: 2 patches


@pytest.mark.parametrize("name,overrides", [
    ("timm", {"model": "resnet10t", "pretrained": False}),
    ("timm", {"model": "vit_tiny_patch16_224", "pretrained": False}),
    ("resnet50", {"pretrained": False}),
], ids=["timm-resnet10t", "timm-vit_tiny", "resnet50"])
def test_simclr_and_l1_train_the_other_backbones(name: str, overrides: dict) -> None:
    torch.manual_seed(0)
    bb = backbone(name, **overrides)
    model = make_model(bb, simclr={}, l1={})
    aux = make_batch(4, seed=2)
    loss, passes = model.objectives["simclr"].loss(model, aux, model(aux.x))
    assert len(passes) == 2 and math.isfinite(loss.item())
    loss.backward()
    assert sum(p.grad.abs().sum().item() for p in bb.parameters() if p.grad is not None) > 0
    assert passes[0].tokens is not None and passes[0].tokens.shape[::2] == (4, bb.out_dim)
    assert model.objectives["l1"].loss({"end": passes[0]}).item() > 0
    with pytest.raises(ConfigError, match="patch masking"):  # no masking: MIM says which backbone to use
        OBJECTIVES.get("mim").check("mim", name, type(bb), INFO32)


# -- timm ------------------------------------------------------------------------------------------------------
def test_timm_vit_tokens_pooling_and_size() -> None:
    bb = backbone("timm", model="vit_tiny_patch16_224", pretrained=False).eval()
    assert bb.net.patch_embed.img_size == (32, 32) and bb.out_dim == 192
    assert torch.equal(bb.mean.flatten(), torch.full((3,), 0.5))  # its pretrained_cfg's statistics
    with torch.no_grad():
        out = bb(images(2))
    assert out.tokens.shape == (2, 1 + 4, 192) and torch.equal(out.pooled, out.tokens[:, 0])  # [CLS] pooling
    assert not type(bb).supports_masking


def test_timm_cnn_tokens_are_the_flattened_feature_map() -> None:
    bb = backbone("timm", model="resnet10t", pretrained=False).eval()
    assert torch.allclose(bb.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    with torch.no_grad():
        feats = bb.net.forward_features(bb.normalize(images(2, 64)))
        out = bb(images(2, 64))
    assert feats.shape == (2, 512, 2, 2) and out.tokens.shape == (2, 4, 512) and out.pooled.shape == (2, 512)
    assert torch.equal(out.tokens[:, 1], feats[:, :, 0, 1])  # row-major over (h, w)
    assert torch.allclose(out.tokens.mean(1), out.pooled, atol=1e-6)  # global average pooling of the map


def test_timm_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="unknown timm model 'resnet10x'; did you mean"):
        backbone("timm", model="resnet10x")
    with pytest.raises(ConfigError, match="no pretrained weights"):
        backbone("timm", model="cspresnet50w")
    with pytest.raises(ConfigError) as err:  # offline, nothing cached: one line with the fetch command
        backbone("timm", model="resnet10t")
    msg = str(err.value)
    assert "\n" not in msg and "'resnet10t'" in msg and "`hf download timm/resnet10t.c3_in1k`" in msg
    assert BACKBONES.get("timm").HParams().model == "vit_base_patch16_224.orig_in21k"


def test_timm_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(ConfigError, match=r"needs the timm package: pip install -e \"\.\[vision\]\""):
        backbone("timm", model="resnet10t", pretrained=False)


# -- resnet50 --------------------------------------------------------------------------------------------------
def test_resnet50_shapes_and_normalisation() -> None:
    bb = backbone("resnet50", pretrained=False).eval()
    with torch.no_grad():
        out = bb(images(2, 64))
    assert bb.out_dim == 2048 and out.pooled.shape == (2, 2048) and out.tokens.shape == (2, 4, 2048)
    assert torch.allclose(out.tokens.mean(1), out.pooled, atol=1e-6)
    assert torch.allclose(bb.normalize(torch.ones(1, 3, 1, 1)).flatten(),
                          (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))
    assert not any(k.startswith("net.fc.") for k in bb.state_dict())


def test_resnet50_loads_torchvision_weights_from_the_torch_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import ResNet50_Weights, resnet50

    url = ResNet50_Weights.IMAGENET1K_V2.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    assert str(cached).startswith(os.environ["TORCH_HOME"])
    torch.manual_seed(7)
    reference = resnet50().state_dict()
    cached.parent.mkdir(parents=True)
    torch.save(reference, cached)

    def no_network(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    bb = backbone("resnet50")
    assert torch.equal(bb.net.conv1.weight, reference["conv1.weight"])
    assert torch.equal(bb.net.layer4[2].bn3.running_var, reference["layer4.2.bn3.running_var"])
    cached.unlink()
    with pytest.raises(ConfigError) as err:
        backbone("resnet50")
    msg = str(err.value)
    assert "\n" not in msg and "IMAGENET1K_V2" in msg and str(cached) in msg and f"curl -L {url}" in msg


# -- end to end through the command line ---------------------------------------------------------------------
def _run(out: Path, *args: str):  # type: ignore[no-untyped-def]
    # aux batches of 16 keep these CPU runs short; the objectives see the same code path
    return CliRunner().invoke(main, ["run", "--algo", "mt_l1", "--data", "toybirds", "--set", "train.epochs=1",
                                     "--set", "train.aux_batch_size=16", "--threads", "1", "--quiet",
                                     "--out", str(out), *args])


@pytest.mark.slow
@pytest.mark.parametrize("aux", ["simclr", "mim"])
def test_cli_runs_vit_b16_from_a_local_checkpoint(aux: str, tiny_vit: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = _run(out, "--aux", aux, "--backbone", "vit_b16", "--set", f"backbone.model={tiny_vit}",
               "--set", "backbone.pretrained=true")
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == "vit_b16" and config["objectives"] == [aux, "l1"]
    assert config["hparams"]["backbone"]["model"] == str(tiny_vit)
    assert json.loads((out / "final.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_cli_runs_a_timm_cnn(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = _run(out, "--aux", "simclr", "--backbone", "timm", "--set", "backbone.model=resnet10t",
               "--set", "backbone.pretrained=false")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "final.json").read_text())["status"] == "finished"


def test_cli_offline_default_vit_b16_is_one_error_line_and_writes_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_hf"),
           "TORCH_HOME": str(tmp_path / "empty_torch"), "NO_COLOR": "1", "COLUMNS": "400"}
    res = subprocess.run([sys.executable, "-m", "robustbench_mtl", "run", "--algo", "mt_l1", "--aux", "simclr",
                          "--data", "toybirds", "--backbone", "vit_b16", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode != 0
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and len(lines) == 1, res.stdout + res.stderr
    assert "google/vit-base-patch16-224-in21k" in errors[0]
    assert "hf download google/vit-base-patch16-224-in21k" in errors[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
    assert not (tmp_path / "empty_torch").exists()
