"""CivilComments-small, the paper's 5% subset: the released CSV, else a seeded reconstruction from the full data."""
from __future__ import annotations

import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import DataNotFoundError
from ..hparams import hp
from ..registry import DATASETS
from ._civil import FULL_CSV, FULL_LAYOUTS, IDENTITIES, CivilText, Invalid, Table, checked_root, find_full, read_table
from ._files import removed_on_failure
from ._images import DEFAULT_ROOT, ROOT_ENV
from ._text import TextSource, load_tokenizer
from .base import TensorSplit
from .civilcomments import CIVIL_DEFAULTS, OFFICIAL_SIZES

SMALL_DIR, SMALL_CSV = "civilcomments_small", "all_data_with_identities_small.csv"
# athrvkk/MTL-group-robustness (MIT), branch main, added in commit aee271b: the exact subset the paper used.
SMALL_URL = ("https://raw.githubusercontent.com/athrvkk/MTL-group-robustness/main/data/civilcomments_small/"
             "all_data_with_identities_small.csv")
# Its coarse metadata (DATASETS.md §5). Train: comments per group in GROUP_NAMES' order; the coarse file's
# a = 1 means "no identity", so (y=0,a=1) 7421, (y=0,a=0) 4727, (y=1,a=1) 625, (y=1,a=0) 997.
TRAIN_COUNTS = (7421, 4727, 625, 997)
# Val/test: (comment, identity) rows per label (non-toxic, toxic) and identity, in IDENTITIES' order.
COARSE_ROWS = {"val": ((277, 335, 118, 282, 148, 97, 107, 176), (73, 70, 54, 51, 70, 34, 67, 80)),
               "test": ((710, 802, 271, 709, 374, 254, 283, 380), (156, 171, 120, 107, 132, 72, 157, 168))}
# The same rows per evaluation group, in EVAL_GROUPS' order (identity-major, label-minor).
EVAL_ROWS = {s: tuple(rows[y][k] for k in range(len(IDENTITIES)) for y in (0, 1)) for s, rows in COARSE_ROWS.items()}
# The reconstruction keeps val/test comments without an identity (the coarse file drops them, so their
# number is unpublished) at the training subset's rate, 13770 / 269038.
RATE = sum(TRAIN_COUNTS) / OFFICIAL_SIZES["train"]
SAMPLING = "greedy-1"  # in every digest: a change to reconstruct() or unlabeled() means new token stores
_warned: set[str] = set()


# The paper's text recipe (docs/methods.md#civilcomments_small; the released code's hparams.yaml): BERT-base
# fine-tuned with AdamW (eps 1e-8, weight decay 1e-2 off biases and LayerNorm weights, as the paper states),
# clipping 1.0, a linear schedule, 50 epochs, patience 10, 220 tokens; per method the batch size, the lr, the
# weights e^k of the auxiliary task and of the L1 penalty, and 6% warm-up for the multitask variants.
PAPER_TEXT_RECIPE = {
    "backbone.model": "bert-base-uncased", "backbone.pretrained": True, "data.max_length": 220,
    "train.optimizer": "adamw", "train.lr": 1e-5, "train.weight_decay": 0.01, "train.no_decay": "bias_norm",
    "train.adam_eps": 1e-8, "train.grad_clip": 1.0, "train.scheduler": "linear", "train.warmup_steps": 0,
    "train.epochs": 50, "train.patience": 10,
}
E_MINUS_1 = 0.3679
PAPER_TEXT_METHODS = {
    "erm": {"train.batch_size": 8},
    "erm_l1": {"train.batch_size": 32, "l1.weight": E_MINUS_1},
    "mt+mlm": {"train.batch_size": 32, "mlm.weight": E_MINUS_1, "train.warmup_ratio": 0.06},
    "mt_l1+mlm": {"train.batch_size": 32, "mlm.weight": 1.0, "l1.weight": E_MINUS_1, "train.warmup_ratio": 0.06},
    "mt_l1+clm": {"train.batch_size": 32, "clm.weight": E_MINUS_1, "l1.weight": E_MINUS_1,
                  "train.warmup_ratio": 0.06},
    "group_dro": {"train.batch_size": 32, "algorithm.eta": 0.1, "algorithm.group_balanced": True},
    "jtt": {"train.batch_size": 8, "algorithm.first_stage_epochs": 5, "algorithm.lambda_up": 6,
            "algorithm.select_phase2_only": False},
}
PRESETS = {
    "paper": {"backbone": "bert", "common": PAPER_TEXT_RECIPE, "methods": PAPER_TEXT_METHODS},
    # The released code's optimizer groups: its no-decay mask is inverted (biases and LayerNorm weights decay,
    # every other weight does not); labelled as that code's behaviour, not as the paper's method.
    "paper_released_decay": {"backbone": "bert", "common": {**PAPER_TEXT_RECIPE, "train.no_decay": "inverted"},
                             "methods": PAPER_TEXT_METHODS},
}


