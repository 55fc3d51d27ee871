"""multi_mnist: reading torchvision's raw MNIST layout, disjoint pools, errors, and `prepare` (download stubbed)."""
from __future__ import annotations

import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

from robustbench_mtl.cli import main
from robustbench_mtl.data import multi_mnist as mm
from robustbench_mtl.errors import ConfigError, DataNotFoundError
from robustbench_mtl.registry import DATASETS
from robustbench_mtl.testing import check_dataset

SMALL = {"n_train": 40, "n_val": 30, "n_test": 50}  # pairs: the tests need few
FIX = "robustbench-mtl prepare multi_mnist"


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    """An idx file as the official ones are: big-endian magic, then each dimension, then the uint8 values."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def digits(per_class: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct random 28x28 'digits' (no two alike, so pixel hashes identify images) and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(10), per_class))  # interleaved, as the official files are
    return rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8), labels


def write_fixture(root: Path, train: tuple[int, ...] = (6,) * 10, test: tuple[int, ...] = (3,) * 10,
                  gz: bool = False) -> Path:
    """The four MNIST files in torchvision's layout <root>/MNIST/raw, `train`/`test` images per digit."""
    raw = mm.raw_dir(root)
    raw.mkdir(parents=True, exist_ok=True)
    for part, counts, seed in (("train", train, 0), ("test", test, 1)):
        images, labels = digits(counts, seed)
        for name, magic, array in zip(mm.FILES[part], (mm.IMAGES_MAGIC, mm.LABELS_MAGIC), (images, labels)):
            data = idx_bytes(magic, array)
            (raw / f"{name}.gz").write_bytes(gzip.compress(data)) if gz else (raw / name).write_bytes(data)
    return raw


def make(root: Path, **kw):
    cls = DATASETS.get("multi_mnist")
    return cls(cls.HParams(root=str(root), **{**SMALL, **kw}), "multi_mnist")


def hashes(images: torch.Tensor) -> set[str]:
    return {hashlib.sha1(im.numpy().tobytes()).hexdigest() for im in images}


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else ["<absent>"]


# -- reading --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_reads_plain_and_gz_files(tmp_path: Path, gz: bool) -> None:
    write_fixture(tmp_path, gz=gz)
    splits = make(tmp_path).load()
    assert {k: tuple(s.x.shape) for k, s in splits.items()} == {
        "train": (80, 1, 28, 56), "val": (30, 1, 28, 56), "test": (50, 1, 28, 56)}
    assert all(s.x.dtype == torch.uint8 for s in splits.values())
    assert make(tmp_path).info().environment_names == ("rho0.9", "rho0.8")


def test_plain_and_gz_give_the_same_pairs(tmp_path: Path) -> None:
    write_fixture(tmp_path / "a")
    write_fixture(tmp_path / "b", gz=True)
    a, b = make(tmp_path / "a").load(), make(tmp_path / "b").load()
    assert all(torch.equal(a[k].x, b[k].x) and torch.equal(a[k].y["right"], b[k].y["right"]) for k in a)


def test_pools_are_disjoint_and_test_is_mnist_test(tmp_path: Path) -> None:
    write_fixture(tmp_path)
    ds = make(tmp_path)
    pools = ds.pools()
    h = {k: hashes(images) for k, (images, _) in pools.items()}
    assert not (h["train"] & h["val"]) and not (h["train"] & h["test"]) and not (h["val"] & h["test"])
    official = mm.read_mnist(tmp_path)
    assert h["train"] | h["val"] == hashes(official["train"][0]) and h["test"] == hashes(official["test"][0])
    # stratified 5/6 : 1/6 of each digit of MNIST train (6 per digit in the fixture -> 5 and 1)
    assert torch.bincount(pools["train"][1]).tolist() == [5] * 10
    assert torch.bincount(pools["val"][1]).tolist() == [1] * 10
    splits = ds.load()
    for split in ("train", "val", "test"):  # every rendered half is an image of its own split's pool
        halves = hashes(splits[split].x[:, 0, :, :28]) | hashes(splits[split].x[:, 0, :, 28:])
        assert halves <= h[split], split


