"""What every dataset read from image files shares: data root, checked paths, decoding, digest, splits, cache."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch

from ..errors import DataNotFoundError
from ..hparams import hp
from ._files import Inside, OutsideRoot, removed_on_failure
from ._augment import image_transforms
from ._store import MappedSplit, as_tensor, build_store, store_path
from .base import SPLITS, Dataset, TensorSplit, group_ids

DEFAULT_ROOT = "data"
ROOT_ENV = "ROBUSTBENCH_MTL_DATA"


# The paper's image recipe (docs/methods.md#waterbirds): the released code's ViT-B/16 fine-tuning at 384 px,
# SGD with momentum 0.9, cosine schedule with 500 warm-up steps, lr 1e-3, 200 epochs, patience 10, the
# end-task crop; weight decay 0 because the released SGD never receives it (the paper states 1e-2).
PAPER_IMAGE_RECIPE: dict[str, Any] = {
    "data.image_size": 384, "data.augment": "paper",
    "backbone.model": "google/vit-base-patch16-224-in21k", "backbone.pretrained": True,
    "train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 0.0, "train.lr": 1e-3,
    "train.scheduler": "cosine", "train.warmup_steps": 500, "train.epochs": 200, "train.patience": 10,
    "train.grad_clip": 0.0,
}
E_MINUS_1, E_PLUS_1 = 0.3679, 2.7183  # the paper's weight grid e^k, rounded as its released scripts round them


@dataclass(frozen=True)
class StoredImages:
    """The hparams of every dataset read from image files, besides its root and model side."""

    store_size: int = hp(0, ge=0, help="side the images are decoded to, once, in the on-disk store; 0 = 8/7 of "
                                       "image_size rounded up to a multiple of 8, so training crops keep detail")
    augment: Literal["paper", "none"] = hp(
        "paper", help="end-task training augmentation: paper = RandomResizedCrop(image_size, scale 0.05-1), no "
                      "flip (the released code); none = the eval resize only")


class Invalid(Exception):
    """A problem with the files on disk; callers add the fix that fits their context, led by `fix`.

    `index` is the list row of the image at fault, where one is (set by `decode_all`)."""

    def __init__(self, msg: str, fix: str = "fix") -> None:
        super().__init__(msg)
        self.fix = fix
        self.index: int | None = None


@dataclass(frozen=True)
class Rows:
    """The file that lists the images, and how messages number its rows ('data row 3', 'line 5')."""

    path: Path
    unit: str = "data row"
    first: int = 1  # the number row 0 gets: 1 below a CSV header, 3 below a count line and a names line

    def where(self, i: int) -> str:
        return f"{self.path} {self.unit} {i + self.first}"


@dataclass(frozen=True)
class Source:
    """Checked files: the dataset directory, the list naming the images, each image's checked path, label,
    attribute and split (list order), and a digest of the lists and the images' stats."""

    data_dir: Path
    rows: Rows
    paths: list[str]
    y: np.ndarray
    attr: np.ndarray
    split: np.ndarray
    digest: str

    def group_counts(self) -> dict[str, tuple[int, ...]]:
        """Examples per group g = 2*y + attr in each split, from the lists alone (no image is decoded)."""
        g = 2 * self.y + self.attr
        return {name: tuple(np.bincount(g[self.split == i], minlength=4).tolist()) for i, name in enumerate(SPLITS)}


def count_mismatch(counts: dict[str, tuple[int, ...]], official: dict[str, tuple[int, ...]],
                   group_names: Sequence[str]) -> str | None:
    """The first split and group whose count differs from the official release's, in words; None if all agree."""
    for split in SPLITS:
        for g, (got, want) in enumerate(zip(counts[split], official[split])):
            if got != want:
                return f"{got} {split} images in group {group_names[g]}, the official release has {want}"
    return None


def resolve_root(root: str) -> Path:
    """The data root: $ROBUSTBENCH_MTL_DATA replaces the default, an explicit root wins."""
    env = os.environ.get(ROOT_ENV)
    return Path(env if env and root == DEFAULT_ROOT else root).expanduser()


