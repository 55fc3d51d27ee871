"""CelebA (Blond_Hair, spurious Male) read from its released files, Kaggle CSV or Drive TXT, with `prepare`."""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataNotFoundError
from ..hparams import hp
from ..registry import DATASETS
from ._files import guarded_download, removed_on_failure
from ._images import (DEFAULT_ROOT, PAPER_IMAGE_RECIPE, ROOT_ENV, ImageFiles, Invalid, Rows, Source, StoredImages,
                      checked_paths, count_mismatch, stat_digest)
from .base import SPLITS

TARGET, SPURIOUS = "Blond_Hair", "Male"
GROUPS = ("not_blond_female", "not_blond_male", "blond_female", "blond_male")  # g = 2*y + male
IMAGES = "img_align_celeba"
TV_DIR = "celeba"  # torchvision's base_folder (also BalancingGroups'/SubpopBench's): what `prepare` writes
# Searched in this order under the root (docs/methods.md#celeba): WILDS' bundle and group_DRO/JTT's folder
# hold the Kaggle CSV files; torchvision's folder holds the Google Drive TXT files.
LAYOUTS = (("celebA_v1.0", "csv"), ("celebA/data", "csv"), (TV_DIR, "txt"))
# Per split, groups not_blond_female, not_blond_male, blond_female, blond_male (docs/methods.md#celeba).
OFFICIAL_COUNTS = {"train": (71629, 66874, 22880, 1387), "val": (8535, 8276, 2874, 182),
                   "test": (9767, 7535, 2480, 180)}
KAGGLE_URL = "https://www.kaggle.com/jessicali9530/celeba-dataset"
DRIVE_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"  # links the official Google Drive folder


@dataclass(frozen=True)
class CelebAHParams(StoredImages):
    root: str = hp(DEFAULT_ROOT, help="data root holding celebA_v1.0/, celebA/data/ (Kaggle CSV) or celeba/ "
                                      f"(Drive TXT); ${ROOT_ENV}, when set, replaces the default '{DEFAULT_ROOT}'")
    image_size: int = hp(64, ge=8, help="the 178x218 images are resized to this side (eval transform "
                                  "Resize((s, s))); the paper uses 384 for ViT-B/16, 64 keeps CPU runs feasible")


@dataclass(frozen=True)
class Listing:
    """One list file read: its image names in file order, the checked value columns, how rows are named."""

    rows: Rows
    names: list[str]
    values: dict[str, np.ndarray]


def fix_hint(root: Path) -> str:
    return f"robustbench-mtl prepare celeba --root {root}"


def find_layout(root: Path) -> tuple[Path, str]:
    """The directory and format ('csv' or 'txt') of the first layout under `root` with a list file."""
    for layout, fmt in LAYOUTS:
        files = (root / layout / f"list_attr_celeba.{fmt}", root / layout / f"list_eval_partition.{fmt}")
        present = [f.is_file() for f in files]
        if all(present):
            return root / layout, fmt
        if any(present):  # half a layout is an error, not a reason to read another copy further down
            raise Invalid(f"{files[present.index(True)]} has no {files[present.index(False)].name} beside it")
    tried = ", ".join(str(root / layout / f"list_attr_celeba.{fmt}") for layout, fmt in LAYOUTS)
    raise Invalid(f"no CelebA list files found (looked for {tried})")


def checked(values: np.ndarray, allowed: tuple[int, ...], what: str, rows: Rows) -> np.ndarray:
    """`values` (numbers from a CSV, strings from a TXT file) as int64, each one of `allowed`."""
    if values.dtype.kind in "iuf":
        ok = np.isin(values, allowed)
    else:
        ok = np.isin(values.astype(str), [str(a) for a in allowed])
    bad = np.flatnonzero(~ok)
    if bad.size:
        v = values[bad[0]]
        shown = "an empty cell" if pd.isna(v) else repr(str(v))
        raise Invalid(f"{rows.where(int(bad[0]))} has {what} {shown}, not one of {', '.join(map(str, allowed))} "
                      f"({bad.size} such row(s))")
    return values.astype(np.int64)


