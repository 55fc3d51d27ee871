"""SubpopBench's image datasets read from the metadata its download script writes (MetaShift, ImageNetBG).

The metadata is a CSV with the columns filename, y, a, split (SubpopBench's `SubpopDataset` reads them by name);
`filename` is the image's path as the script wrote it: `<data_path>/<dataset dir>/...`, absolute or relative to
wherever the script ran. Each name is taken relative to the dataset directory from the part after its last
component equal to that directory's name (so a metadata file written elsewhere still reads the images beside it),
else whole; either way it must stay inside the dataset directory (`Inside`), before any image is touched.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..errors import DataNotFoundError
from ..hparams import hp
from ._augment import CropResize, Resize
from ._files import Inside, OutsideRoot, removed_on_failure
from ._images import DEFAULT_ROOT, ImageFiles, Invalid, Rows, Source, stat_digest
from ._store import MappedSplit, as_tensor, build_store, store_path
from .base import SPLITS, TensorSplit, group_ids

COLUMNS = ("filename", "y", "a", "split")  # what SubpopBench's SubpopDataset reads, by name
# SubpopBench's eval transform is Resize(256) (shorter side) then CenterCrop(224): the crop keeps 224/256 of the
# shorter side. Here the store keeps the centre square of the shorter side, and the eval transform resizes it to
# image_size * 256/224 and crops the centre image_size: the same view at any image_size.
CROP_RATIO = 224 / 256


def subpopbench_recipe(epochs: int) -> dict[str, Any]:
    """SubpopBench's image defaults (hparams_registry.py) as `--set` values: ImageNet ResNet-50 at 224 px, SGD
    momentum 0.9, lr 1e-3, weight decay 1e-4, batch 108, no early stopping (model selection reads every epoch);
    `epochs` is the dataset's step budget as epochs of its training split [RECON: steps as epochs]."""
    return {"data.image_size": 224, "train.optimizer": "sgd", "train.momentum": 0.9, "train.lr": 1e-3,
            "train.weight_decay": 1e-4, "train.batch_size": 108, "train.epochs": epochs, "train.patience": 0}


@dataclass(frozen=True)
class SubpopImagesHParams:
    """The hparams of a SubpopBench image dataset read from its metadata (a subclass sets `root`'s help)."""

    root: str = hp(DEFAULT_ROOT, help="data root (the --data_path of SubpopBench's download script)")
    image_size: int = hp(64, ge=8, help="side the model reads: SubpopBench's Resize(256) + CenterCrop(224) view, "
                                        "at this side (224 = SubpopBench's; 64 keeps CPU runs feasible)")
    store_size: int = hp(0, ge=0, help="side of the centre squares decoded, once, into the on-disk store; 0 = 8/7 "
                                       "of image_size rounded up to a multiple of 8")
    augment: Literal["none", "paper"] = hp(
        "none", help="training augmentation: none = SubpopBench's (the eval view, no augmentation); paper = "
                     "RandomResizedCrop(image_size, scale 0.05-1) of the stored square, no flip")


class CenterView(nn.Module):
    """A batch of stored centre squares [B, C, s, s] -> SubpopBench's view at `side`: resize to side * 256/224,
    then the centre side x side (bilinear, antialiased)."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side, self.resized = side, round(side / CROP_RATIO)
        self.resize = Resize(self.resized)

    def forward(self, x: Tensor) -> Tensor:
        x = self.resize(x)
        top = (self.resized - self.side) // 2
        return x[..., top:top + self.side, top:top + self.side]


def decode_center(path: str, side: int) -> np.ndarray:
    """One image as uint8 [3, side, side]: RGB, shorter side resized to `side` (bilinear, aspect kept, as
    torchvision's Resize(int)), then the centre square."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = side / min(w, h)
            nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - side) // 2, (nh - side) // 2
            arr = np.array(im.crop((left, top, left + side, top + side)))
    except OSError as exc:  # PIL's UnidentifiedImageError is an OSError too
        raise Invalid(f"image {path} cannot be decoded ({' '.join(str(exc).split())})") from None
    return arr.transpose(2, 0, 1)


