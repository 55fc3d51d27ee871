"""Presets: flat or per method, from a dataset or a file; the paper's Waterbirds settings."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustbench_mtl.config import RunSpec, resolve
from robustbench_mtl.data.waterbirds import PAPER_METHODS
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.presets import load_preset, method_key
from robustbench_mtl.testing import check_dataset

PAPER = {"backbone": "vit_b16", "common": {"train.lr": 1e-3, "data.image_size": 384},
         "methods": {"erm": {"train.batch_size": 4}, "mt_l1+simclr": {"train.batch_size": 16, "l1.weight": 0.3679}}}


def test_a_structured_preset_gives_common_plus_the_methods_section() -> None:
    got = load_preset("paper", {"paper": PAPER}, "d", method_key("mt_l1", ("simclr",)))
    assert got.backbone == "vit_b16"
    assert got.overrides == {"train.lr": 1e-3, "data.image_size": 384, "train.batch_size": 16, "l1.weight": 0.3679}
    assert load_preset("paper", {"paper": PAPER}, "d", "erm").overrides["train.batch_size"] == 4
    with pytest.raises(ConfigError, match="preset 'paper' has no settings for method 'cvar_dro'; it has: erm, mt_l1"):
        load_preset("paper", {"paper": PAPER}, "d", "cvar_dro")
    flat = load_preset("quick", {"quick": {"train.epochs": 2}}, "d", "anything")
    assert flat.overrides == {"train.epochs": 2} and flat.backbone is None


def test_a_structured_preset_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(PAPER))
    assert load_preset(str(path), {}, "d", "erm").overrides == {"train.lr": 1e-3, "data.image_size": 384,
                                                              "train.batch_size": 4}


def _waterbirds_fixture(root: Path) -> None:
    from test_waterbirds import write_fixture  # the official-layout fixture
    from robustbench_mtl.data import waterbirds as wb

    (root / wb.WILDS_DIR).mkdir(parents=True)
    write_fixture(root / wb.WILDS_DIR)


@pytest.mark.parametrize("algo, aux", [("mt_l1", ("simclr",)), ("mt_l1", ("mim",)), ("jtt", ())])
def test_waterbirds_paper_preset_is_the_released_settings(tmp_path: Path, algo: str, aux: tuple[str, ...]) -> None:
    _waterbirds_fixture(tmp_path)
    r = resolve(RunSpec("waterbirds", algo, aux=aux, preset="paper", overrides=(f"data.root={tmp_path}",)))
    h = {scope: vars(v) for scope, v in r.hparams.items()}
    assert r.backbone == "vit_b16" and h["backbone"]["model"] == "google/vit-base-patch16-224-in21k"
    t = h["train"]
    assert (t["optimizer"], t["momentum"], t["weight_decay"], t["scheduler"], t["warmup_steps"], t["lr"],
            t["epochs"], t["patience"]) == ("sgd", 0.9, 0.0, "cosine", 500, 1e-3, 200, 10)
    assert h["data"]["image_size"] == 384 and h["data"]["augment"] == "paper"
    section = PAPER_METHODS[method_key(algo, aux)]
    for key, value in section.items():
        scope, _, field = key.partition(".")
        assert h[scope][field] == value, key
    stated = resolve(RunSpec("waterbirds", algo, aux=aux, preset="paper_stated_wd",
                             overrides=(f"data.root={tmp_path}", "train.lr=1e-4")))
    assert stated.hparams["train"].weight_decay == 0.01 and stated.hparams["train"].lr == 1e-4  # --set wins


def test_presets_of_every_dataset_check_out(tmp_path: Path) -> None:
    _waterbirds_fixture(tmp_path)
    check_dataset("waterbirds", root=str(tmp_path), image_size=16)  # goes over every preset section


@pytest.mark.parametrize("algo, aux", [("mt_l1", ("mlm",)), ("mt_l1", ("clm",)), ("erm", ())])
def test_civilcomments_small_paper_preset_is_the_released_text_settings(tmp_path: Path, algo: str,
                                                                        aux: tuple[str, ...]) -> None:
    from test_bert import save_bert
    from test_civilcomments import spec, write_csv

    from robustbench_mtl.data.civilcomments_small import PAPER_TEXT_METHODS

    write_csv(tmp_path / "civilcomments_v1.0" / "all_data_with_identities.csv", spec())
    bert = save_bert(tmp_path / "bert")  # the preset's bert-base-uncased, replaced offline by a tiny local one
    r = resolve(RunSpec("civilcomments_small", algo, aux=aux, preset="paper",
                        overrides=(f"data.root={tmp_path}", f"backbone.model={bert}")))
    t = vars(r.hparams["train"])
    assert r.backbone == "bert" and r.hparams["data"].max_length == 220
    assert (t["optimizer"], t["lr"], t["weight_decay"], t["no_decay"], t["adam_eps"], t["grad_clip"],
            t["scheduler"], t["epochs"]) == ("adamw", 1e-5, 0.01, "bias_norm", 1e-8, 1.0, "linear", 50)
    for key, value in PAPER_TEXT_METHODS[method_key(algo, aux)].items():
        scope, _, field = key.partition(".")
        assert vars(r.hparams[scope])[field] == value, key
    assert t["warmup_ratio"] == (0.06 if aux else 0.0)  # 6% warm-up for the multitask variants only
    released = resolve(RunSpec("civilcomments_small", algo, aux=aux, preset="paper_released_decay",
                               overrides=(f"data.root={tmp_path}", f"backbone.model={bert}")))
    assert released.hparams["train"].no_decay == "inverted"
