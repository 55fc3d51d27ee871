"""civilcomments and civilcomments_small on fixtures in the WILDS CSV format: labels, groups, errors, prepare, runs."""
from __future__ import annotations

import json
import math
import os
import pickle
import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from robustbench_mtl import testing
from robustbench_mtl.cli import main
from robustbench_mtl.data import _civil
from robustbench_mtl.data import civilcomments as cc
from robustbench_mtl.data import civilcomments_small as cs
from robustbench_mtl.data.toycomments import EVAL_GROUPS, GROUP_NAMES, IDENTITIES
from robustbench_mtl.errors import DataNotFoundError
from robustbench_mtl.registry import DATASETS

NAN = float("nan")
TINY = ("backbone.hidden_size=16", "backbone.num_layers=1", "backbone.num_heads=2", "backbone.intermediate_size=32",
        "backbone.vocab_size=60")
# Official columns beside the ones read (a subset of the WILDS file's 60-odd): they must be ignored.
OTHER = ("id", "created_date", "article_id", "severe_toxicity", "obscene", "identity_attack", "insult", "threat",
         "identity_annotator_count", "transgender", "jewish", "asian", "identity_any", "num_identities")
# Rows a parser gets wrong: quoting, embedded newlines, unicode, 'NA' as text, an empty comment, NaN
# identities, and values exactly at the 0.5 thresholds (label >= 0.5 toxic, identity >= 0.5 present).
SPECIAL = [
    ('He said "no, never", then left.\nSecond line, with a comma, and "quotes"', 0.8, {"male": 1.0, "white": 0.6}),
    ("Café naïve — 日本語 😀 ünïcödé, really", 0.1, {"muslim": NAN, "female": 0.5}),
    ("NA", 0.0, {}),
    ("", 0.3, {"black": NAN}),
    ("exactly half toxic; LGBTQ just under", 0.5, {"LGBTQ": 0.49, "christian": 0.5}),
]
WORDS = ("the council vote was", "this article is", "honestly the mayor seems", "the new budget looks")
TONE = {0: ("thoughtful", "fair", "reasonable"), 1: ("stupid", "idiotic", "disgusting")}


def spec() -> list[dict]:
    """The fixture's rows: the special ones in train, then per split every label x identity (one single-identity
    comment each, so all 16 evaluation groups are present), two-identity and no-identity comments."""
    rows = [{"comment_text": t, "split": "train", "toxicity": tox, **ids} for t, tox, ids in SPECIAL]
    for s, split in enumerate(("train", "val", "test")):
        for y in (0, 1):
            for k, ident in enumerate(IDENTITIES):
                rows.append({"split": split, "toxicity": 0.9 if y else 0.05, ident: 1.0,
                             "comment_text": f"{WORDS[k % 4]} {TONE[y][k % 3]} say {ident} people, case {s}{y}{k}"})
            for j in range(3 if split == "train" else 2):
                rows.append({"split": split, "toxicity": 0.7 if y else 0.2,
                             "comment_text": f"{WORDS[j]} {TONE[y][j]} {s}{j}"})
            a, b = IDENTITIES[(2 * s + y) % 8], IDENTITIES[(2 * s + y + 3) % 8]
            rows.append({"split": split, "toxicity": 0.6 if y else 0.0, a: 0.8, b: 0.9,
                         "comment_text": f"both {a} and {b} are {TONE[y][0]}, {split} {y}"})
    return rows


def frame(rows: list[dict]) -> pd.DataFrame:
    cols = ["comment_text", "split", "toxicity", *IDENTITIES]
    df = pd.DataFrame([{c: r.get(c, 0.0 if c in IDENTITIES else None) for c in cols} for r in rows])
    other = pd.DataFrame({c: np.arange(len(df)) * (i + 1) for i, c in enumerate(OTHER)})
    return pd.concat([other[["id"]], df, other.drop(columns="id")], axis=1)  # `id` first, as in the WILDS file


