"""MultiNLI with the negation attribute: the official MNLI 1.0 text joined with group_DRO's metadata_random.csv."""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import string
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataNotFoundError
from ..hparams import hp
from ..registry import DATASETS
from ._files import guarded_download, removed_on_failure
from ._images import DEFAULT_ROOT, ROOT_ENV, Invalid, resolve_root
from ._text import TextDataset, TextSource
from .base import SPLITS

LABELS = ("contradiction", "entailment", "neutral")  # gold_label 0/1/2, as generate_multinli.py maps them
NEGATION_WORDS = frozenset(("nobody", "no", "never", "nothing"))  # Gururangan et al. 2018, via group_DRO
GROUPS = tuple(f"{label}_{neg}" for label in LABELS for neg in ("no_negation", "negation"))  # g = 2*y + neg
TEXT_DIR, METADATA = "multinli_1.0", "data/metadata_random.csv"
TEXT_FILES = tuple(f"multinli_1.0_{part}.jsonl" for part in ("train", "dev_matched", "dev_mismatched"))
COLUMNS = {"gold_label": (0, 1, 2), "sentence2_has_negation": (0, 1), "split": (0, 1, 2)}
# Per split, groups in GROUPS order, from group_DRO's metadata_random.csv (docs/methods.md#multinli).
OFFICIAL_COUNTS = {"train": (57498, 11158, 67376, 1521, 66630, 1992), "val": (22814, 4634, 26949, 613, 26655, 797),
                   "test": (34597, 6655, 40496, 886, 39930, 1148)}
MNLI_URL = "https://cims.nyu.edu/~sbowman/multinli/multinli_1.0.zip"
METADATA_URL = ("https://raw.githubusercontent.com/kohpangwei/group_DRO/master/dataset_metadata/multinli/"
                "metadata_random.csv")
METADATA_SHA1 = "dd501d956c5a25f3ecb64ccc721ac1e085168357"  # git blob SHA-1 at group_DRO@cbbc1c5b
PUNCTUATION = str.maketrans("", "", string.punctuation)


class Pickled(Invalid):
    """group_DRO's cached BERT features were found where text was expected; `root` is the root to prepare."""

    def __init__(self, path: Path, root: Path) -> None:
        super().__init__(f"{path} is group_DRO's cached BERT features, a pickle: it is never loaded (unpickling "
                         "can run arbitrary code); the text is rebuilt from the official MNLI 1.0 jsonl files",
                         fix="get them with")
        self.root = root


class NegationDisagrees(UserWarning):
    """sentence2_has_negation recomputed from the text differs from the metadata's on some rows."""


@dataclass(frozen=True)
class MultiNLIHParams:
    root: str = hp(DEFAULT_ROOT, help=f"data root holding multinli/{TEXT_DIR}/ and multinli/{METADATA} (or both "
                                      f"directly); ${ROOT_ENV}, when set, replaces the default '{DEFAULT_ROOT}'")
    max_length: int = hp(128, ge=8, help="tokens per (premise, hypothesis) pair, [CLS] and both [SEP] included; "
                                         "128 as group_DRO's cached features, which the paper's runs read")


@dataclass(frozen=True)
class Layout:
    """Where one copy lives: the dataset directory, its three jsonl files and metadata_random.csv."""

    data_dir: Path
    text: tuple[Path, ...]
    metadata: Path


def fix_hint(root: Path) -> str:
    return f"robustbench-mtl prepare multinli --root {root}"


def target_dir(root: Path) -> Path:
    """The dataset directory under `root`: `root` itself when it is group_DRO's multinli/ folder."""
    own = (root / METADATA).is_file() or (root / "glue_data" / "MNLI").is_dir()
    return root if own and not (root / "multinli").exists() else root / "multinli"


def cached_features(root: Path) -> Pickled | None:
    """group_DRO's cached_*_mnli* pickles at `root` (a file, or a folder holding or above them), if any."""
    glue = [p for p in (root, *root.parents) if p.name == "glue_data"]
    prep = glue[0].parent if glue else (root.parent if root.is_file() else root)
    if root.is_file():
        return Pickled(root, prep) if root.name.startswith("cached_") else None
    for folder in (root, root / "MNLI", root / "glue_data" / "MNLI", root / "multinli" / "glue_data" / "MNLI"):
        found = sorted(folder.glob("cached_*mnli*")) if folder.is_dir() else []
        if found:
            return Pickled(found[0], prep if folder in (root, root / "MNLI") else root)
    return None