def checked_paths(base: Path, names: Sequence[str], rows: Rows) -> list[str]:
    """Each name joined with `base`; one that leads outside it ('..', absolute, symlink) is refused."""
    join, paths = Inside(base), []
    for i, name in enumerate(names):
        try:
            paths.append(join(name))
        except OutsideRoot:
            raise Invalid(f"{rows.where(i)} names {name!r}, which is outside {base}",
                          fix="fix the file or re-run prepare") from None
    return paths


def stat_digest(base: Path, names: Sequence[str], paths: Sequence[str], rows: Rows) -> str:
    """A digest of every image's size and mtime (cheap: stat only); a missing image is an error."""
    h, missing = hashlib.sha256(), []
    for i, (name, path) in enumerate(zip(names, paths)):
        try:
            st = os.stat(path)
        except OSError:
            missing.append(i)
            continue
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    if missing:
        i = missing[0]
        raise Invalid(f"{len(missing)} of {len(names)} images listed in {rows.path.name} are missing under {base} "
                      f"(first: {names[i]}) in {rows.unit} {i + rows.first}")
    return h.hexdigest()


def decode(path: str, size: int) -> np.ndarray:
    """One image as uint8 [3, size, size]: RGB, bilinear resize as torchvision's Resize((s, s)) on PIL."""
    from PIL import Image

    try:
        with Image.open(path) as im:  # grayscale, CMYK and palette images become RGB; PIL sniffs the format
            arr = np.array(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))  # writable copy
    except OSError as exc:  # PIL's UnidentifiedImageError is an OSError too
        raise Invalid(f"image {path} cannot be decoded ({' '.join(str(exc).split())})") from None
    return arr.transpose(2, 0, 1)


def store_images(key: str, paths: Sequence[str], side: int) -> np.ndarray:
    """The (already checked) images at `paths`, decoded once into the on-disk store at `side` x `side`
    (reused while the files' digest is unchanged); an Invalid carries the list row at fault in `index`.

    The one place images become an array: every epoch after the first reads the store, never a JPEG."""
    def at(i: int) -> np.ndarray:
        try:
            return decode(paths[i], side)
        except Invalid as exc:
            exc.index = i
            raise

    return build_store(key, range(len(paths)), side, lambda i, _side: at(i))