def write_csv(path: Path, rows: list[dict]) -> pd.DataFrame:
    """As process_labeled.py writes it: DataFrame.to_csv with the index as an unnamed first column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    df = frame(rows)
    df.to_csv(path)
    return df


def small_rows() -> list[dict]:
    """A third of the training rows, every val/test row (so all 16 evaluation groups are there)."""
    return [r for i, r in enumerate(spec()) if i % 3 == 0 or r["split"] != "train"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_csv(tmp_path / "data" / cc.WILDS_DIR / cc.FULL_CSV, spec())
    return tmp_path / "data"


@pytest.fixture
def small_root(tmp_path: Path) -> Path:
    write_csv(tmp_path / "small" / cs.SMALL_DIR / cs.SMALL_CSV, small_rows())
    return tmp_path / "small"


def make(name: str, root: Path, **kw) -> object:
    cls = DATASETS.get(name)
    return cls(cls.HParams(root=str(root), **kw), name)


def expected(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and identity membership [N, 8] computed from the spec, independently of the reader."""
    y = np.array([r["toxicity"] >= 0.5 for r in rows], dtype=np.int64)
    members = np.array([[not math.isnan(r.get(i, 0.0)) and r.get(i, 0.0) >= 0.5 for i in IDENTITIES] for r in rows])
    return y, members


def test_rows_labels_and_groups(root: Path) -> None:
    header = (root / cc.WILDS_DIR / cc.FULL_CSV).read_text().splitlines()[0]
    assert header.startswith(",id,comment_text,split,") and "male" in header  # the unnamed index column first
    src = make("civilcomments", root).source_rows()
    rows = spec()
    y, members = expected(rows)
    assert src.texts[:5] == [t for t, _, _ in SPECIAL]  # quotes, newlines, unicode, 'NA' and '' survive as text
    assert src.y.tolist() == y.tolist() and src.y[4] == 1  # toxicity 0.5 is toxic
    assert src.split.tolist() == [("train", "val", "test").index(r["split"]) for r in rows]
    assert src.g.tolist() == (2 * y + members.any(1)).tolist()
    assert members[4].tolist() == [i == "christian" for i in IDENTITIES]  # 0.49 absent, 0.5 present, NaN absent
    assert src.groups.shape == (len(rows), 16)
    for j, name in enumerate(EVAL_GROUPS):
        label, ident = int(name.startswith("toxic")), name.split("_", 1)[1]
        want = members[:, IDENTITIES.index(ident)] & (y == label)
        assert src.groups[:, j].tolist() == want.tolist(), name
    assert (src.groups.sum(1) == 2).any() and not src.groups[~members.any(1)].any()  # overlapping; none = no group


def test_group_counts_per_split(root: Path) -> None:
    ds = make("civilcomments", root)
    # train: the special rows (NA and '' without identity, the unicode one female, two toxic with identities),
    # then per label 8 single-identity, 3 no-identity and 1 two-identity comments; val/test: 8, 2 and 1
    assert ds.group_counts() == {"train": (2 + 3, 1 + 8 + 1, 3, 2 + 8 + 1), "val": (2, 9, 2, 9),
                                 "test": (2, 9, 2, 9)}
    assert not ds.is_full_release()
    assert GROUP_NAMES == ("nontoxic_no_identity", "nontoxic_identity", "toxic_no_identity", "toxic_identity")


def test_jtt_layout_and_digest_from_stat(root: Path, tmp_path: Path) -> None:
    jtt = tmp_path / "jtt"
    (jtt / "jigsaw" / "data").mkdir(parents=True)
    os.replace(root / cc.WILDS_DIR / cc.FULL_CSV, jtt / "jigsaw" / "data" / cc.FULL_CSV)
    first = make("civilcomments", jtt).source_rows().digest
    assert make("civilcomments", jtt).source_rows().digest == first
    path = jtt / "jigsaw" / "data" / cc.FULL_CSV
    os.utime(path, ns=(0, 12345))  # same bytes, another mtime: another digest (no content hashing)
    assert make("civilcomments", jtt).source_rows().digest != first


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def one_error_line(res, needle: str) -> None:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith("error: ") and needle in lines[0], res.output


def run_args(data: str, root: Path, out: Path, *extra: str) -> list[str]:
    sets = [a for s in ("train.epochs=1", "data.max_length=32", *TINY, *extra) for a in ("--set", s)]
    return ["run", "--algo", "erm", "--data", data, "--root", str(root), *sets, "--out", str(out)]


def edit(path: Path, fn) -> None:
    fn(pd.read_csv(path, index_col=0, keep_default_na=False)).to_csv(path)


def at(col: str, row: int, value):
    def fn(df: pd.DataFrame) -> pd.DataFrame:
        df[col] = df[col].astype(object)
        df.iloc[row - 1, df.columns.get_loc(col)] = value
        return df
    return fn


