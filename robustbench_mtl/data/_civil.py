"""CivilComments' WILDS-format CSV read and checked: labels, the 8 identities, training and evaluation groups."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataNotFoundError
from ._images import Invalid, resolve_root
from ._text import TextDataset, TextSource
from .base import SPLITS
from .toycomments import EVAL_GROUPS, GROUP_NAMES, IDENTITIES

WILDS_VERSION = "1.0"
WILDS_DIR = f"civilcomments_v{WILDS_VERSION}"
FULL_CSV = "all_data_with_identities.csv"
# Searched in this order under the root: the WILDS bundle, then JTT's layout (DATASETS.md §4).
FULL_LAYOUTS = (WILDS_DIR, "jigsaw/data")
TEXT, LABEL = "comment_text", "toxicity"
REQUIRED = (TEXT, "split", LABEL, *IDENTITIES)
# NA markers for the numeric columns only: a comment reading "NA" or "null" stays text (keep_default_na off).
NUMERIC_NA = ["", "NaN", "nan", "NA", "N/A", "NULL", "null", "None"]
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle")
AUX = 3  # the split value of unlabeled auxiliary rows, after train/val/test
PARSER_VERSION = "civil-1"  # part of every digest: a change in how rows are read means new token stores


def refuse_pickle(path: Path) -> None:
    """Raise Invalid if `path` is a pickle or a torch file (by name or by its first bytes, which is all that
    is read): group_DRO/JTT cache features that way, and loading one would run arbitrary code."""
    head = b""
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(4)
    # protocol 2+ pickles start with 0x80 and the protocol number; torch.save writes a zip archive
    pickled = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    if path.suffix.lower() in PICKLE_SUFFIXES or pickled or head == b"PK\x03\x04":
        raise Invalid(f"{path} is a pickle or a torch file (cached features?): pickles are never loaded; "
                      "use the official CSV")


def checked_root(root: Path) -> Path:
    """`root` if it is a directory (or absent); a file is refused in one line, a pickle as such."""
    if root.is_file():
        refuse_pickle(root)
        raise Invalid(f"data root {root} is a file, not a directory (the directory holding the dataset's folder)")
    return root


def find_full(root: Path) -> Path:
    """all_data_with_identities.csv of the first layout present under `root`."""
    for layout in FULL_LAYOUTS:
        path = checked_root(root) / layout / FULL_CSV
        if path.exists():
            return path
    tried = ", ".join(str(root / layout / FULL_CSV) for layout in FULL_LAYOUTS)
    raise Invalid(f"no {FULL_CSV} found (looked for {tried})")


@dataclass(frozen=True)
class Table:
    """One CSV's rows in file order: text, label, identity membership [N, 8], split 0/1/2, digest."""

    path: Path
    texts: list[str]
    y: np.ndarray
    members: np.ndarray
    split: np.ndarray
    digest: str

    @property
    def g(self) -> np.ndarray:
        """Training group 2*y + mentions-any-of-the-8 (GROUP_NAMES' order; the MTL code's 'coarse' a, flipped)."""
        return 2 * self.y + self.members.any(1)

    def groups(self) -> np.ndarray:
        """The 16 overlapping evaluation groups [N, 16]: label x identity where the identity is present."""
        return np.stack([self.members[:, k] & (self.y == label) for k in range(len(IDENTITIES)) for label in (0, 1)],
                        1)

    def group_counts(self) -> dict[str, tuple[int, ...]]:
        """Comments per training group in each split."""
        return {s: tuple(np.bincount(self.g[self.split == i], minlength=4).tolist()) for i, s in enumerate(SPLITS)}

    def eval_counts(self) -> dict[str, tuple[int, ...]]:
        """(comment, identity) rows per evaluation group in each split: the released code's duplicated rows."""
        groups = self.groups()
        return {s: tuple(groups[self.split == i].sum(0).tolist()) for i, s in enumerate(SPLITS)}

    def source(self, rows: np.ndarray, extra: tuple[Any, ...] = (), aux: list[str] | None = None) -> TextSource:
        """A TextSource of `rows` (file order), plus unlabeled `aux` texts (split 3, label and group -1)."""
        aux = aux or []
        pad = np.full(len(aux), -1, dtype=np.int64)
        groups = np.concatenate([self.groups()[rows], np.zeros((len(aux), len(EVAL_GROUPS)), dtype=bool)])
        digest = hashlib.sha256(repr((self.digest, extra, len(rows), len(aux))).encode()).hexdigest()
        split = np.concatenate([self.split[rows], np.full(len(aux), AUX)])
        return TextSource([self.texts[i] for i in rows] + aux, np.concatenate([self.y[rows], pad]),
                          np.concatenate([self.g[rows], pad]), split, digest, groups)