def test_check_dataset(tmp_path: Path) -> None:
    write_fixture(tmp_path)
    check_dataset("multi_mnist", root=str(tmp_path), **SMALL)


def test_root_from_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fixture(tmp_path)
    monkeypatch.setenv("ROBUSTBENCH_MTL_DATA", str(tmp_path))
    cls = DATASETS.get("multi_mnist")
    assert len(cls(cls.HParams(**SMALL), "multi_mnist").load()["test"]) == 50


def test_missing_files_name_prepare(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as exc:
        make(tmp_path).load()
    msg = str(exc.value)
    assert msg == (f"multi_mnist: no MNIST file {mm.raw_dir(tmp_path) / 'train-images-idx3-ubyte'} (nor "
                   f"train-images-idx3-ubyte.gz beside it); get the files with: {FIX} --root {tmp_path}")


@pytest.mark.parametrize("damage, words", [
    (lambda raw: (raw / "train-labels-idx1-ubyte").write_bytes(mm.IMAGES_MAGIC.to_bytes(4, "big")),
     "is not an MNIST idx file (magic number 2051, expected 2049)"),
    (lambda raw: (raw / "t10k-images-idx3-ubyte").write_bytes((raw / "t10k-images-idx3-ubyte").read_bytes()[:-5]),
     "holds 23515 bytes of data for dimensions [30, 28, 28], expected N x 28 x 28"),
    (lambda raw: (raw / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(mm.LABELS_MAGIC, np.arange(29) % 10)),
     "holds 30 images but"),
    (lambda raw: (raw / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(mm.LABELS_MAGIC, np.full(30, 11))),
     "has label 11, not a digit 0-9"),
])
def test_bad_files_are_one_line(tmp_path: Path, damage, words: str) -> None:
    damage(write_fixture(tmp_path))
    with pytest.raises(DataNotFoundError) as exc:
        make(tmp_path).load()
    msg = str(exc.value)
    assert words in msg and f"run: {FIX} --root {tmp_path}" in msg and "\n" not in msg, msg


def test_cut_gz_is_one_line(tmp_path: Path) -> None:
    raw = write_fixture(tmp_path, gz=True)
    gz = raw / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:100])
    with pytest.raises(DataNotFoundError, match=r"train-images-idx3-ubyte.gz cannot be read \(EOFError\); delete it"):
        make(tmp_path).load()


def test_class_missing_from_a_pool(tmp_path: Path) -> None:
    write_fixture(tmp_path, test=(3,) * 9 + (0,))
    with pytest.raises(ConfigError, match="multi_mnist: the test pool has no image of digit 9"):
        make(tmp_path).load()


# -- prepare (torchvision's downloader stubbed: tests never download) ---------------------------------------
def fake_mnist(monkeypatch: pytest.MonkeyPatch, fill) -> list[tuple[str, bool]]:
    """torchvision's MNIST in miniature: download=True runs `fill(raw)` (the downloads), then reads the files."""
    calls: list[tuple[str, bool]] = []

    class MNIST:
        mirrors = ["https://mirror.example/mnist/"]

        def __init__(self, root: str, train: bool = True, download: bool = False, **_) -> None:
            calls.append((root, download))
            raw = Path(root) / "MNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            print("Downloading https://mirror.example/mnist/train-images-idx3-ubyte.gz")  # must not reach stdout
            fill(raw)

    monkeypatch.setattr(torchvision.datasets, "MNIST", MNIST)
    return calls


def offline(raw: Path) -> None:
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b partial")  # opened before the error came
    raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://mirror.example/mnist/, got:\n"
                       "<urlopen error [Errno -3] Temporary failure in name resolution>\n")