@pytest.mark.parametrize("change, needle", [
    (lambda df: df.drop(columns=["toxicity", "muslim"]), "lacks the column(s) toxicity, muslim"),
    (at("toxicity", 7, "high"), "data row 7 has toxicity 'high', not a number"),
    (at("toxicity", 3, ""), "data row 3 has an empty toxicity"),
    (at("toxicity", 2, 1.5), "data row 2 has toxicity 1.5, outside [0, 1]"),
    (at("split", 9, "dev"), "data row 9 has split 'dev', not one of train, val, test"),
    (at("muslim", 4, "yes"), "data row 4 has muslim 'yes', not a number"),
    (lambda df: df[df.split != "test"], "has no test rows"),
])
def test_bad_csv_is_one_line_and_writes_nothing(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                change, needle: str) -> None:
    path = root / cc.WILDS_DIR / cc.FULL_CSV
    edit(path, change)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ROBUSTBENCH_MTL_CACHE", str(cache))
    res = invoke(*run_args("civilcomments", root, tmp_path / "run"))
    one_error_line(res, f"civilcomments: {path} {needle}; fix: robustbench-mtl prepare civilcomments --root {root}")
    assert not (tmp_path / "run").exists() and not cache.exists()  # no run dir, no tokenizer, no token store


def test_pickles_are_never_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    feats = tmp_path / "jigsaw_features.pkl"  # group_DRO-style cached features as data.root
    feats.write_bytes(pickle.dumps({"x": [1, 2]}))
    res = invoke(*run_args("civilcomments", feats, tmp_path / "run"))
    one_error_line(res, f"{feats} is a pickle or a torch file (cached features?): pickles are never loaded; use the "
                        "official CSV")
    disguised = tmp_path / "d" / cc.WILDS_DIR / cc.FULL_CSV  # a pickle under the CSV's name, found by its bytes
    disguised.parent.mkdir(parents=True)
    disguised.write_bytes(pickle.dumps([1]))
    one_error_line(invoke(*run_args("civilcomments", tmp_path / "d", tmp_path / "run")), "pickles are never loaded")
    pt = tmp_path / "s" / cs.SMALL_DIR / cs.SMALL_CSV
    pt.parent.mkdir(parents=True)
    pt.write_bytes(b"PK\x03\x04torch zip")
    one_error_line(invoke(*run_args("civilcomments_small", tmp_path / "s", tmp_path / "run")), "pickles are never")
    assert not (tmp_path / "run").exists()


def test_missing_data_names_both_files(tmp_path: Path) -> None:
    one_error_line(invoke(*run_args("civilcomments", tmp_path, tmp_path / "run")),
                   f"no all_data_with_identities.csv found (looked for {tmp_path / cc.WILDS_DIR / cc.FULL_CSV}")
    one_error_line(invoke(*run_args("civilcomments_small", tmp_path, tmp_path / "run")),
                   f"no {tmp_path / cs.SMALL_DIR / cs.SMALL_CSV}, nor the full CivilComments to reconstruct it from")


def test_small_reads_the_released_csv(small_root: Path) -> None:
    ds = make("civilcomments_small", small_root)
    src = ds.source_rows()
    y, members = expected(small_rows())
    assert ds.subset == "released" and src.y.tolist() == y.tolist() and len(src.texts) == len(small_rows())
    assert src.groups.sum(0).tolist() == [int(((members[:, EVAL_GROUPS.index(n) // 2]) & (y == int(
        n.startswith("toxic")))).sum()) for n in EVAL_GROUPS]


