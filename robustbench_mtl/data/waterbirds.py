"""Waterbirds read from its released files (WILDS or group_DRO layout), with `prepare` to download it."""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError, DataNotFoundError
from ..hparams import hp
from ..registry import DATASETS
from ._files import Inside, OutsideRoot, removed_on_failure, safe_extraction
from .base import SPLITS, WATERBIRDS_GROUPS, Dataset, TensorSplit, cache_dir, group_ids

DEFAULT_ROOT = "data"
ROOT_ENV = "ROBUSTBENCH_MTL_DATA"
WILDS_VERSION = "1.0"
WILDS_DIR = f"waterbirds_v{WILDS_VERSION}"
# The group_DRO/JTT release (DATASETS.md §1): the hand route when the WILDS (CodaLab) download fails.
MANUAL_URL = "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz"
# Searched in this order under the root: WILDS bundle, then the group_DRO/JTT tarball (two nestings).
LAYOUTS = (WILDS_DIR, "waterbird_complete95_forest2water2", "cub/data/waterbird_complete95_forest2water2")
REQUIRED = ("img_filename", "y", "split", "place")  # the official file also has img_id, place_filename
ALLOWED = {"y": (0, 1), "split": (0, 1, 2), "place": (0, 1)}
# Per split, groups landbird_land, landbird_water, waterbird_land, waterbird_water (DATASETS.md §1).
OFFICIAL_COUNTS = {"train": (3498, 184, 56, 1057), "val": (467, 466, 133, 133), "test": (2255, 2255, 642, 642)}


class _Invalid(Exception):
    """A problem with the files on disk; callers add the fix that fits their context, led by `fix`."""

    def __init__(self, msg: str, fix: str = "fix") -> None:
        super().__init__(msg)
        self.fix = fix


@dataclass(frozen=True)
class WaterbirdsHParams:
    root: str = hp(DEFAULT_ROOT, help=f"data root holding {WILDS_DIR}/ or waterbird_complete95_forest2water2/; "
                                      f"${ROOT_ENV}, when set, replaces the default '{DEFAULT_ROOT}'")
    image_size: int = hp(64, ge=8, help="images are resized to this side (eval transform Resize((s, s))); the "
                                  "paper uses 384 for ViT-B/16, 64 keeps CPU runs feasible")


@dataclass(frozen=True)
class Source:
    """Validated files: the dataset directory, its metadata, the checked image paths (metadata order)
    and a digest of metadata.csv and image stats."""

    data_dir: Path
    meta: pd.DataFrame
    paths: list[str]
    digest: str


def resolve_root(root: str) -> Path:
    """The data root: $ROBUSTBENCH_MTL_DATA replaces the default, an explicit root wins."""
    env = os.environ.get(ROOT_ENV)
    return Path(env if env and root == DEFAULT_ROOT else root).expanduser()


def fix_hint(root: Path) -> str:
    return f"robustbench-mtl prepare waterbirds --root {root}"


def find_metadata(root: Path) -> Path:
    """metadata.csv of the first layout present under `root`."""
    for layout in LAYOUTS:
        if (root / layout / "metadata.csv").is_file():
            return root / layout / "metadata.csv"
    tried = ", ".join(str(root / layout / "metadata.csv") for layout in LAYOUTS)
    raise _Invalid(f"no metadata.csv found (looked for {tried})")


def read_metadata(path: Path) -> pd.DataFrame:
    """metadata.csv with its required columns and values checked; every split must be non-empty."""
    try:
        meta = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise _Invalid(f"{path} is not a readable CSV ({type(exc).__name__})") from None
    missing = [c for c in REQUIRED if c not in meta.columns]
    if missing:
        raise _Invalid(f"{path} lacks the column(s) {', '.join(missing)}")
    for col, allowed in ALLOWED.items():
        bad = ~meta[col].isin(allowed)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise _Invalid(f"{path} has {int(bad.sum())} {col} value(s) outside {set(allowed)} "
                           f"(first: {meta[col].iloc[row]!r} in data row {row + 1})")
    for i, split in enumerate(SPLITS):
        if not (meta["split"] == i).any():
            raise _Invalid(f"{path} has no {split} rows (split == {i})")
    blank = meta["img_filename"].isna().to_numpy()  # an empty cell; os.path.join would raise TypeError
    if blank.any():
        raise _Invalid(f"{path} has an empty img_filename in data row {int(np.flatnonzero(blank)[0]) + 1}")
    return meta.astype({**{c: "int64" for c in ALLOWED}, "img_filename": str})