@dataclass(frozen=True)
class CivilCommentsSmallHParams:
    root: str = hp(DEFAULT_ROOT, help=f"data root holding {SMALL_DIR}/{SMALL_CSV} (the released subset), else the "
                                      f"full civilcomments_v1.0/ to reconstruct it from; ${ROOT_ENV}, when set, "
                                      f"replaces the default '{DEFAULT_ROOT}'")
    max_length: int = hp(220, ge=8, help="tokens per comment after tokenisation ([CLS] and [SEP] included)")
    aux_source: Literal["train", "unlabeled"] = hp(
        "train", help="text of the auxiliary task: train = the subset's training comments (the paper); unlabeled "
                      "= a split 'aux' of as many other comments from the full training split (the paper's Table 12)")
    seed: int = hp(0, help="seed of the reconstruction (only without the released file) and of the unlabeled draw")


def small_mismatch(table: Table, rows: np.ndarray | None = None) -> str | None:
    """The first count of `table` (or its `rows`) that differs from the released subset's, in words."""
    sub = table if rows is None else Table(table.path, [], table.y[rows], table.members[rows], table.split[rows], "")
    train = sub.group_counts()["train"]
    for g, (got, want) in enumerate(zip(train, TRAIN_COUNTS)):
        if got != want:
            return f"{got} train comments in group {CivilText.group_names[g]}, the released subset has {want}"
    for split, want_rows in EVAL_ROWS.items():
        for k, (got, want) in enumerate(zip(sub.eval_counts()[split], want_rows)):
            if got != want:
                group = CivilText.eval_group_names[k]
                return f"{got} {split} (comment, identity) rows in group {group}, the released subset has {want}"
    return None