def store_side(image_size: int, store_size: int) -> int:
    """The stored side: `store_size`, or 8/7 of the model's side rounded up to a multiple of 8, so that
    training crops (RandomResizedCrop) keep detail above the model's resolution."""
    return store_size if store_size else -(-image_size // 7) * 8  # ceil(image_size * 8/7 / 8) * 8


def make_splits(arrays: dict[str, np.ndarray], y: np.ndarray, attr: np.ndarray, split: np.ndarray,
                augment: str, image_size: int) -> dict[str, TensorSplit]:
    """Train/val/test = split 0/1/2, list order within each, each backed by its store; one task 'y', group
    g = 2*y + attr, no environments; train gets the end-task augmentation, every split the eval resize."""
    y_t, a_t, s_t = (torch.tensor(np.asarray(v), dtype=torch.long) for v in (y, attr, split))  # copies
    g = group_ids(y_t, a_t, 2)
    train_tf, eval_tf = image_transforms(augment, image_size)  # type: ignore[arg-type]
    out = {}
    for i, name in enumerate(SPLITS):
        idx = torch.nonzero(s_t == i).flatten()
        out[name] = MappedSplit(as_tensor(arrays[name]), {"y": y_t[idx]}, g[idx], torch.zeros(len(idx), dtype=torch.long),
                                train_tf if name == "train" else None, eval_tf, store=arrays[name])
    return out


class ImageFiles(Dataset):
    """A dataset of released image files with a binary label and attribute: a subclass finds and checks the
    files (`inspect`, raising Invalid); this class decodes them once into the cache and splits them."""

    key: ClassVar[str] = ""  # the registered name, for messages and the `prepare` command
    official_counts: ClassVar[dict[str, tuple[int, ...]]] = {}
    modality = "image"
    tasks = {"y": 2}
    default_backbone = "vit_tiny"
    version = "1"
    # CPU-feasible defaults (a tiny ViT at 64 px); docs/methods.md gives the paper's settings (ViT-B/16, 384 px, SGD).
    defaults = {
        "train.epochs": 10, "train.batch_size": 32, "train.optimizer": "adamw", "train.lr": 1e-3,
        "train.weight_decay": 0.05, "train.patience": 10, "backbone.patch_size": 8,
    }

    def __init__(self, hparams: Any, name: str) -> None:
        super().__init__(hparams, name)
        self._source: Source | None = None

    @classmethod
    def inspect(cls, root: Path) -> Source:
        """The checked files of the first layout found under `root`; raises Invalid naming the first problem."""
        raise NotImplementedError

    @classmethod
    def fix_hint(cls, root: Path) -> str:
        return f"robustbench-mtl prepare {cls.key} --root {root}"

    @property
    def root(self) -> Path:
        return resolve_root(self.hparams.root)

    def source(self) -> Source:
        """The checked files (checked once per instance, even when the tensors come from the cache)."""
        if self._source is None:
            try:
                self._source = self.inspect(self.root)
            except Invalid as exc:
                raise DataNotFoundError(f"{self.key}: {exc}; {exc.fix}: {self.fix_hint(self.root)}") from None
        return self._source

    @property
    def data_dir(self) -> Path:
        """The dataset directory actually read (after the environment variable and layout search)."""
        return self.source().data_dir

    @property
    def side(self) -> int:
        return store_side(self.hparams.image_size, self.hparams.store_size)

    def store_key(self, split: str) -> str:
        # Keyed by the files' digest, not by data.root: changed files or another root mean another store.
        key = hashlib.sha256(repr((self.name, self.version, self.side, split, self.source().digest)).encode())
        return f"{self.name}-v{self.version}-{split}-{self.side}px-{key.hexdigest()[:12]}"

    def load(self) -> dict[str, TensorSplit]:
        """The splits, each over its on-disk store (built on first use); labels come from the lists."""
        if self._splits is None:
            self._splits = self.generate()
        return self._splits

    def generate(self) -> dict[str, TensorSplit]:
        src = self.source()
        arrays: dict[str, np.ndarray] = {}
        # A bad image in any split writes nothing: the stores this call built for earlier splits go too.
        with removed_on_failure(store_path(self.store_key("train")).parent):
            for i, name in enumerate(SPLITS):
                rows = np.flatnonzero(src.split == i)
                try:  # src.paths were joined by Inside, so no listed name can make us read outside the data dir
                    arrays[name] = store_images(self.store_key(name), [src.paths[r] for r in rows], self.side)
                except Invalid as exc:
                    row = "" if exc.index is None else f", listed in {src.rows.where(int(rows[exc.index]))}"
                    raise DataNotFoundError(f"{self.key}: {exc}{row}; fix: delete {src.data_dir} and run "
                                            f"{self.fix_hint(self.root)}") from None
        return make_splits(arrays, src.y, src.attr, src.split, self.hparams.augment, self.hparams.image_size)

    def input_shape(self, train: TensorSplit) -> tuple[int, ...]:
        return (3, self.hparams.image_size, self.hparams.image_size)  # stored larger; the model reads this

    def fingerprint(self) -> str:
        """The files' digest and the stored side (hashing every stored pixel would read the whole store)."""
        return hashlib.sha256(repr((self.source().digest, self.side)).encode()).hexdigest()[:16]

    def group_counts(self) -> dict[str, tuple[int, ...]]:
        """Examples per group in each split (the full release gives official_counts; subsets differ)."""
        return {k: tuple(torch.bincount(s.g, minlength=4).tolist()) for k, s in self.load().items()}

    def is_full_release(self) -> bool:
        """Whether the group counts are the official ones; a subset is allowed, only recorded here."""
        return self.group_counts() == self.official_counts