def find_layout(root: Path) -> Layout:
    """The first copy under `root` (root/multinli/, then root/); half a copy is an error, pickles are refused."""
    pickled = cached_features(root)
    if root.is_file():
        raise pickled or Invalid(f"{root} is a file; data.root must be the directory holding multinli/")
    for data_dir in (root / "multinli", root):
        layout = Layout(data_dir, tuple(data_dir / TEXT_DIR / f for f in TEXT_FILES), data_dir / METADATA)
        files = (*layout.text, layout.metadata)
        present = [f.is_file() for f in files]
        if all(present):
            return layout
        if any(present[:3]) or (present[3] and not pickled):  # half a copy: never read another one instead
            first = files[present.index(True)]
            raise Invalid(f"{first} has no {files[present.index(False)].relative_to(data_dir)} beside it")
    if pickled:
        raise pickled
    raise Invalid(f"no MultiNLI text found (looked for {root / 'multinli' / TEXT_DIR / TEXT_FILES[0]} and "
                  f"{root / TEXT_DIR / TEXT_FILES[0]})")


def read_metadata(path: Path) -> pd.DataFrame:
    """metadata_random.csv (its pandas index is the first column) with every value checked."""
    try:
        meta = pd.read_csv(path, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise Invalid(f"{path} is not a readable CSV ({type(exc).__name__})") from None
    missing = [c for c in COLUMNS if c not in meta.columns]
    if missing:
        raise Invalid(f"{path} lacks the column(s) {', '.join(missing)} (read with its first column as the index)")
    for col, allowed in COLUMNS.items():
        bad = np.flatnonzero(~meta[col].isin(allowed).to_numpy())
        if bad.size:
            v = meta[col].iloc[bad[0]]
            shown = "an empty cell" if pd.isna(v) else repr(v.item() if isinstance(v, np.generic) else v)
            raise Invalid(f"{path} data row {bad[0] + 1} has {col} {shown}, not one of "
                          f"{', '.join(map(str, allowed))} ({bad.size} such row(s))")
    for i, split in enumerate(SPLITS):
        if not (meta["split"] == i).any():
            raise Invalid(f"{path} has no {split} rows (split == {i})")
    return meta.astype({c: "int64" for c in COLUMNS})


@dataclass
class Text:
    """The jsonl rows kept (gold_label not '-'), in file order: the pairs, labels and where each row is."""

    pairs: list[tuple[str, str]]
    labels: list[int]
    where: list[tuple[int, int]]  # (file index, 1-based line)


def read_jsonl(path: Path, index: int, out: Text) -> None:
    """Append the rows of one official jsonl file, each line checked; '-' rows are dropped, as group_DRO did."""
    ids, n = {label: i for i, label in enumerate(LABELS)}, 0
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as exc:
                    raise Invalid(f"{path} line {n} is not JSON ({exc.msg}, column {exc.colno})") from None
                row = row if isinstance(row, dict) else {}
                label, pair = row.get("gold_label"), (row.get("sentence1"), row.get("sentence2"))
                if label == "-":
                    continue
                if label not in ids or not all(isinstance(s, str) for s in pair):
                    raise Invalid(f"{path} line {n} is not an MNLI example (a JSON object with sentence1, sentence2 "
                                  f"and gold_label one of {', '.join(LABELS)} or '-')")
                out.pairs.append(pair)
                out.labels.append(ids[label])
                out.where.append((index, n))
    except UnicodeDecodeError:
        raise Invalid(f"{path} line {n + 1} is not UTF-8 text") from None


def check_join(meta: pd.DataFrame, text: Text, layout: Layout) -> None:
    """Metadata row i is the i-th kept jsonl row: equal counts, and labels equal row by row (group_DRO asserts
    the same of its features); the first mismatching row is named in both files."""
    y, got = meta["gold_label"].to_numpy(), np.asarray(text.labels)
    n = min(len(y), len(got))
    differ = np.flatnonzero(y[:n] != got[:n])

    def at(i: int) -> str:
        file, line = text.where[i]
        return f"{layout.text[file]} line {line} ({LABELS[got[i]]})"

    if len(y) != len(got):
        i = int(differ[0]) if differ.size else n
        first = (f"{layout.metadata} data row {i + 1} ({LABELS[y[i]]})" if i < len(y) else "no metadata row") + \
            " against " + (at(i) if i < len(got) else "no jsonl row")
        raise Invalid(f"{layout.metadata} has {len(y)} data rows but the jsonl files have {len(got)} examples with "
                      f"a gold label; first mismatching row: {first}")
    if differ.size:
        i = int(differ[0])
        raise Invalid(f"{layout.metadata} data row {i + 1} has gold_label {y[i]} ({LABELS[y[i]]}) but the matching "
                      f"row, {at(i)}, differs ({differ.size} row(s) differ); the rows must be train, dev_matched, "
                      "dev_mismatched in that order, without the gold_label '-' rows")


def has_negation(sentence: str) -> bool:
    """generate_multinli.py's test: ASCII punctuation removed, lower case, split on single spaces."""
    return not NEGATION_WORDS.isdisjoint(sentence.translate(PUNCTUATION).lower().split(" "))


def check_negation(meta: pd.DataFrame, text: Text, layout: Layout) -> None:
    """Warn (one line) where the recomputed attribute differs: the metadata's value is still used."""
    neg = meta["sentence2_has_negation"].to_numpy()
    differ = np.flatnonzero(np.fromiter((has_negation(p[1]) for p in text.pairs), bool, len(text.pairs)) != neg)
    if differ.size:
        i = int(differ[0])
        file, line = text.where[i]
        warnings.warn(f"multinli: sentence2_has_negation recomputed from the text differs on {differ.size} row(s) "
                      f"(first: {layout.metadata} data row {i + 1} says {neg[i]}, {layout.text[file]} line {line} "
                      f"says {1 - neg[i]}); the metadata's value is used, as in the published numbers",
                      NegationDisagrees, stacklevel=2)


def read_source(layout: Layout) -> TextSource:
    """The joined, checked rows; the digest is of the files' paths and stats (hashing 400k pairs per load
    would cost seconds, and the token store is keyed by it)."""
    meta, text = read_metadata(layout.metadata), Text([], [], [])
    for i, path in enumerate(layout.text):
        read_jsonl(path, i, text)
    check_join(meta, text, layout)
    check_negation(meta, text, layout)
    y, neg, split = (meta[c].to_numpy() for c in COLUMNS)
    digest = hashlib.sha256(repr((LABELS, sorted(NEGATION_WORDS))).encode())
    for path in (*layout.text, layout.metadata):
        st = path.stat()
        digest.update(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns};".encode())
    return TextSource(text.pairs, y, 2 * y + neg, split, digest.hexdigest())


def group_counts(src: TextSource) -> dict[str, tuple[int, ...]]:
    return {s: tuple(np.bincount(src.g[src.split == i], minlength=len(GROUPS)).tolist()) for i, s in enumerate(SPLITS)}


@DATASETS.register("multinli")
class MultiNLI(TextDataset):
    """MultiNLI: 3-class entailment with a spurious negation word in the hypothesis; groups 2*y + negation.

    References: Williams et al., "A Broad-Coverage Challenge Corpus for Sentence Understanding through
    Inference" (NAACL 2018); the negation-group task of Sagawa et al. (ICLR 2020, `kohpangwei/group_DRO`).
    Reads the official MNLI 1.0 jsonl files (train, dev_matched, dev_mismatched, concatenated in that
    order, gold_label '-' rows dropped) under data.root/multinli/multinli_1.0/ (or data.root/multinli_1.0/),
    joined row by row with group_DRO's data/metadata_random.csv beside them, whose labels must equal the
    text's. y = gold_label (contradiction 0, entailment 1, neutral 2), attribute = the metadata's
    sentence2_has_negation; splits are its random 50/20/30 split, not the official dev sets. group_DRO's
    cached BERT features are pickles and are never loaded. Get the files with `robustbench-mtl prepare
    multinli --root DIR`. Defaults: a CPU-feasible `bert_tiny`; the paper fine-tunes bert-base-uncased
    (docs/methods.md#multinli).
    """

    HParams = MultiNLIHParams
    tasks = {"y": 3}
    group_names = GROUPS
    version = "1"
    # CPU-sized defaults, not tuned per method: a random-init bert_tiny learns at AdamW 1e-3; 206k training
    # pairs make each epoch long on a CPU, so 3 epochs; a larger vocabulary for MNLI's ten genres.
    defaults = {"train.epochs": 3, "train.batch_size": 32, "train.optimizer": "adamw", "train.lr": 1e-3,
                "train.weight_decay": 0.01, "backbone.vocab_size": 8000}

    @property
    def root(self) -> Path:
        return resolve_root(self.hparams.root)

    def text_source(self) -> TextSource:
        try:
            return read_source(find_layout(self.root))
        except Invalid as exc:
            root = exc.root if isinstance(exc, Pickled) else self.root
            raise DataNotFoundError(f"multinli: {exc}; {exc.fix}: {fix_hint(root)}") from None

    @classmethod
    def prepare(cls, root: Path) -> Path:
        """Download the MNLI 1.0 text and group_DRO's metadata (SHA-1 checked) with torchvision's downloader
        into `root`, join and count them; returns the dataset directory. Files already there are kept and
        checked, never overwritten; on any failure what this call created is removed and one line raised."""
        root = Path(root).expanduser()
        with contextlib.suppress(Invalid):  # already complete and valid: nothing to do
            layout = find_layout(root)
            read_source(layout)
            return layout.data_dir
        try:  # torchvision's downloader: redirects followed, errors raised (not printed)
            from torchvision.datasets.utils import download_and_extract_archive, download_url
        except ImportError:
            raise ConfigError("prepare multinli needs torchvision's downloader: pip install torchvision") from None
        data_dir = target_dir(root)
        text_dir, meta = data_dir / TEXT_DIR, data_dir / METADATA
        kept = [str(p) for p in (text_dir, meta) if p.exists()]
        rerun = f"rerun: {fix_hint(root)}" + (f" ({', '.join(kept)} predate this run, so they were kept: delete "
                                              "them if this repeats)" if kept else "")
        manual = (f"download by hand: unzip {MNLI_URL} into {data_dir} (giving {text_dir / TEXT_FILES[0]}) "
                  f"and save {METADATA_URL} as {meta}; then {rerun}")
        had_macosx = (data_dir / "__MACOSX").exists()
        with removed_on_failure(data_dir):
            if not meta.exists():
                guarded_download(lambda: download_url(METADATA_URL, str(meta.parent), meta.name),
                                 f"multinli: download from {METADATA_URL}", manual)
            if (got := git_blob_sha1(meta)) != METADATA_SHA1:
                raise DataNotFoundError(f"multinli: {meta} has git blob SHA-1 {got}, not group_DRO's "
                                        f"{METADATA_SHA1} (dataset_metadata/multinli/metadata_random.csv at "
                                        f"cbbc1c5b); {rerun}")
            if not text_dir.exists():
                guarded_download(lambda: download_and_extract_archive(
                    MNLI_URL, str(data_dir), filename="multinli_1.0.zip", remove_finished=True),
                    f"multinli: download from {MNLI_URL}", manual)
            if not had_macosx:  # the zip's macOS resource forks: never read
                shutil.rmtree(data_dir / "__MACOSX", ignore_errors=True)
            verified(data_dir, rerun)
        return data_dir


def git_blob_sha1(path: Path) -> str:
    """`git hash-object` of the file: the SHA-1 of b"blob <size>\\0" + content, as GitHub lists it."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def verified(data_dir: Path, rerun: str) -> None:
    """The files read and joined as a run reads them, and the group counts per split against the release's."""
    try:
        counts = group_counts(read_source(find_layout(data_dir)))
    except Invalid as exc:
        raise DataNotFoundError(f"multinli: the files in {data_dir} are not usable ({exc}); {rerun}") from None
    wrong = [(s, g, got, want) for s in SPLITS
             for g, (got, want) in enumerate(zip(counts[s], OFFICIAL_COUNTS[s])) if got != want]
    if wrong:
        s, g, got, want = wrong[0]
        raise DataNotFoundError(f"multinli: {data_dir} has {got} {s} examples in group {GROUPS[g]}, the "
                                f"official release has {want}; {rerun}")