def file_digest(path: Path) -> str:
    """From the file's path, size and mtime: hashing 450k comments on every load would cost seconds."""
    st = os.stat(path)
    return hashlib.sha256(f"{PARSER_VERSION}:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()


def numbers(col: pd.Series, path: Path, name: str) -> np.ndarray:
    """`col` as floats (NaN where empty); a value that is not a number is refused, naming its data row."""
    values = pd.to_numeric(col, errors="coerce")
    bad = np.flatnonzero(values.isna().to_numpy() & col.notna().to_numpy())
    if bad.size:
        raise Invalid(f"{path} data row {bad[0] + 1} has {name} {col.iloc[bad[0]]!r}, not a number")
    return values.to_numpy(dtype=np.float64)


def read_table(path: Path) -> Table:
    """The WILDS-format CSV at `path`, checked; raises Invalid naming the file and the first bad row or column.

    Columns are read by name, so the unnamed index column WILDS reads with index_col=0 may be there or not.
    Empty comments are kept as "" (WILDS keeps every row; the released MTL loader drops them, which shifts
    its text rows against its metadata rows)."""
    refuse_pickle(path)
    try:
        header = pd.read_csv(path, nrows=0).columns
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise Invalid(f"{path} lacks the column(s) {', '.join(missing)}")
        df = pd.read_csv(path, usecols=list(REQUIRED), dtype={TEXT: object, "split": object},
                         keep_default_na=False, na_values={c: NUMERIC_NA for c in (LABEL, *IDENTITIES)})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        cause = " ".join(str(exc).split())[:200]  # one line, however long pandas' message
        raise Invalid(f"{path} is not a readable CSV ({type(exc).__name__}: {cause})") from None
    split = df["split"].map({s: i for i, s in enumerate(SPLITS)})
    bad = np.flatnonzero(split.isna().to_numpy())
    if bad.size:
        raise Invalid(f"{path} data row {bad[0] + 1} has split {df['split'].iloc[bad[0]]!r}, not one of "
                      f"{', '.join(SPLITS)}")
    tox = numbers(df[LABEL], path, LABEL)
    bad = np.flatnonzero(~((tox >= 0) & (tox <= 1)))  # NaN fails both: an empty label is refused too
    if bad.size:
        shown = "an empty toxicity" if np.isnan(tox[bad[0]]) else f"toxicity {float(tox[bad[0]])!r}, outside [0, 1]"
        raise Invalid(f"{path} data row {bad[0] + 1} has {shown}")
    # WILDS binarises with >= 0.5; NaN compares False, so an unannotated identity counts as absent.
    members = np.stack([numbers(df[c], path, c) >= 0.5 for c in IDENTITIES], 1)
    texts = ["" if pd.isna(t) else str(t) for t in df[TEXT]]
    for i, name in enumerate(SPLITS):
        if not (split == i).any():
            raise Invalid(f"{path} has no {name} rows")
    return Table(path, texts, (tox >= 0.5).astype(np.int64), members, split.to_numpy(dtype=np.int64),
                 file_digest(path))


class CivilText(TextDataset):
    """What both CivilComments datasets share: one task, 4 training groups, 16 evaluation groups, messages."""

    tasks = {"y": 2}
    group_names = GROUP_NAMES
    eval_group_names = EVAL_GROUPS
    default_backbone = "bert_tiny"
    version = "1"

    def fix_hint(self) -> str:
        return f"robustbench-mtl prepare {self.name} --root {self.root}"

    @property
    def root(self) -> Path:
        return resolve_root(self.hparams.root)

    def text_source(self) -> TextSource:
        try:
            return self.read_source()
        except Invalid as exc:
            raise DataNotFoundError(f"{self.name}: {exc}; {exc.fix}: {self.fix_hint()}") from None

    def read_source(self) -> TextSource:
        """The checked rows (raises Invalid naming the first problem)."""
        raise NotImplementedError