def image_paths(meta_path: Path, names: pd.Series) -> list[str]:
    """Each img_filename under the data dir; one that leads outside it ('..', absolute, symlink) is refused."""
    join, paths = Inside(meta_path.parent), []
    for row, name in enumerate(names, 1):
        try:
            paths.append(join(name))
        except OutsideRoot:
            raise _Invalid(f"{meta_path} data row {row} names {name!r}, which is outside {meta_path.parent}",
                           fix="fix the file or re-run prepare") from None
    return paths


def image_digest(data_dir: Path, names: pd.Series, paths: list[str]) -> str:
    """A digest of every image's size and mtime (cheap: stat only); a missing image is an error."""
    h, missing = hashlib.sha256(), []
    for name, path in zip(names, paths):
        try:
            st = os.stat(path)
        except OSError:
            missing.append(name)
            continue
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    if missing:
        raise _Invalid(f"{len(missing)} of {len(names)} images listed in metadata.csv are missing "
                       f"under {data_dir} (first: {missing[0]})")
    return h.hexdigest()


def inspect_files(meta_path: Path) -> Source:
    """Read and check metadata.csv and the images it lists (raises _Invalid naming the first problem).

    Every name is checked to stay inside the dataset directory before any image is touched."""
    meta = read_metadata(meta_path)
    paths = image_paths(meta_path, meta["img_filename"])
    digest = hashlib.sha256(meta_path.read_bytes())
    digest.update(str(meta_path.parent.resolve()).encode())  # same files elsewhere: another cache entry
    digest.update(image_digest(meta_path.parent, meta["img_filename"], paths).encode())
    return Source(meta_path.parent, meta, paths, digest.hexdigest())