def reconstruct(table: Table, seed: int) -> np.ndarray:
    """Rows of the full `table` reproducing the released subset's counts (file order), seeded.

    Train: TRAIN_COUNTS comments drawn uniformly per training group. Val/test: comments with an identity, in
    a seeded random order, each kept while every (label, identity) row count it adds stays within EVAL_ROWS
    (greedy: exact whenever enough single-identity comments remain); comments without an identity at RATE."""
    rng = np.random.default_rng(seed)
    groups, g, any_id = table.groups(), table.g, table.members.any(1)
    pools = [np.flatnonzero((table.split == 0) & (g == k)) for k in range(len(TRAIN_COUNTS))]
    chosen = [rng.choice(pool, min(n, len(pool)), replace=False) for pool, n in zip(pools, TRAIN_COUNTS)]
    for i, split in ((1, "val"), (2, "test")):
        remaining, taken = np.array(EVAL_ROWS[split]), []
        for r in rng.permutation(np.flatnonzero((table.split == i) & any_id)):
            cols = groups[r]
            if (remaining[cols] > 0).all():
                remaining[cols] -= 1
                taken.append(r)
        chosen.append(np.asarray(taken, dtype=np.int64))
        for y in (0, 1):
            pool = np.flatnonzero((table.split == i) & ~any_id & (table.y == y))
            chosen.append(rng.choice(pool, int(round(RATE * len(pool))), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def unlabeled(full: Table, taken: set[str], n: int, seed: int) -> list[str]:
    """`n` texts of the full training split not among `taken` (the subset's texts), seeded, in file order."""
    pool = np.asarray([i for i in np.flatnonzero(full.split == 0) if full.texts[i] not in taken], dtype=np.int64)
    if len(pool) < n:
        raise Invalid(f"{full.path} has {len(pool)} training comments outside the subset, fewer than the {n} "
                      f"data.aux_source=unlabeled needs")
    pick = np.sort(np.random.default_rng([seed, 1]).choice(pool, n, replace=False))  # apart from reconstruct's
    return [full.texts[i] for i in pick]


def download_file(url: str, dest: Path) -> None:
    """`url` saved as `dest` (written beside it, then renamed: an interrupted download leaves no `dest`)."""
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


@DATASETS.register("civilcomments_small")
class CivilCommentsSmall(CivilText):
    """CivilComments-small: the paper's 5% subset of CivilComments (13,770 training comments).

    Reference: Kulkarni, Dery et al. (the MTL paper), `data/civilcomments_small/` of
    athrvkk/MTL-group-robustness. Reads the released WILDS-format table
    `civilcomments_small/all_data_with_identities_small.csv` under data.root, exactly as `civilcomments`
    reads the full file (same labels, 4 training groups, 16 overlapping evaluation groups). Its val/test
    sizes 2,039 / 4,866 count (comment, identity) rows, which `avg_acc_duplicated` and the 16 groups
    reproduce. Without the released file but with the full CivilComments, it uses a seeded RECONSTRUCTION
    matching the published counts (not the paper's subset; a warning says so). `aux_source=unlabeled` adds
    a split 'aux' of other training comments (Table 12). Get the file with `robustbench-mtl prepare
    civilcomments_small --root DIR`.
    Defaults: `bert_tiny` at max_length 220; the paper fine-tunes bert-base-uncased.
    Details: docs/methods.md#civilcomments_small.
    """

    HParams = CivilCommentsSmallHParams
    defaults = {**CIVIL_DEFAULTS, "train.epochs": 10}
    presets = PRESETS

    def __init__(self, hparams: CivilCommentsSmallHParams, name: str) -> None:
        super().__init__(hparams, name)
        self.subset = ""  # "released" (the exact subset) or "reconstructed", once the rows are read

    def notes(self) -> dict[str, str]:
        """For config.json: whether the rows are the released subset or a seeded reconstruction."""
        return {"subset": self.subset}

    def read_source(self) -> TextSource:
        h, small = self.hparams, checked_root(self.root) / SMALL_DIR / SMALL_CSV
        if small.exists():
            table, self.subset = read_table(small), "released"
            rows = np.arange(len(table.y))
        else:
            candidates = [self.root / d / FULL_CSV for d in FULL_LAYOUTS]
            if not any(p.exists() for p in candidates):
                raise Invalid(f"no {small}, nor the full CivilComments to reconstruct it from "
                              f"({', '.join(map(str, candidates))})")
            table, self.subset = read_table(find_full(self.root)), "reconstructed"
            rows = reconstruct(table, h.seed)
            self.warn(table, rows)
        aux = None
        if h.aux_source == "unlabeled":
            full = table if self.subset == "reconstructed" else self.full_table()
            taken = {table.texts[i] for i in rows}
            aux = unlabeled(full, taken, int((table.split[rows] == 0).sum()), h.seed)
        seeded = self.subset == "reconstructed" or aux is not None  # else the seed changes nothing: same stores
        return table.source(rows, (self.subset, SAMPLING, h.aux_source, h.seed if seeded else None), aux)

    def full_table(self) -> Table:
        """The full CivilComments, which the unlabeled auxiliary text is drawn from."""
        try:
            return read_table(find_full(self.root))
        except Invalid as exc:
            raise DataNotFoundError(f"{self.name}: data.aux_source=unlabeled draws from the full CivilComments "
                                    f"training split: {exc}; fix: robustbench-mtl prepare civilcomments --root "
                                    f"{self.root}") from None

    def warn(self, table: Table, rows: np.ndarray) -> None:
        """One line on stderr, once per file and seed: this is not the paper's subset."""
        key = f"{table.path}:{self.hparams.seed}"
        if key not in _warned:
            _warned.add(key)
            wrong = small_mismatch(table, rows)
            match = "all published counts match" if wrong is None else f"counts differ: {wrong}"
            print(f"warning: {self.name}: {self.root / SMALL_DIR / SMALL_CSV} is absent, so this is a seeded "
                  f"reconstruction from {table.path} (seed {self.hparams.seed}), not the paper's subset ({match}); "
                  f"{self.fix_hint()} fetches the released one", file=sys.stderr)

    def generate(self) -> dict[str, TensorSplit]:
        splits = super().generate()
        src = self.source_rows()
        if (src.split == 3).any():  # the unlabeled auxiliary text, tokenised as the other splits
            splits["aux"] = self._split(src, 3, "aux", load_tokenizer(self.tokenizer_dir()))
        return splits

    @classmethod
    def prepare(cls, root: Path) -> Path:
        """Download the released subset into `root`/civilcomments_small and verify its counts; returns the dir.

        On any failure it removes what it created (never what was there before) and raises one line."""
        root = Path(root).expanduser()
        path, fix = root / SMALL_DIR / SMALL_CSV, f"robustbench-mtl prepare civilcomments_small --root {root}"
        if path.exists():
            try:
                read_table(path)
                return path.parent
            except Invalid as exc:
                raise DataNotFoundError(f"civilcomments_small: {exc}; delete it and rerun: {fix}") from None
        with removed_on_failure(path.parent):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                download_file(SMALL_URL, path)
            except Exception as exc:  # urllib, HTTP, disk: whatever it is, the line names it
                cause = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                raise DataNotFoundError(f"civilcomments_small: download from {SMALL_URL} failed ({cause}); check "
                                        f"the network or download it by hand: save it as {path}; then rerun: "
                                        f"{fix}") from None
            try:
                wrong = small_mismatch(read_table(path))
            except Invalid as exc:
                wrong = f"a file that does not read ({exc})"
            if wrong:
                raise DataNotFoundError(f"civilcomments_small: download into {path} has {wrong}; rerun: {fix}")
        return path.parent
