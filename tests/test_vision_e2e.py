"""The vision side end to end on tiny datasets in the official layouts: the headline command with --root, tiny
ViT and timm backbones, MIM, CelebA; group counts per split from config.json."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from robustbench_mtl.cli import main
from robustbench_mtl.data import waterbirds as wb

FAST = ("--set", "data.image_size=16", "--set", "train.epochs=1", "--set", "train.batch_size=8", "--quiet")
TINY_VIT = ("--set", "backbone.patch_size=4", "--set", "backbone.hidden_size=16", "--set", "backbone.num_layers=1",
            "--set", "backbone.num_heads=2", "--set", "backbone.intermediate_size=32")


def write_waterbirds(data_dir: Path, per_group: int = 3) -> dict[str, list[int]]:
    """`per_group` images per group per split, of varied sizes, one of them grayscale; returns group counts."""
    rows, counts = [], {s: [0, 0, 0, 0] for s in ("train", "val", "test")}
    for split, name in enumerate(counts):
        for y in (0, 1):
            for place in (0, 1):
                for k in range(per_group):
                    rows.append({"img_filename": f"{y}.Bird/B_{split}{place}{k}.jpg", "y": y, "split": split,
                                 "place": place, "place_filename": "/x/y.jpg"})
                    counts[name][2 * y + place] += 1
    meta = pd.DataFrame(rows)
    for i, r in meta.iterrows():
        path = data_dir / r.img_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        size = (40 + 7 * (int(i) % 5), 30 + 11 * (int(i) % 3))
        colour = (10 * int(i) % 255, 200 if r.place else 50, 120 if r.y else 30)
        img = Image.new("RGB", size, colour)
        (img.convert("L") if i == 5 else img).save(path, quality=95)  # one grayscale JPEG
    meta.index = pd.RangeIndex(1, len(meta) + 1, name="img_id")
    meta.to_csv(data_dir / "metadata.csv")
    return counts


@pytest.fixture
def root(tmp_path: Path) -> tuple[Path, dict[str, list[int]]]:
    counts = write_waterbirds(tmp_path / "data" / wb.WILDS_DIR)
    return tmp_path / "data", counts


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", *args, *FAST, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "final.json").exists()
    return json.loads((out / "config.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("aux, backbone", [("simclr", TINY_VIT), ("mim", TINY_VIT),
                                           ("simclr", ("--backbone", "timm", "--set", "backbone.model=test_vit",
                                                       "--set", "backbone.pretrained=false"))])
def test_headline_command_on_a_waterbirds_fixture(root, tmp_path: Path, aux: str, backbone: tuple[str, ...]) -> None:
    data, counts = root
    config = _run(tmp_path, "--algo", "mt_l1", "--aux", aux, "--data", "waterbirds", "--root", str(data), *backbone)
    assert config["hparams"]["data"]["root"] == str(data)
    assert config["data"]["train_group_counts"] == counts["train"]
    assert config["data"]["sizes"] == {k: sum(v) for k, v in counts.items()}
    assert config["objectives"] == [aux, "l1"]


@pytest.mark.slow
def test_celeba_fixture_end_to_end(tmp_path: Path) -> None:
    from test_conformance import write_celeba

    write_celeba(tmp_path / "data" / "celeba")
    config = _run(tmp_path, "--algo", "mt_l1", "--aux", "simclr", "--data", "celeba", "--root",
                  str(tmp_path / "data"), *TINY_VIT)
    assert config["data"]["train_group_counts"] == [1, 1, 1, 1]
    assert config["data"]["sizes"] == {"train": 4, "val": 4, "test": 4}