def relocated(name: str, dir_name: str) -> str:
    """`name` from the part after its last component equal to `dir_name` (SubpopBench writes
    `<data_path>/<dir_name>/...`); `name` itself when there is none or nothing follows it."""
    parts = name.split("/")
    if dir_name in parts[:-1]:
        last = len(parts) - 1 - parts[::-1].index(dir_name)
        return "/".join(parts[last + 1:])
    return name


def coded(column: pd.Series, allowed: Sequence[Any], what: str, rows: Rows) -> np.ndarray:
    """Each cell of `column` (read as text) as its index in `allowed`; a cell that is none of them is refused."""
    text = column.to_numpy(dtype=str)
    lookup = {str(a): i for i, a in enumerate(allowed)}
    out = np.fromiter((lookup.get(t, -1) for t in text), dtype=np.int64, count=len(text))
    bad = np.flatnonzero(out < 0)
    if bad.size:
        shown = "an empty cell" if not text[bad[0]].strip() else repr(str(text[bad[0]]))
        raise Invalid(f"{rows.where(int(bad[0]))} has {what} {shown}, not one of "
                      f"{', '.join(map(str, allowed))} ({bad.size} such row(s))")
    return out


def read_metadata(path: Path, n_classes: int, n_attrs: int, splits: Sequence[Any]) -> tuple[list[str], np.ndarray,
                                                                                              np.ndarray, np.ndarray]:
    """The metadata CSV: names, y, a and split codes (indices into `splits`), every value checked, each split
    present. Columns are read by name; others are ignored."""
    if not path.is_file():
        raise Invalid(f"no {path.name} found (looked for {path})")
    try:
        meta = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise Invalid(f"{path} is not a readable CSV ({type(exc).__name__})") from None
    missing = [c for c in COLUMNS if c not in meta.columns]
    if missing:
        raise Invalid(f"{path} lacks the column(s) {', '.join(missing)}")
    rows = Rows(path)
    names = meta["filename"].tolist()
    blank = [i for i, n in enumerate(names) if not n.strip()]
    if blank:
        raise Invalid(f"{rows.where(blank[0])} has an empty filename")
    y = coded(meta["y"], range(n_classes), "y", rows)
    a = coded(meta["a"], range(n_attrs), "a", rows)
    split = coded(meta["split"], splits, "split", rows)
    for i, value in enumerate(splits):
        if not (split == i).any():
            raise Invalid(f"{path} has no rows of split {value!r}")
    return names, y, a, split


def checked_names(data_dir: Path, names: Sequence[str], rows: Rows) -> list[str]:
    """Each name relocated under `data_dir` and joined with it; one that leaves it ('..', absolute, symlink) is
    refused, naming the row and the name as the file gives it."""
    join, paths = Inside(data_dir), []
    for i, name in enumerate(names):
        try:
            paths.append(join(relocated(name, data_dir.name)))
        except OutsideRoot:
            raise Invalid(f"{rows.where(i)} names {name!r}, which is outside {data_dir}",
                          fix="fix the file or delete it and re-run prepare") from None
    return paths


