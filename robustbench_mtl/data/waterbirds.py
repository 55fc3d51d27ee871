"""Waterbirds read from its released files (WILDS or group_DRO layout), with `prepare` to download it."""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataNotFoundError
from ..hparams import hp
from ..registry import DATASETS
from ._files import removed_on_failure
from ._images import (DEFAULT_ROOT, E_MINUS_1, E_PLUS_1, PAPER_IMAGE_RECIPE, ROOT_ENV, ImageFiles, Invalid, Rows,
                      Source, StoredImages, checked_paths, count_mismatch, stat_digest)
from ._wilds import wilds_fetch, wilds_release
from .base import SPLITS, WATERBIRDS_GROUPS

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


@dataclass(frozen=True)
class WaterbirdsHParams(StoredImages):
    root: str = hp(DEFAULT_ROOT, help=f"data root holding {WILDS_DIR}/ or waterbird_complete95_forest2water2/; "
                                      f"${ROOT_ENV}, when set, replaces the default '{DEFAULT_ROOT}'")
    image_size: int = hp(64, ge=8, help="images are resized to this side (eval transform Resize((s, s))); the "
                                  "paper uses 384 for ViT-B/16, 64 keeps CPU runs feasible")


# The released code's chosen settings per method (its hparams.yaml; docs/methods.md#waterbirds): batch size,
# and the weights e^k of the auxiliary task and of the L1 penalty; SimCLR with its released pairing.
PAPER_METHODS: dict[str, dict[str, Any]] = {
    "erm": {"train.batch_size": 4},
    "erm_l1": {"train.batch_size": 4, "l1.weight": E_MINUS_1},
    "mt+mim": {"train.batch_size": 4, "mim.weight": 1.0},
    "mt_l1+mim": {"train.batch_size": 16, "mim.weight": E_MINUS_1, "l1.weight": E_MINUS_1},
    "mt_l1+simclr": {"train.batch_size": 16, "simclr.weight": E_PLUS_1, "l1.weight": E_MINUS_1,
                     "simclr.pairing": "official"},
    "group_dro": {"train.batch_size": 16, "algorithm.eta": 0.1, "algorithm.group_balanced": True},
    "jtt": {"train.batch_size": 8, "algorithm.first_stage_epochs": 10, "algorithm.lambda_up": 20,
            "algorithm.select_phase2_only": False},
}
PRESETS = {
    "paper": {"backbone": "vit_b16", "common": PAPER_IMAGE_RECIPE, "methods": PAPER_METHODS},
    "paper_stated_wd": {"backbone": "vit_b16", "common": {**PAPER_IMAGE_RECIPE, "train.weight_decay": 0.01},
                        "methods": PAPER_METHODS},
}


def fix_hint(root: Path) -> str:
    return f"robustbench-mtl prepare waterbirds --root {root}"


def find_metadata(root: Path) -> Path:
    """metadata.csv of the first layout present under `root`."""
    for layout in LAYOUTS:
        if (root / layout / "metadata.csv").is_file():
            return root / layout / "metadata.csv"
    tried = ", ".join(str(root / layout / "metadata.csv") for layout in LAYOUTS)
    raise Invalid(f"no metadata.csv found (looked for {tried})")


def read_metadata(path: Path) -> pd.DataFrame:
    """metadata.csv with its required columns and values checked; every split must be non-empty."""
    try:
        meta = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise Invalid(f"{path} is not a readable CSV ({type(exc).__name__})") from None
    missing = [c for c in REQUIRED if c not in meta.columns]
    if missing:
        raise Invalid(f"{path} lacks the column(s) {', '.join(missing)}")
    for col, allowed in ALLOWED.items():
        bad = ~meta[col].isin(allowed)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise Invalid(f"{path} has {int(bad.sum())} {col} value(s) outside {set(allowed)} "
                          f"(first: {meta[col].iloc[row]!r} in data row {row + 1})")
    for i, split in enumerate(SPLITS):
        if not (meta["split"] == i).any():
            raise Invalid(f"{path} has no {split} rows (split == {i})")
    blank = meta["img_filename"].isna().to_numpy()  # an empty cell; os.path.join would raise TypeError
    if blank.any():
        raise Invalid(f"{path} has an empty img_filename in data row {int(np.flatnonzero(blank)[0]) + 1}")
    return meta.astype({**{c: "int64" for c in ALLOWED}, "img_filename": str})


def inspect_files(meta_path: Path) -> Source:
    """Read and check metadata.csv and the images it lists (raises Invalid naming the first problem).

    Every name is checked to stay inside the dataset directory before any image is touched."""
    meta, rows, data_dir = read_metadata(meta_path), Rows(meta_path), meta_path.parent
    names = meta["img_filename"].tolist()
    paths = checked_paths(data_dir, names, rows)
    digest = hashlib.sha256(meta_path.read_bytes())
    digest.update(str(data_dir.resolve()).encode())  # same files elsewhere: another cache entry
    digest.update(stat_digest(data_dir, names, paths, rows).encode())
    y, place, split = (meta[c].to_numpy() for c in ("y", "place", "split"))
    return Source(data_dir, rows, paths, y, place, split, digest.hexdigest())


@DATASETS.register("waterbirds")
class Waterbirds(ImageFiles):
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
    presets = PRESETS
    key = "waterbirds"
    official_counts = OFFICIAL_COUNTS
    group_names = WATERBIRDS_GROUPS

    @classmethod
    def inspect(cls, root: Path) -> Source:
        return inspect_files(find_metadata(root))

    @classmethod
    def prepare(cls, root: Path) -> Path:
        """Download Waterbirds into `root` with WILDS' downloader and verify every file; returns the dir.

        On any failure it removes what it created (never what was there before) and raises one line."""
        root = Path(root).expanduser()
        with contextlib.suppress(Invalid):  # already present in any layout: nothing to do
            return cls.inspect(root).data_dir
        url, size, download = wilds_release("waterbirds_dataset", "WaterbirdsDataset", WILDS_VERSION,
                                            f"extract {MANUAL_URL} into the data root")
        data_dir = root / WILDS_DIR
        # A directory that was there before is kept on failure, so the fix must say to delete it.
        rerun = (f"delete {data_dir} (it predates this run, so it was kept) and rerun" if data_dir.exists()
                 else "rerun") + f": {fix_hint(root)}"
        with removed_on_failure(data_dir):
            wilds_fetch("waterbirds", url, size, download, data_dir, f"check the network or download it by hand: "
                                                                    f"extract {MANUAL_URL} into {root}; then {rerun}")
            return verified(data_dir, rerun)


def verified(data_dir: Path, rerun: str) -> Path:
    """The downloaded WILDS bundle checked file by file, as the reader will check it, and its group counts
    per split against the official release's (DATASETS.md §1)."""
    try:
        for name in (f"RELEASE_v{WILDS_VERSION}.txt", "metadata.csv"):  # the WILDS bundle, whatever else is there
            if not (data_dir / name).is_file():
                raise Invalid(f"{data_dir / name} is missing")
        src = inspect_files(data_dir / "metadata.csv")
    except Invalid as exc:
        raise DataNotFoundError(f"waterbirds: download into {data_dir} is incomplete ({exc}); {rerun}") from None
    wrong = count_mismatch(src.group_counts(), OFFICIAL_COUNTS, WATERBIRDS_GROUPS)
    if wrong:
        raise DataNotFoundError(f"waterbirds: download into {data_dir} has {wrong}; {rerun}")
    return src.data_dir