def decode(path: str, size: int) -> np.ndarray:
    """One image as uint8 [3, size, size]: RGB, bilinear resize as torchvision's Resize((s, s)) on PIL."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.array(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))  # writable copy
    except OSError as exc:  # PIL's UnidentifiedImageError is an OSError too
        raise _Invalid(f"image {path} cannot be decoded ({exc})") from None
    return arr.transpose(2, 0, 1)


@DATASETS.register("waterbirds")
class Waterbirds(Dataset):
    """Waterbirds: CUB birds pasted on Places land/water backgrounds; y = waterbird, spurious place.

    References: Sagawa et al., "Distributionally Robust Neural Networks" (ICLR 2020); WILDS
    (Koh et al., ICML 2021). Reads the released files, never regenerated, in either layout under
    data.root: WILDS `waterbirds_v1.0/metadata.csv`, or group_DRO/JTT
    `waterbird_complete95_forest2water2/metadata.csv` (also under `cub/data/`). Groups are
    2*y + place; splits 0/1/2 = train/val/test; the known mislabelled species are kept, since the
    published numbers depend on them. Get the files with `robustbench-mtl prepare waterbirds --root DIR`.
    Defaults are a CPU-feasible ViT-tiny at 64 px with AdamW; the paper trains ViT-B/16 at 384 px
    with SGD and a cosine schedule (docs/methods.md#waterbirds), which arrives in a later release.
    """

    HParams = WaterbirdsHParams
    tasks = {"y": 2}
    group_names = WATERBIRDS_GROUPS
    modality = "image"
    default_backbone = "vit_tiny"
    version = "1"
    defaults = {
        "train.epochs": 10, "train.batch_size": 32, "train.optimizer": "adamw", "train.lr": 1e-3,
        "train.weight_decay": 0.05, "train.patience": 10, "backbone.patch_size": 8,
    }

    def __init__(self, hparams: WaterbirdsHParams, name: str) -> None:
        super().__init__(hparams, name)
        self._source: Source | None = None

    @property
    def root(self) -> Path:
        return resolve_root(self.hparams.root)

    def source(self) -> Source:
        """The checked files (checked once per instance, even when the tensors come from the cache)."""
        if self._source is None:
            try:
                self._source = inspect_files(find_metadata(self.root))
            except _Invalid as exc:
                raise DataNotFoundError(f"waterbirds: {exc}; {exc.fix}: {fix_hint(self.root)}") from None
        return self._source

    @property
    def data_dir(self) -> Path:
        """The dataset directory actually read (after the environment variable and layout search)."""
        return self.source().data_dir

    def _cache_path(self) -> Path:
        # Keyed by the files' digest, not by data.root: changed files or another root mean new tensors.
        key = hashlib.sha256(repr((self.name, self.version, self.hparams.image_size, self.source().digest)).encode())
        return cache_dir() / f"{self.name}-v{self.version}-{key.hexdigest()[:12]}.pt"

    def generate(self) -> dict[str, TensorSplit]:
        src, size = self.source(), self.hparams.image_size
        x = torch.empty(len(src.paths), 3, size, size, dtype=torch.uint8)
        # PIL releases the GIL while decoding, so threads speed up the one-off ~12k-image pass.
        # src.paths were joined by Inside, so no metadata name can make us read outside data_dir.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            try:
                for i, arr in enumerate(pool.map(lambda p: decode(p, size), src.paths)):
                    x[i] = torch.from_numpy(arr)
            except _Invalid as exc:
                raise DataNotFoundError(f"waterbirds: {exc}; fix: delete {src.data_dir} and run "
                                        f"{fix_hint(self.root)}") from None
        y, place, split = (torch.tensor(src.meta[c].to_numpy(), dtype=torch.long) for c in ("y", "place", "split"))
        g = group_ids(y, place, 2)
        out = {}
        for i, name in enumerate(SPLITS):
            idx = torch.nonzero(split == i).flatten()  # metadata order within each split
            out[name] = TensorSplit(x[idx], {"y": y[idx]}, g[idx], torch.zeros(len(idx), dtype=torch.long))
        return out

    def group_counts(self) -> dict[str, tuple[int, ...]]:
        """Examples per group in each split (the full release gives OFFICIAL_COUNTS; subsets differ)."""
        return {k: tuple(torch.bincount(s.g, minlength=4).tolist()) for k, s in self.load().items()}

    def is_full_release(self) -> bool:
        """Whether the group counts are the official ones; a subset is allowed, only recorded here."""
        return self.group_counts() == OFFICIAL_COUNTS

    @classmethod
    def prepare(cls, root: Path) -> Path:
        """Download Waterbirds into `root` with WILDS' downloader and verify every file; returns the dir.

        On any failure it removes what it created (never what was there before) and raises one line."""
        root = Path(root).expanduser()
        with contextlib.suppress(_Invalid):  # already present in any layout: nothing to do
            return inspect_files(find_metadata(root)).data_dir
        url, size, download = wilds_downloader()
        data_dir = root / WILDS_DIR
        # A directory that was there before is kept on failure, so the fix must say to delete it.
        rerun = (f"delete {data_dir} (it predates this run, so it was kept) and rerun" if data_dir.exists()
                 else "rerun") + f": {fix_hint(root)}"
        with removed_on_failure(data_dir):
            fetch(url, size, download, data_dir, f"check the network or download it by hand: extract {MANUAL_URL} "
                                                 f"into {root}; then {rerun}")
            return verified(data_dir, rerun)


def wilds_downloader() -> tuple[str, int | None, Callable[..., Any]]:
    """The URL and size WILDS declares for Waterbirds, and WILDS' own download-and-extract function."""
    try:
        from wilds.datasets.download_utils import download_and_extract_archive
        from wilds.datasets.waterbirds_dataset import WaterbirdsDataset
    except ImportError:
        raise ConfigError("prepare needs the wilds package: pip install 'robustbench-mtl[data]'") from None
    try:
        release = WaterbirdsDataset._versions_dict[WILDS_VERSION]  # a class attribute: no download to read it
        return release["download_url"], release.get("compressed_size"), download_and_extract_archive
    except (AttributeError, KeyError, TypeError):
        raise ConfigError(f"the installed wilds does not declare Waterbirds v{WILDS_VERSION}; download by hand: "
                          f"extract {MANUAL_URL} into the data root") from None


def fetch(url: str, size: int | None, download: Callable[..., Any], data_dir: Path, fix: str) -> None:
    """What WILDSDataset.download_dataset does, minus its `except Exception: print(e)`: errors reach us."""
    with contextlib.redirect_stdout(sys.stderr), safe_extraction():  # WILDS prints progress on stdout
        try:
            download(url=url, download_root=str(data_dir), filename="archive.tar.gz", remove_finished=True,
                     size=size)
            return
        except Exception as exc:  # urllib, tarfile, disk: whatever it is, the line names it
            cause = f"{type(exc).__name__}: {' '.join(str(exc).split())}"  # one line, whatever was raised
    # Raised out here, not in the except: the traceback there holds WILDS' progress bars, which it never
    # closes; freed now, they print their last state before our line instead of after it.
    raise DataNotFoundError(f"waterbirds: download from {url} failed ({cause}); {fix}")


def verified(data_dir: Path, rerun: str) -> Path:
    """The downloaded WILDS bundle checked file by file, as the reader will check it."""
    try:
        for name in (f"RELEASE_v{WILDS_VERSION}.txt", "metadata.csv"):  # the WILDS bundle, whatever else is there
            if not (data_dir / name).is_file():
                raise _Invalid(f"{data_dir / name} is missing")
        return inspect_files(data_dir / "metadata.csv").data_dir
    except _Invalid as exc:
        raise DataNotFoundError(f"waterbirds: download into {data_dir} is incomplete ({exc}); {rerun}") from None