def read_csv_list(path: Path, allowed: dict[str, tuple[int, ...]]) -> Listing:
    """A Kaggle CSV list: its image_id column and the `allowed` columns, every value checked."""
    wanted = ("image_id", *allowed)
    try:
        df = pd.read_csv(path, usecols=lambda c: c in wanted, dtype={"image_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise Invalid(f"{path} is not a readable CSV ({type(exc).__name__})") from None
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise Invalid(f"{path} lacks the column(s) {', '.join(missing)}")
    rows = Rows(path)
    blank = np.flatnonzero(df["image_id"].isna().to_numpy())
    if blank.size:
        raise Invalid(f"{rows.where(int(blank[0]))} has an empty image_id")
    values = {c: checked(df[c].to_numpy(), a, c, rows) for c, a in allowed.items()}
    return Listing(rows, df["image_id"].tolist(), values)


def text_lines(path: Path) -> list[str]:
    """The lines of a TXT list, trailing blank lines dropped (a final newline is not a row)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise Invalid(f"{path} is not a text file") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def txt_fields(path: Path, lines: list[str], first: int, width: int, cols: tuple[int, ...]) -> list[list[str]]:
    """From whitespace-separated rows of exactly `width` fields (line `first` on), the fields at `cols`."""
    out: list[list[str]] = [[] for _ in cols]
    for n, line in enumerate(lines, first):
        fields = line.split()
        if len(fields) != width:
            raise Invalid(f"{path} line {n} has {len(fields)} fields, not {width} (a file name and "
                          f"{width - 1} value(s))")
        for column, c in zip(out, cols):
            column.append(fields[c])
    return out


def read_txt_attrs(path: Path) -> Listing:
    """The Drive list_attr_celeba.txt: a count line, a names line (40 names), then 'name v1 ... v40' rows."""
    lines = text_lines(path)
    if len(lines) < 2:
        raise Invalid(f"{path} lacks its first two lines (the image count, then the attribute names)")
    try:
        count = int(lines[0])
    except ValueError:
        raise Invalid(f"{path} line 1 is {lines[0][:40]!r}, not the image count") from None
    header = lines[1].split()
    missing = [a for a in (TARGET, SPURIOUS) if a not in header]
    if missing:
        raise Invalid(f"{path} line 2 lacks the attribute(s) {', '.join(missing)}")
    if count != len(lines) - 2:  # a truncated or concatenated file: the count line is the only witness
        raise Invalid(f"{path} line 1 says {count} images but {len(lines) - 2} rows follow the names line")
    names, target, spurious = txt_fields(path, lines[2:], 3, len(header) + 1,
                                         (0, header.index(TARGET) + 1, header.index(SPURIOUS) + 1))
    rows = Rows(path, "line", 3)
    return Listing(rows, names, {TARGET: checked(np.array(target), (-1, 1), TARGET, rows),
                                 SPURIOUS: checked(np.array(spurious), (-1, 1), SPURIOUS, rows)})


def read_txt_partition(path: Path) -> Listing:
    """The Drive list_eval_partition.txt: 'name partition' rows."""
    names, part = txt_fields(path, text_lines(path), 1, 2, (0, 1))
    rows = Rows(path, "line", 1)
    return Listing(rows, names, {"partition": checked(np.array(part), (0, 1, 2), "partition", rows)})


def read_lists(data_dir: Path, fmt: str) -> tuple[Listing, Listing]:
    """The attribute and partition lists, checked to name the same image on every row."""
    attrs_path, part_path = data_dir / f"list_attr_celeba.{fmt}", data_dir / f"list_eval_partition.{fmt}"
    if fmt == "csv":
        attrs = read_csv_list(attrs_path, {TARGET: (-1, 1), SPURIOUS: (-1, 1)})
        part = read_csv_list(part_path, {"partition": (0, 1, 2)})
    else:
        attrs, part = read_txt_attrs(attrs_path), read_txt_partition(part_path)
    # The official loaders zip the two files by row without looking at the names: a file sorted differently
    # would silently give images the wrong split, so the names are compared here.
    if len(attrs.names) != len(part.names):
        raise Invalid(f"{attrs_path} lists {len(attrs.names)} images but {part_path} lists {len(part.names)}; "
                      "the files are read row by row, so they must list the same images in the same order")
    differ = [i for i, (a, b) in enumerate(zip(attrs.names, part.names)) if a != b]
    if differ:
        i = differ[0]
        raise Invalid(f"{attrs.rows.where(i)} names {attrs.names[i]!r} but {part.rows.where(i)} names "
                      f"{part.names[i]!r} ({len(differ)} row(s) differ); the files are read row by row, so "
                      "each row must name the same image")
    for i, split in enumerate(SPLITS):
        if not (part.values["partition"] == i).any():
            raise Invalid(f"{part_path} has no {split} rows (partition {i})")
    return attrs, part


def inspect_files(data_dir: Path, fmt: str) -> Source:
    """Read and check both lists and the images they name (raises Invalid naming the first problem).

    Every name is checked to stay inside img_align_celeba/ before any image is touched."""
    attrs, part = read_lists(data_dir, fmt)
    images = data_dir / IMAGES
    paths = checked_paths(images, attrs.names, attrs.rows)
    try:
        stats = stat_digest(images, attrs.names, paths, attrs.rows)
    except Invalid as exc:
        if (images / IMAGES).is_dir():  # the Kaggle archive nests the folder in itself
            exc.fix = f"move the images of {images / IMAGES} up into {images}, or run"
        raise
    digest = hashlib.sha256()
    for path in (attrs.rows.path, part.rows.path):
        digest.update(path.read_bytes())
    digest.update(str(data_dir.resolve()).encode())  # same files elsewhere: another cache entry
    digest.update(stats.encode())
    y, male = ((attrs.values[a] == 1).astype(np.int64) for a in (TARGET, SPURIOUS))  # -1/1 -> 0/1
    return Source(data_dir, attrs.rows, paths, y, male, part.values["partition"], digest.hexdigest())


@DATASETS.register("celeba")
class CelebA(ImageFiles):
    """CelebA faces: y = Blond_Hair, spurious attribute Male; few blond men (1387 of 162770 in train).

    References: Liu et al., "Deep Learning Face Attributes in the Wild" (ICCV 2015); the group-robustness
    task of Sagawa et al. (ICLR 2020). Reads the released files in either official format under
    data.root, searched in this order: WILDS `celebA_v1.0/` and group_DRO/JTT `celebA/data/` (Kaggle CSV:
    list_attr_celeba.csv, list_eval_partition.csv), then torchvision's `celeba/` (Google Drive TXT:
    list_attr_celeba.txt, list_eval_partition.txt); images in `img_align_celeba/`. The two lists are
    read row by row, as the official loaders do, but each row must name the same image in both. Groups
    are 2*y + male; splits are the official partitions 0/1/2 = train/val/test, never random. Get the
    files with `robustbench-mtl prepare celeba --root DIR`. Defaults are a CPU-feasible ViT-tiny at
    64 px with AdamW; the paper trains ViT-B/16 at 384 px (docs/methods.md#celeba).
    """

    HParams = CelebAHParams
    # [RECON] The paper has no CelebA runs: its Waterbirds recipe, with a batch of 16 for every method and
    # 20 epochs (CelebA's training set is 34x Waterbirds'); tune per method before comparing.
    presets = {"vit_b16": {"backbone": "vit_b16",
                           "common": {**PAPER_IMAGE_RECIPE, "train.batch_size": 16, "train.epochs": 20}}}
    key = "celeba"
    official_counts = OFFICIAL_COUNTS
    group_names = GROUPS

    @classmethod
    def inspect(cls, root: Path) -> Source:
        return inspect_files(*find_layout(root))

    @classmethod
    def prepare(cls, root: Path) -> Path:
        """Download CelebA into `root`/celeba with torchvision's downloader, verify it; returns the dir.

        torchvision, not WILDS: it checks every Drive file's MD5 and raises on failure, while WILDS'
        CodaLab bundle has no checksum and WILDS prints download errors instead of raising them.
        WILDS' bundle, or Kaggle's archive, is a manual route: both are read as they unpack. Google
        Drive often refuses with a quota page; then one line gives the manual steps. The images are
        counted per split and group against OFFICIAL_COUNTS (not decoded: their archive passed its
        MD5). On any failure it removes what it created and raises one line."""
        root = Path(root).expanduser()
        with contextlib.suppress(Invalid):  # already present in any layout: nothing to do
            return cls.inspect(root).data_dir
        download = torchvision_downloader()
        data_dir = root / TV_DIR
        kept = f" ({data_dir} predates this run, so it was kept: if this repeats, delete it)"
        rerun = f"rerun: {fix_hint(root)}" + (kept if data_dir.exists() else "")
        zip_path = data_dir / f"{IMAGES}.zip"
        had_zip = zip_path.exists()
        with removed_on_failure(data_dir):
            fetch(download, root, manual_steps(root, rerun))
            verified(data_dir, rerun, cls.official_counts)
        if not had_zip:  # 1.4 GB that only duplicates the verified images; torchvision accepts it gone
            zip_path.unlink(missing_ok=True)
        return data_dir


def torchvision_downloader() -> Callable[..., Any]:
    """torchvision's CelebA class, whose download=True fetches the Drive files and checks their MD5s."""
    try:
        import gdown  # noqa: F401  torchvision's Google Drive downloader; it says so only after starting
    except ImportError:
        raise ConfigError("prepare celeba needs gdown for torchvision's Google Drive download: pip install gdown") \
            from None
    from torchvision import datasets

    return datasets.CelebA


def manual_steps(root: Path, rerun: str) -> str:
    return (f"download it by hand, either Kaggle's archive ({KAGGLE_URL}) unpacked so that "
            f"{root / 'celebA_v1.0'} holds list_attr_celeba.csv, list_eval_partition.csv and {IMAGES}/000001.jpg..., "
            f"or the Drive files linked from {DRIVE_URL} ({IMAGES}.zip unzipped, list_attr_celeba.txt, "
            f"list_eval_partition.txt) put in {root / TV_DIR}; then {rerun}")


def fetch(download: Callable[..., Any], root: Path, fix: str) -> None:
    """Run torchvision's download; whatever it raises (quota page, MD5 mismatch, network) becomes one line."""
    guarded_download(lambda: download(str(root), split="all", target_type=[], download=True),
                     "celeba: download from Google Drive", fix)


def verified(data_dir: Path, rerun: str, official: dict[str, tuple[int, ...]]) -> None:
    """The download checked as the reader checks it, and its group counts against the official ones."""
    try:
        counts = inspect_files(data_dir, "txt").group_counts()
    except Invalid as exc:
        raise DataNotFoundError(f"celeba: download into {data_dir} is incomplete ({exc}); {rerun}") from None
    wrong = count_mismatch(counts, official, GROUPS)
    if wrong:
        raise DataNotFoundError(f"celeba: download into {data_dir} has {wrong}; {rerun}")
