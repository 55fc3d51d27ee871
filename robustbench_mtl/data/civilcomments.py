"""CivilComments (WILDS v1.0) read from its released CSV, with `prepare` to download it through WILDS."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataNotFoundError
from ..hparams import hp
from ..registry import DATASETS
from ._civil import (FULL_CSV, GROUP_NAMES, WILDS_DIR, WILDS_VERSION, CivilText, Invalid, Table, find_full,
                     read_table)
from ._files import removed_on_failure
from ._images import DEFAULT_ROOT, ROOT_ENV
from ._text import TextSource
from ._wilds import wilds_fetch, wilds_release
from .base import SPLITS

# The official split sizes and the training groups by the 8 WILDS identities (DATASETS.md §4), in GROUP_NAMES'
# order. The commonly reported 148186 / 90337 / 12731 / 17784 are "no identity" first: only that reading
# fits JTT's 24-identity counts (94895 non-toxic and 18575 toxic comments mention one of the 24, so at
# most that many can mention one of the 8, which rules out 148186 and fits 90337).
OFFICIAL_SIZES = {"train": 269038, "val": 45180, "test": 133782}
OFFICIAL_TRAIN_COUNTS = (148186, 90337, 12731, 17784)
# The CPU-feasible defaults of both CivilComments datasets: bert_tiny from scratch, not tuned per method.
CIVIL_DEFAULTS: dict[str, Any] = {
    "train.batch_size": 32, "train.optimizer": "adamw", "train.lr": 1e-3, "train.weight_decay": 0.01,
    "train.grad_clip": 1.0, "train.patience": 10, "backbone.vocab_size": 8000,
}


@dataclass(frozen=True)
class CivilCommentsHParams:
    root: str = hp(DEFAULT_ROOT, help=f"data root holding {WILDS_DIR}/ (or JTT's jigsaw/data/); ${ROOT_ENV}, when "
                                      f"set, replaces the default '{DEFAULT_ROOT}'")
    max_length: int = hp(220, ge=8, help="tokens per comment after tokenisation ([CLS] and [SEP] included); 220 "
                                         "as the MTL code's BERT runs")


@DATASETS.register("civilcomments")
class CivilComments(CivilText):
    """CivilComments (WILDS v1.0): online comments, y = toxic, spurious cue = mentions of 8 identities.

    References: Borkan et al. 2019 (Jigsaw Unintended Bias); WILDS (Koh et al., ICML 2021). Reads the released
    `civilcomments_v1.0/all_data_with_identities.csv` (or JTT's `jigsaw/data/`) under data.root with pandas,
    never a pickle. y = toxicity >= 0.5; the identities male, female, LGBTQ, christian, muslim,
    other_religions, black, white at >= 0.5 (empty = absent). Training groups: y x mentions any of the 8 (4);
    evaluation groups: y x each identity where present (16, overlapping, WILDS' worst group). Splits are
    the CSV's train/val/test strings. Get the file with `robustbench-mtl prepare civilcomments --root DIR`.
    Defaults: `bert_tiny` from scratch at max_length 220, CPU-feasible; the paper fine-tunes
    bert-base-uncased. Details: docs/methods.md#civilcomments.
    """

    HParams = CivilCommentsHParams
    defaults = {**CIVIL_DEFAULTS, "train.epochs": 3}

    def read_source(self) -> TextSource:
        table = self.table()
        return table.source(np.arange(len(table.y)))

    def table(self) -> Table:
        return read_table(find_full(self.root))

    def group_counts(self) -> dict[str, tuple[int, ...]]:
        """Comments per training group in each split, from the CSV alone (nothing tokenised)."""
        src = self.source_rows()
        return {s: tuple(np.bincount(src.g[src.split == i], minlength=4).tolist()) for i, s in enumerate(SPLITS)}

    def is_full_release(self) -> bool:
        """Whether the split sizes and training group counts are the official ones (subsets load, recorded here)."""
        return release_mismatch(self.group_counts()) is None

    @classmethod
    def prepare(cls, root: Path) -> Path:
        """Download CivilComments into `root` with WILDS' downloader and verify the CSV; returns its directory.

        On any failure it removes what it created (never what was there before) and raises one line."""
        root = Path(root).expanduser()
        with contextlib.suppress(Invalid):  # already present in either layout: nothing to do
            path = find_full(root)
            read_table(path)
            return path.parent
        url, size, download = wilds_release("civilcomments_dataset", "CivilCommentsDataset", WILDS_VERSION)
        data_dir = root / WILDS_DIR
        fix = f"robustbench-mtl prepare civilcomments --root {root}"
        rerun = (f"delete {data_dir} (it predates this run, so it was kept) and rerun" if data_dir.exists()
                 else "rerun") + f": {fix}"
        with removed_on_failure(data_dir):
            wilds_fetch("civilcomments", url, size, download, data_dir,
                  f"check the network or download it by hand: extract {url} (a .tar.gz) into {data_dir}; then {rerun}")
            return verified(data_dir, rerun)


def release_mismatch(counts: dict[str, tuple[int, ...]]) -> str | None:
    """The first split size or training group count that differs from the official release's, in words."""
    for split, want in OFFICIAL_SIZES.items():
        if sum(counts[split]) != want:
            return f"{sum(counts[split])} {split} comments, the official release has {want}"
    for g, (got, want) in enumerate(zip(counts["train"], OFFICIAL_TRAIN_COUNTS)):
        if got != want:
            return f"{got} train comments in group {GROUP_NAMES[g]}, the official release has {want}"
    return None


def verified(data_dir: Path, rerun: str) -> Path:
    """The downloaded bundle checked as the reader checks it, and its split sizes and training group counts
    against the official release's (WILDS swallows download errors, so nothing is taken on trust)."""
    try:
        for name in (f"RELEASE_v{WILDS_VERSION}.txt", FULL_CSV):
            if not (data_dir / name).is_file():
                raise Invalid(f"{data_dir / name} is missing")
        table = read_table(data_dir / FULL_CSV)
    except Invalid as exc:
        raise DataNotFoundError(f"civilcomments: download into {data_dir} is incomplete ({exc}); {rerun}") from None
    wrong = release_mismatch(table.group_counts())
    if wrong:
        raise DataNotFoundError(f"civilcomments: download into {data_dir} has {wrong}; {rerun}")
    return data_dir
