"""The on-disk image store, memory-mapped splits, prefetching loaders and the batched image transforms."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robustbench_mtl.data import _store as store
from robustbench_mtl.data._augment import CropResize, Resize, image_transforms
from robustbench_mtl.data.base import TensorSplit
from robustbench_mtl.loaders import AuxStream, epoch_batches, prefetched


def _decode_counting(calls: list[str]):
    def decode(path: str, side: int) -> np.ndarray:
        calls.append(path)
        value = int(path.split("/")[-1]) % 256
        return np.full((3, side, side), value, dtype=np.uint8)
    return decode


def test_store_decodes_once_and_reopens_from_disk() -> None:
    calls: list[str] = []
    paths = [f"img/{i}" for i in range(10)]
    arr = store.build_store("unit-a", paths, 8, _decode_counting(calls))
    assert arr.shape == (10, 3, 8, 8) and arr.dtype == np.uint8 and isinstance(arr, np.memmap)
    assert [int(arr[i, 0, 0, 0]) for i in range(10)] == list(range(10))
    again = store.build_store("unit-a", paths, 8, _decode_counting(calls))
    assert len(calls) == 10 and np.array_equal(np.asarray(again), np.asarray(arr))  # no second decode
    assert store.store_path("unit-a").exists() and not list(store.store_path("unit-a").parent.glob(".*.tmp"))


def test_a_failed_build_leaves_no_store() -> None:
    def broken(path: str, side: int) -> np.ndarray:
        if path.endswith("3"):
            raise ValueError("undecodable")
        return np.zeros((3, side, side), np.uint8)

    with pytest.raises(ValueError, match="undecodable"):
        store.build_store("unit-b", [f"p/{i}" for i in range(6)], 4, broken, workers=1)
    assert not store.store_path("unit-b").exists() and not list(store.store_path("unit-b").parent.glob(".*.tmp"))


def _mapped(n: int = 40, side: int = 8) -> store.MappedSplit:
    arr = store.build_store(f"unit-m{n}-{side}", [f"x/{i}" for i in range(n)], side, _decode_counting([]))
    y = torch.arange(n) % 2
    return store.MappedSplit(store.as_tensor(arr), {"y": y}, y * 2, torch.zeros(n, dtype=torch.long), store=arr)


def test_mapped_split_reads_only_the_rows_asked_for_and_matches_memory() -> None:
    mapped = _mapped()
    memory = TensorSplit(mapped.x.clone(), mapped.y, mapped.g, mapped.e)
    idx = torch.tensor([5, 1, 33])
    assert torch.equal(mapped.inputs(idx), memory.inputs(idx))
    assert mapped.inputs(idx)[0, 0, 0, 0].item() == pytest.approx(5 / 255)
    moved = mapped.to("cpu")
    assert isinstance(moved, store.MappedSplit) and moved.x.data_ptr() == mapped.x.data_ptr()  # not copied
    sub = mapped.subset(torch.tensor([2, 3]))
    assert type(sub) is TensorSplit and len(sub) == 2 and sub.x[1, 0, 0, 0].item() == 3


def test_prefetched_loader_gives_the_same_batches_as_the_plain_one() -> None:
    mapped = _mapped()
    memory = TensorSplit(mapped.x.clone(), mapped.y, mapped.g, mapped.e)
    a = list(epoch_batches(mapped, 7, seed=3, epoch=1))
    b = list(epoch_batches(memory, 7, seed=3, epoch=1))
    assert len(a) == len(b) == 6
    assert all(torch.equal(p.x, q.x) and torch.equal(p.idx, q.idx) for p, q in zip(a, b))
    assert [(i, int(v)) for i, v in prefetched([1, 2, 3], lambda t: t * 10)] == [(1, 10), (2, 20), (3, 30)]


def test_rows_are_read_without_mapping_the_store_into_memory() -> None:
    mapped = _mapped(n=600, side=64)  # 600 x 12 KiB
    idx = torch.randperm(600)
    assert torch.equal(mapped.gather(idx), mapped.x[idx])  # positioned reads give the map's bytes
    assert torch.equal(mapped.gather(slice(5, 9)), mapped.x[5:9])

    def file_rss_kb() -> int:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssFile"))

    before = file_rss_kb()
    for _ in range(5):
        mapped.gather(torch.randperm(600))
    assert file_rss_kb() - before < 2048  # 35 MB read, not resident: the pages stay in the page cache only


def test_transforms_resize_for_eval_and_crop_for_training() -> None:
    x = torch.rand(4, 3, 12, 12)
    train, evaluate = image_transforms("paper", 8)
    assert isinstance(train, CropResize) and isinstance(evaluate, Resize)
    assert evaluate(x).shape == (4, 3, 8, 8) and evaluate(x[:, :, :8, :8]) is not None
    assert torch.equal(Resize(12)(x), x)  # already the model's size: untouched
    torch.manual_seed(0)
    a = train(x)
    torch.manual_seed(0)
    assert a.shape == (4, 3, 8, 8) and torch.equal(train(x), a)  # seeded: reproducible
    assert not torch.equal(a[0], a[1]) or not torch.equal(a[2], a[3])  # per-image crops
    none_train, _ = image_transforms("none", 8)
    assert none_train is None


def test_split_views_train_eval_and_raw() -> None:
    x = torch.randint(0, 255, (6, 3, 12, 12), dtype=torch.uint8)
    train, evaluate = image_transforms("paper", 8)
    split = TensorSplit(x, {"y": torch.zeros(6, dtype=torch.long)}, torch.zeros(6, dtype=torch.long),
                        torch.zeros(6, dtype=torch.long), train, evaluate)
    idx = torch.arange(6)
    assert split.raw(idx).shape == (6, 3, 12, 12)  # what auxiliary tasks take their views of
    assert split.inputs(idx).shape == (6, 3, 8, 8) and split.batch(idx).x.shape == (6, 3, 8, 8)
    assert not torch.equal(split.batch(idx).x, split.inputs(idx))  # training batches are augmented
    aux = AuxStream(split, 3, seed=0).next()
    assert aux.x.shape == (3, 3, 12, 12) and set(aux.g.tolist()) == {-1}