class SubpopImages(ImageFiles):
    """A SubpopBench image dataset: <root>/<dir_name>/<metadata_name>, one task y, groups y * n_attrs + a.

    Subclasses set the class attributes and `prepare`; `split_values` are the values of the metadata's split
    column, train first, val second, and `test_code` picks the one that is this harness's test split."""

    dir_name: ClassVar[str] = ""
    metadata_name: ClassVar[str] = ""
    n_attrs: ClassVar[int] = 2
    split_values: ClassVar[tuple[Any, ...]] = (0, 1, 2)
    # Examples per split value in SubpopBench's release (what `prepare` checks); splits not listed are not checked.
    release_sizes: ClassVar[dict[Any, int]] = {}

    @classmethod
    def n_classes(cls) -> int:
        return cls.tasks["y"]

    @classmethod
    def inspect(cls, root: Path) -> Source:
        return inspect_files(Path(root) / cls.dir_name, cls.metadata_name, cls.n_classes(), cls.n_attrs,
                             cls.split_values)

    def test_code(self) -> int:
        """The index in `split_values` of the split that is read as test."""
        return 2

    def codes(self) -> dict[str, int]:
        return {"train": 0, "val": 1, "test": self.test_code()}

    def store_key(self, split: str) -> str:
        code = self.codes()[split]
        key = hashlib.sha256(repr((self.name, self.version, self.side, split, self.split_values[code],
                                   self.source().digest)).encode())
        return f"{self.name}-v{self.version}-{split}-{self.side}px-{key.hexdigest()[:12]}"

    def generate(self) -> dict[str, TensorSplit]:
        src, codes = self.source(), self.codes()
        arrays: dict[str, np.ndarray] = {}
        picked: dict[str, np.ndarray] = {}
        with removed_on_failure(store_path(self.store_key("train")).parent):
            for name in SPLITS:
                rows = picked[name] = np.flatnonzero(src.split == codes[name])
                try:  # src.paths were joined by Inside: no listed name can make us read outside the data dir
                    arrays[name] = stored(self.store_key(name), [src.paths[r] for r in rows], self.side)
                except Invalid as exc:
                    row = "" if exc.index is None else f", listed in {src.rows.where(int(rows[exc.index]))}"
                    raise DataNotFoundError(f"{self.key}: {exc}{row}; fix: delete {src.data_dir} and run "
                                            f"{self.fix_hint(self.root)}") from None
        y, g = torch.from_numpy(src.y.copy()), group_ids(torch.from_numpy(src.y), torch.from_numpy(src.attr),
                                                         self.n_attrs)
        view = CenterView(self.hparams.image_size)
        train_tf = CropResize(self.hparams.image_size) if self.hparams.augment == "paper" else None
        out: dict[str, TensorSplit] = {}
        for name in SPLITS:
            idx = torch.from_numpy(picked[name])
            out[name] = MappedSplit(as_tensor(arrays[name]), {"y": y[idx]}, g[idx],
                                    torch.zeros(len(idx), dtype=torch.long), train_tf if name == "train" else None,
                                    view, store=arrays[name])
        return out

    def fingerprint(self) -> str:
        """The files' digest, the stored side and which split is test."""
        return hashlib.sha256(repr((self.source().digest, self.side, self.test_code())).encode()).hexdigest()[:16]

    def group_counts(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(torch.bincount(s.g, minlength=len(self.group_names)).tolist()) for k, s in self.load().items()}

    def is_full_release(self) -> bool:
        """Whether the metadata lists as many examples per split as SubpopBench's release."""
        src = self.source()
        return all(int((src.split == self.split_values.index(v)).sum()) == n for v, n in self.release_sizes.items())


def stored(key: str, paths: Sequence[str], side: int) -> np.ndarray:
    """The (already checked) images at `paths`, decoded once into the on-disk store `key` as centre squares;
    an Invalid carries the list position at fault in `index`."""
    def at(i: int, side: int) -> np.ndarray:
        try:
            return decode_center(paths[i], side)
        except Invalid as exc:
            exc.index = i
            raise

    return build_store(key, range(len(paths)), side, at)


def inspect_files(data_dir: Path, metadata_name: str, n_classes: int, n_attrs: int,
                  splits: Sequence[Any]) -> Source:
    """Read and check the metadata and the images it lists (raises Invalid naming the first problem).

    Every name is checked to stay inside the dataset directory before any image is touched."""
    meta_path = data_dir / metadata_name
    names, y, a, split = read_metadata(meta_path, n_classes, n_attrs, splits)
    rows = Rows(meta_path)
    paths = checked_names(data_dir, names, rows)
    digest = hashlib.sha256(meta_path.read_bytes())
    digest.update(str(data_dir.resolve()).encode())  # same files elsewhere: another cache entry
    digest.update(stat_digest(data_dir, names, paths, rows).encode())
    return Source(data_dir, rows, paths, y, a, split, digest.hexdigest())


def image_names(folder: Path, pattern: str) -> list[Path]:
    """The files matching `pattern` in `folder`, sorted [RECON] (SubpopBench lists them in the file system's
    order, which differs between machines)."""
    return sorted(folder.glob(pattern))