@pytest.mark.parametrize("existing", [None, "other files", "partial raw"])
def test_prepare_offline_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: str | None) -> None:
    root = tmp_path / "new" / "root"
    if existing:
        (root / "celeba").mkdir(parents=True)
    if existing == "partial raw":
        mm.raw_dir(root).mkdir(parents=True)
        (mm.raw_dir(root) / "t10k-labels-idx1-ubyte").write_bytes(b"old")
    before = tree(tmp_path)
    calls = fake_mnist(monkeypatch, offline)
    res = invoke("prepare", "multi_mnist", "--root", str(root))
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert res.exit_code != 0 and len(errors) == 1 and res.stdout == "", res.output
    assert errors[0].startswith("error: multi_mnist: MNIST download failed (RuntimeError: Error downloading "
                                "train-images-idx3-ubyte.gz: Tried https://mirror.example/mnist/, got: <urlopen "
                                "error [Errno -3] Temporary failure in name resolution>); check the network"), errors
    assert f"in {mm.raw_dir(root)} by hand; then rerun: {FIX} --root {root}" in errors[0]
    assert ("predates this run" in errors[0]) == (existing == "partial raw") and "Traceback" not in res.output
    assert calls == [(str(root), True)]
    assert tree(tmp_path) == before  # what it made is gone, what was there is untouched


def test_prepare_downloads_and_verifies_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_mnist(monkeypatch, lambda raw: write_fixture(raw.parent.parent))
    res = invoke("prepare", "multi_mnist", "--root", str(tmp_path / "a"))  # official counts: a fixture is refused
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert res.exit_code != 0 and errors == [
        f"error: multi_mnist: the MNIST files in {mm.raw_dir(tmp_path / 'a')} have 6 train images of digit 0, the "
        f"official release has 5923; rerun: {FIX} --root {tmp_path / 'a'}"], res.output
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(mm, "OFFICIAL_COUNTS", {"train": (6,) * 10, "test": (3,) * 10})
    res = invoke("prepare", "multi_mnist", "--root", str(tmp_path / "b"))
    assert res.exit_code == 0 and res.stdout.strip() == str(mm.raw_dir(tmp_path / "b")), res.output
    assert "Downloading" in res.stderr
    assert len(make(tmp_path / "b").load()["train"]) == 80


def test_prepare_present_files_need_no_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fixture(tmp_path, gz=True)
    monkeypatch.setattr(torchvision.datasets, "MNIST", None)  # any download attempt would fail
    monkeypatch.setattr(mm, "OFFICIAL_COUNTS", {"train": (6,) * 10, "test": (3,) * 10})
    assert mm.MultiMNIST.prepare(tmp_path) == mm.raw_dir(tmp_path)


def test_prepare_present_but_damaged_is_kept_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = write_fixture(tmp_path)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"junk")
    monkeypatch.setattr(torchvision.datasets, "MNIST", None)
    before = tree(tmp_path)
    with pytest.raises(DataNotFoundError) as exc:
        mm.MultiMNIST.prepare(tmp_path)
    assert "are damaged or incomplete" in str(exc.value) and "predates this run, so it was kept" in str(exc.value)
    assert tree(tmp_path) == before


def test_official_counts_sum_to_the_release() -> None:
    assert sum(mm.OFFICIAL_COUNTS["train"]) == 60000 and sum(mm.OFFICIAL_COUNTS["test"]) == 10000


def test_full_size_defaults(tmp_path: Path) -> None:
    write_fixture(tmp_path, gz=True)
    h = DATASETS.get("multi_mnist").HParams(root=str(tmp_path))
    assert (h.n_train, h.n_val, h.n_test, h.rho_train, h.rho_val, h.rho_test) == (30000, 10000, 10000, (0.9, 0.8),
                                                                                    0.85, 0.0)
    assert sys.modules["robustbench_mtl.data.multi_mnist"].MultiMNIST.default_backbone == "lenet"