def synthetic_full(seed: int = 0) -> _civil.Table:
    """A full table in memory with enough comments of each kind for the published counts: per split, each
    (label, identity) has 1.4x its target in single-identity comments, plus two-identity and no-identity ones."""
    rng = np.random.default_rng(seed)
    y, members, split = [], [], []
    for g, n in enumerate(cs.TRAIN_COUNTS):
        for _ in range(int(n * 1.5)):
            m = np.zeros(8, bool)
            if g % 2:
                m[rng.choice(8, 1 + int(rng.random() < 0.3), replace=False)] = True
            y.append(g // 2), members.append(m), split.append(0)
    for s, split_name in ((1, "val"), (2, "test")):
        for j, n in enumerate(cs.EVAL_ROWS[split_name]):
            for _ in range(int(n * 1.4)):
                m = np.zeros(8, bool)
                m[j // 2] = True
                y.append(j % 2), members.append(m), split.append(s)
        for _ in range(600):  # two identities, and none
            m = np.zeros(8, bool)
            m[rng.choice(8, 2, replace=False)] = True
            y.append(int(rng.random() < 0.3)), members.append(m), split.append(s)
            y.append(int(rng.random() < 0.1)), members.append(np.zeros(8, bool)), split.append(s)
    n = len(y)
    return _civil.Table(Path("synthetic.csv"), [f"comment {i}" for i in range(n)], np.array(y), np.array(members),
                        np.array(split), "synthetic")


def test_reconstruction_reproduces_the_published_counts() -> None:
    full = synthetic_full()
    rows = cs.reconstruct(full, seed=0)
    assert cs.small_mismatch(full, rows) is None  # train per group, val/test (comment, identity) rows per group
    assert (np.diff(rows) > 0).all()  # file order, no comment twice
    sub = _civil.Table(full.path, [], full.y[rows], full.members[rows], full.split[rows], "")
    assert sub.group_counts()["train"] == (7421, 4727, 625, 997) and int((sub.split == 0).sum()) == 13770
    assert sum(sub.eval_counts()["val"]) == 2039 and sum(sub.eval_counts()["test"]) == 4866
    assert (sub.members[sub.split > 0].sum(1) == 2).any()  # multi-identity comments are sampled too
    none = (full.split == 2) & ~full.members.any(1)
    assert abs(int((~sub.members.any(1) & (sub.split == 2)).sum()) - cs.RATE * none.sum()) <= 2
    assert np.array_equal(cs.reconstruct(full, seed=0), rows) and not np.array_equal(cs.reconstruct(full, 1), rows)
    short = _civil.Table(full.path, full.texts, full.y, full.members, np.where(full.split == 2, 1, full.split), "")
    wrong = cs.small_mismatch(short, cs.reconstruct(short, 0))
    assert wrong == "0 test (comment, identity) rows in group nontoxic_male, the released subset has 710"


def test_unlabeled_aux_split_is_disjoint_and_equal_in_size(root: Path, small_root: Path,
                                                           tmp_path: Path) -> None:
    os.replace(root / cc.WILDS_DIR, small_root / cc.WILDS_DIR)  # the full data beside the released subset
    ds = make("civilcomments_small", small_root, aux_source="unlabeled", max_length=32)
    src = ds.source_rows()
    aux, train = src.split == 3, src.split == 0
    assert aux.sum() == train.sum() and (src.y[aux] == -1).all() and (src.g[aux] == -1).all()
    assert not src.groups[aux].any()
    texts = [t for t, a in zip(src.texts, aux) if a]
    assert not set(texts) & {t for t, a in zip(src.texts, aux) if not a}  # none is in the subset, any split
    full_train = {r["comment_text"] for r in spec() if r["split"] == "train"}
    assert set(texts) <= full_train and len(set(texts)) == len(texts)
    assert ds.source_rows().digest != make("civilcomments_small", small_root).source_rows().digest
    ds.use_tokenizer(tiny_tokenizer(ds))
    splits = ds.load()
    assert set(splits) == {"train", "val", "test", "aux"} and len(splits["aux"]) == len(splits["train"])
    assert (splits["aux"].y["y"] == -1).all() and (splits["aux"].g == -1).all()
    again = make("civilcomments_small", small_root, aux_source="unlabeled", seed=1).source_rows()
    assert [t for t, s in zip(again.texts, again.split) if s == 3] != texts  # seeded
    os.replace(small_root / cc.WILDS_DIR, tmp_path / "moved")
    with pytest.raises(DataNotFoundError, match="aux_source=unlabeled draws from the full CivilComments.*prepare "
                                                "civilcomments --root"):
        make("civilcomments_small", small_root, aux_source="unlabeled").source_rows()


def tiny_tokenizer(ds) -> str:
    from robustbench_mtl.backbones.bert_tiny import BertTiny

    return BertTiny.tokenizer_dir(BertTiny.HParams(vocab_size=60), ds)


def test_reconstruction_fallback_warns_once(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = make("civilcomments_small", root)
    src = ds.source_rows()
    err = capsys.readouterr().err.strip().splitlines()
    assert ds.subset == "reconstructed" and len(err) == 1 and err[0].startswith("warning: civilcomments_small: ")
    assert "seeded reconstruction" in err[0] and "not the paper's subset" in err[0] and "counts differ" in err[0]
    assert (src.split == 0).sum() == 29  # the fixture has fewer comments than the targets: all are taken
    make("civilcomments_small", root).source_rows()
    assert capsys.readouterr().err == ""  # once per file and seed


@pytest.mark.parametrize("name", ["civilcomments", "civilcomments_small"])
def test_check_dataset(name: str, root: Path, small_root: Path) -> None:
    testing.check_dataset(name, root=str(root if name == "civilcomments" else small_root), max_length=32)


# -- prepare -----------------------------------------------------------------------------------------------
WILDS_URL = "https://worksheets.codalab.org/rest/bundles/0x8cd3de0634154aeaad2ee6eb96723c6e/contents/blob/"
FIX = "robustbench-mtl prepare civilcomments"


def fake_wilds(monkeypatch: pytest.MonkeyPatch, fill) -> list[str]:
    """wilds 2.0.0 in miniature: CivilComments' declared URL and size, and its downloader (`fill` stands in)."""
    calls: list[str] = []

    def download_and_extract_archive(url: str, download_root: str, extract_root: str | None = None,
                                     filename: str | None = None, md5: str | None = None,
                                     remove_finished: bool = False, size: int | None = None) -> None:
        calls.append(url)
        assert size == 90_644_480 and filename == "archive.tar.gz"
        print("Downloading", url)  # WILDS prints progress on stdout
        os.makedirs(download_root, exist_ok=True)
        fill(Path(download_root))

    class CivilCommentsDataset:
        _versions_dict = {"1.0": {"download_url": WILDS_URL, "compressed_size": 90_644_480}}

    mods = {name: types.ModuleType(name) for name in ("wilds", "wilds.datasets", "wilds.datasets.download_utils",
                                                       "wilds.datasets.civilcomments_dataset")}
    mods["wilds.datasets.download_utils"].download_and_extract_archive = download_and_extract_archive
    mods["wilds.datasets.civilcomments_dataset"].CivilCommentsDataset = CivilCommentsDataset
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return calls


def offline(d: Path) -> None:
    (d / "archive.tar.gz").write_bytes(b"")
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def complete(d: Path) -> None:
    (d / "RELEASE_v1.0.txt").write_text("")
    write_csv(d / cc.FULL_CSV, spec())


def test_prepare_offline_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "new"
    calls = fake_wilds(monkeypatch, offline)
    res = invoke("prepare", "civilcomments", "--root", str(root))
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert res.exit_code == 2 and len(errors) == 1 and res.stdout == "", res.output
    assert errors[0].startswith(f"error: civilcomments: download from {WILDS_URL} failed (URLError: <urlopen error "
                                "[Errno -3] Temporary failure in name resolution>); check the network")
    assert errors[0].endswith(f"rerun: {FIX} --root {root}") and calls == [WILDS_URL]
    assert not root.exists()


def test_prepare_verifies_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_wilds(monkeypatch, lambda d: (d / "RELEASE_v1.0.txt").write_text(""))
    with pytest.raises(DataNotFoundError, match=r"all_data_with_identities.csv is missing\); rerun: " + FIX):
        cc.CivilComments.prepare(tmp_path / "a")
    assert not (tmp_path / "a").exists()
    fake_wilds(monkeypatch, complete)
    with pytest.raises(DataNotFoundError, match=r"has \d+ train comments, the official release has 269038; rerun"):
        cc.CivilComments.prepare(tmp_path / "b")
    assert not (tmp_path / "b").exists()
    monkeypatch.setattr(cc, "OFFICIAL_SIZES", {"train": 29, "val": 22, "test": 22})
    with pytest.raises(DataNotFoundError, match="has 5 train comments in group nontoxic_no_identity, the official "
                                                "release has 148186"):
        cc.CivilComments.prepare(tmp_path / "b")
    monkeypatch.setattr(cc, "OFFICIAL_TRAIN_COUNTS", (5, 10, 3, 11))
    res = invoke("prepare", "civilcomments", "--root", str(tmp_path / "b"))
    assert res.exit_code == 0 and res.stdout.strip() == str(tmp_path / "b" / cc.WILDS_DIR), res.output
    monkeypatch.setitem(sys.modules, "wilds", None)  # present data needs no wilds and no download
    assert cc.CivilComments.prepare(tmp_path / "b") == tmp_path / "b" / cc.WILDS_DIR


def test_prepare_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(url: str, dest: Path) -> None:
        dest.with_name(dest.name + ".part").write_bytes(b"half")
        raise urllib.error.HTTPError(url, 404, "Not Found", None, None)

    monkeypatch.setattr(cs, "download_file", fail)
    root = tmp_path / "r"
    root.mkdir()
    res = invoke("prepare", "civilcomments_small", "--root", str(root))
    one_error_line(res, f"civilcomments_small: download from {cs.SMALL_URL} failed (HTTPError: HTTP Error 404: Not "
                        f"Found); check the network or download it by hand: save it as "
                        f"{root / cs.SMALL_DIR / cs.SMALL_CSV}; then rerun: robustbench-mtl prepare "
                        "civilcomments_small")
    assert os.listdir(root) == []
    monkeypatch.setattr(cs, "download_file", lambda url, dest: write_csv(dest, small_rows()))
    with pytest.raises(DataNotFoundError, match="train comments in group nontoxic_no_identity, the released subset "
                                                "has 7421; rerun"):
        cs.CivilCommentsSmall.prepare(root)
    assert os.listdir(root) == []
    write_csv(tmp_path / "ref" / "x.csv", small_rows())
    table = _civil.read_table(tmp_path / "ref" / "x.csv")
    monkeypatch.setattr(cs, "TRAIN_COUNTS", table.group_counts()["train"])
    monkeypatch.setattr(cs, "EVAL_ROWS", {s: table.eval_counts()[s] for s in ("val", "test")})
    res = invoke("prepare", "civilcomments_small", "--root", str(root))
    assert res.exit_code == 0 and res.stdout.strip() == str(root / cs.SMALL_DIR), res.output


def test_prepare_needs_wilds_and_download_file_leaves_nothing(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wilds", None)  # import wilds now raises ImportError
    one_error_line(invoke("prepare", "civilcomments", "--root", str(tmp_path / "x")),
                   "prepare needs the wilds package: pip install 'robustbench-mtl[data]'")
    src, dest = tmp_path / "src.csv", tmp_path / "d" / "out.csv"
    write_csv(src, small_rows())
    dest.parent.mkdir()
    with pytest.raises(urllib.error.URLError):  # file:// URLs: urllib's own path, offline
        cs.download_file((tmp_path / "absent.csv").as_uri(), dest)
    assert os.listdir(dest.parent) == []
    cs.download_file(src.as_uri(), dest)
    assert dest.read_bytes() == src.read_bytes() and os.listdir(dest.parent) == ["out.csv"]


# -- runs --------------------------------------------------------------------------------------------------
def run_cli(tmp_path: Path, data: str, root: Path, aux: str, *extra: str) -> dict:
    out = tmp_path / f"{data}-{aux}"
    args = run_args(data, root, out, *extra)
    args[args.index("erm")] = "mt_l1"
    res = invoke(*args[:5], "--aux", aux, *args[5:])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert f"train/loss_{aux}" in record and "val/avg_acc_duplicated" in record
    assert "test/group_acc@toxic_muslim" in record and record["val/worst_group_acc"] >= 0
    return json.loads((out / "config.json").read_text())


def test_one_epoch_mt_l1_mlm_on_civilcomments_small(tmp_path: Path, small_root: Path) -> None:
    config = run_cli(tmp_path, "civilcomments_small", small_root, "mlm")
    assert config["backbone"] == "bert_tiny" and config["objectives"] == ["mlm", "l1"]


@pytest.mark.slow
def test_one_epoch_clm_and_full_and_unlabeled(tmp_path: Path, root: Path, small_root: Path) -> None:
    run_cli(tmp_path, "civilcomments_small", small_root, "clm")
    run_cli(tmp_path, "civilcomments", root, "mlm")
    os.replace(root / cc.WILDS_DIR, small_root / cc.WILDS_DIR)
    config = run_cli(tmp_path / "u", "civilcomments_small", small_root, "mlm", "data.aux_source=unlabeled")
    assert config["data"]["sizes"]["aux"] == config["data"]["sizes"]["train"]
