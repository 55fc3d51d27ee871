"""The multinli reader on tiny fixtures in the official formats: join, labels, negation, groups, errors, prepare."""
from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from robustbench_mtl import testing
from robustbench_mtl.cli import main
from robustbench_mtl.data import multinli as mnli
from robustbench_mtl.errors import DataNotFoundError
from robustbench_mtl.registry import DATASETS

FIX = "robustbench-mtl prepare multinli"
TINY = ("--set", "train.epochs=1", "--set", "backbone.hidden_size=16", "--set", "backbone.num_layers=1",
        "--set", "backbone.num_heads=2", "--set", "backbone.intermediate_size=32", "--set", "backbone.vocab_size=60")
# Hypotheses by negation, with the cases generate_multinli.py's test turns on: punctuation glued to the word,
# upper case, and words that only contain a negation word ("No-one" becomes "noone", "don't" "dont").
HYPOTHESES = {1: ("There is no cat here.", "Nobody, came to the party!", "I NEVER eat fish.", "Nothing happened."),
              0: ("No-one came.", "I don't know.", "A man is sleeping.", "Notice the sign.")}
LABELS = ("contradiction", "entailment", "neutral")


def kept_rows(seed: int = 0) -> list[dict]:
    """Two examples per group per split (36), in a shuffled order: splits do not follow the files."""
    rows = [{"y": y, "neg": neg, "split": s} for s in range(3) for y in range(3) for neg in (0, 1) for _ in range(2)]
    order = np.random.default_rng(seed).permutation(len(rows))
    rows = [rows[i] for i in order]
    for k, r in enumerate(rows):
        r["s1"], r["s2"] = f"Premise {k} about the {('fiction', 'travel', 'slate')[k % 3]}.", \
            f"{HYPOTHESES[r['neg']][k % 4]} (row {k})"
    return rows


def jsonl_row(k: int, s1: str, s2: str, label: str) -> str:
    """One line as the official files write it (the fields the reader ignores included)."""
    return json.dumps({"annotator_labels": [label], "genre": "fiction", "gold_label": label, "pairID": f"{k}e",
                       "promptID": str(k), "sentence1": s1, "sentence1_binary_parse": "( x )",
                       "sentence1_parse": "(ROOT)", "sentence2": s2, "sentence2_binary_parse": "( y )",
                       "sentence2_parse": "(ROOT)"})


def write_fixture(data_dir: Path, seed: int = 0) -> list[dict]:
    """multinli_1.0/ with the three jsonl files (20, 8 and 8 examples, and four '-' rows), and
    data/metadata_random.csv written with generate_multinli.py's steps. Returns the kept rows in order."""
    rows, text = kept_rows(seed), data_dir / mnli.TEXT_DIR
    text.mkdir(parents=True, exist_ok=True)
    parts = [rows[:20], rows[20:28], rows[28:]]
    dash_at = [(3, 11), (0,), (8,)]  # '-' rows (no gold label): inside train, first in dev_matched, last
    for name, part, dashes in zip(mnli.TEXT_FILES, parts, dash_at):
        lines = [jsonl_row(i, r["s1"], r["s2"], LABELS[r["y"]]) for i, r in enumerate(part)]
        for d in dashes:
            lines.insert(d, jsonl_row(99, "An unlabelled premise.", "There is no label.", "-"))
        (text / name).write_text("\n".join(lines) + "\n")
    # As generate_multinli.py: concatenate (ignore_index), assign the random split to every row, drop '-',
    # map labels, and save three columns with the pandas index (the unfiltered positions) as the first column.
    df = pd.concat([pd.read_json(text / name, lines=True) for name in mnli.TEXT_FILES], ignore_index=True)
    kept = df["gold_label"] != "-"
    df["split"] = 0
    df.loc[kept, "split"] = [r["split"] for r in rows]
    df = df.loc[kept, :].copy()
    df["gold_label"] = df["gold_label"].map({label: i for i, label in enumerate(LABELS)})
    df["sentence2_has_negation"] = [r["neg"] for r in rows]  # by hand, not by the reader's own test
    (data_dir / "data").mkdir(exist_ok=True)
    df[["gold_label", "sentence2_has_negation", "split"]].to_csv(data_dir / mnli.METADATA)
    return rows


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_fixture(tmp_path / "data" / "multinli")
    return tmp_path / "data"


def make(root: Path) -> mnli.MultiNLI:
    cls = DATASETS.get("multinli")
    return cls(cls.HParams(root=str(root)), "multinli")


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def one_error_line(res, needle: str) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith("error: ") and needle in lines[0], res.output
    return lines[0]


def test_metadata_is_written_as_group_dro_writes_it(root: Path) -> None:
    lines = (root / "multinli" / mnli.METADATA).read_text().splitlines()
    assert lines[0] == ",gold_label,sentence2_has_negation,split"
    index = [int(ln.split(",")[0]) for ln in lines[1:]]
    assert len(index) == 36 and index[:5] == [0, 1, 2, 4, 5]  # the '-' row at position 3 left a gap


def test_join_labels_negation_and_groups(root: Path) -> None:
    rows = kept_rows()
    src = make(root).source_rows()
    assert src.texts == [(r["s1"], r["s2"]) for r in rows]  # train, dev_matched, dev_mismatched; '-' dropped
    assert src.y.tolist() == [r["y"] for r in rows] and src.split.tolist() == [r["split"] for r in rows]
    assert src.g.tolist() == [2 * r["y"] + r["neg"] for r in rows] and src.groups is None
    assert mnli.group_counts(src) == {s: (2,) * 6 for s in ("train", "val", "test")}
    assert mnli.GROUPS[0] == "contradiction_no_negation" and mnli.GROUPS[5] == "neutral_negation"
    val = [r["s2"] for r in rows if r["split"] == 1]
    assert make(root).texts("val")[1::2] == val  # both sides of each pair, in row order


def test_negation_test_is_generate_multinli_s() -> None:
    for neg, sentences in HYPOTHESES.items():
        assert [mnli.has_negation(s) for s in sentences] == [bool(neg)] * 4, sentences
    assert not mnli.has_negation("no\tway") and mnli.has_negation("no  way")  # split(' '), as the script


def test_negation_disagreement_warns_and_keeps_the_metadata(root: Path) -> None:
    path = root / "multinli" / mnli.METADATA
    meta = pd.read_csv(path, index_col=0)
    meta.iloc[4, 1] = 1 - meta.iloc[4, 1]
    meta.to_csv(path)
    with pytest.warns(mnli.NegationDisagrees) as caught:
        src = make(root).source_rows()
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "differs on 1 row(s)" in msg and f"{path} data row 5" in msg and "\n" not in msg
    assert "multinli_1.0_train.jsonl line 6" in msg  # row 5 of the join: the '-' row at line 4 is skipped
    assert src.g[4] == 2 * src.y[4] + meta.iloc[4, 1]  # the metadata's value is the attribute


def test_fixture_loads_without_warnings(root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(root).source_rows()


def test_layout_directly_under_root(tmp_path: Path) -> None:
    write_fixture(tmp_path)  # group_DRO's root_dir: multinli_1.0/ and data/ side by side
    assert len(make(tmp_path).source_rows().texts) == 36
    assert mnli.find_layout(tmp_path).data_dir == tmp_path


def test_digest_follows_the_files(root: Path) -> None:
    first = make(root).source_rows().digest
    assert make(root).source_rows().digest == first
    path = root / "multinli" / mnli.TEXT_DIR / mnli.TEXT_FILES[1]
    path.write_text(path.read_text().replace("Premise 20", "Premise XX"))
    assert make(root).source_rows().digest != first


def edit_text(root: Path, file: int, edit) -> Path:
    path = root / "multinli" / mnli.TEXT_DIR / mnli.TEXT_FILES[file]
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    return path


def edit_meta(root: Path, edit) -> Path:
    path = root / "multinli" / mnli.METADATA
    edit(pd.read_csv(path, index_col=0)).to_csv(path)
    return path


def swap_label(meta: pd.DataFrame) -> pd.DataFrame:
    meta.iloc[6, 0] = (meta.iloc[6, 0] + 1) % 3
    return meta


BAD = {
    "missing column": (lambda r: edit_meta(r, lambda m: m.drop(columns=["sentence2_has_negation"])),
                       "metadata_random.csv lacks the column(s) sentence2_has_negation"),
    "not JSON": (lambda r: edit_text(r, 0, lambda ls: ls[:2] + ['{"gold_label": "neutral", "sentence1'] + ls[3:]),
                 "multinli_1.0_train.jsonl line 3 is not JSON (Unterminated string"),
    "count mismatch": (lambda r: edit_text(r, 2, lambda ls: ls[:2] + ls[3:]),
                       "metadata_random.csv has 36 data rows but the jsonl files have 35 examples with a gold label; "
                       "first mismatching row: "),
    "label mismatch": (lambda r: edit_meta(r, swap_label), "metadata_random.csv data row 7 has gold_label"),
    "bad value": (lambda r: edit_meta(r, lambda m: m.assign(split=m.split.replace(2, 3))), "has split 3, not one of"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_are_one_line_and_write_nothing(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   case: str) -> None:
    spoil, needle = BAD[case]
    spoil(root)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ROBUSTBENCH_MTL_CACHE", str(cache))
    out = tmp_path / "run"
    res = invoke("run", "--algo", "erm", "--data", "multinli", "--root", str(root), *TINY, "--out", str(out))
    line = one_error_line(res, needle)
    assert line.endswith(f"{FIX} --root {root}"), line
    assert not out.exists() and not (cache.exists() and any(cache.rglob("*")))  # no run dir, no tokenizer or store


def test_count_mismatch_names_the_first_mismatching_row(root: Path) -> None:
    edit_text(root, 2, lambda ls: ls[:2] + ls[3:])  # dev_mismatched loses line 3, the join's row 30 (0-based)
    with pytest.raises(DataNotFoundError) as exc:
        make(root).source_rows()
    y = [r["y"] for r in kept_rows()]
    # From row 30 on, metadata row i meets the old row i + 1, now at dev_mismatched line i - 27.
    i = next((i for i in range(30, 35) if y[i] != y[i + 1]), 35)
    meta, text = root / "multinli" / mnli.METADATA, root / "multinli" / mnli.TEXT_DIR / mnli.TEXT_FILES[2]
    against = f"{text} line {i - 27} ({LABELS[y[i + 1]]})" if i < 35 else "no jsonl row"
    assert f"first mismatching row: {meta} data row {i + 1} ({LABELS[y[i]]}) against {against}" in str(exc.value)


def test_label_mismatch_names_the_jsonl_line(root: Path) -> None:
    path = edit_meta(root, swap_label)
    with pytest.raises(DataNotFoundError) as exc:
        make(root).source_rows()
    train = root / "multinli" / mnli.TEXT_DIR / mnli.TEXT_FILES[0]
    y = kept_rows()[6]["y"]
    assert f"{path} data row 7 has gold_label {(y + 1) % 3} ({LABELS[(y + 1) % 3]}) but the matching row, " \
           f"{train} line 8 ({LABELS[y]}), differs (1 row(s) differ)" in str(exc.value)


def cached_pickles(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("cached_train_bert-base-uncased_128_mnli", "cached_dev_bert-base-uncased_128_mnli-mm"):
        (folder / name).write_bytes(b"\x80\x04K\x01.")  # a pickle; opening it would be the bug
    return folder / "cached_dev_bert-base-uncased_128_mnli-mm"


def test_pickles_are_never_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    import torch

    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("a pickle was loaded"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was loaded"))
    group_dro = tmp_path / "data" / "multinli"  # group_DRO's download: metadata and features, no text
    pickle_path = cached_pickles(group_dro / "glue_data" / "MNLI")
    (group_dro / "data").mkdir()
    (group_dro / mnli.METADATA).write_text(",gold_label,sentence2_has_negation,split\n")
    cases = [(tmp_path / "data", tmp_path / "data"), (group_dro, group_dro),
             (group_dro / "glue_data" / "MNLI", group_dro), (pickle_path, group_dro)]
    for given, prepare_root in cases:
        out = tmp_path / "run"
        res = invoke("run", "--algo", "erm", "--data", "multinli", "--root", str(given), *TINY, "--out", str(out))
        line = one_error_line(res, "is group_DRO's cached BERT features, a pickle: it is never loaded")
        assert "cached_" in line and line.endswith(f"get them with: {FIX} --root {prepare_root}"), (given, line)
        assert not out.exists()


def test_missing_and_half_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=f"no MultiNLI text found .*; fix: {FIX} --root"):
        make(tmp_path).source_rows()
    write_fixture(tmp_path / "multinli")
    (tmp_path / "multinli" / mnli.METADATA).unlink()
    with pytest.raises(DataNotFoundError, match=r"train.jsonl has no data/metadata_random.csv beside it"):
        make(tmp_path).source_rows()


def test_check_dataset(root: Path) -> None:
    testing.check_dataset("multinli", root=str(root))


@pytest.mark.slow
def test_one_epoch_mt_l1_mlm_run(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = invoke("run", "--algo", "mt_l1", "--aux", "mlm", "--data", "multinli", "--root", str(root), *TINY,
                 "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["tasks"] == {"y": 3} and config["data"]["sizes"] == {"train": 12, "val": 12, "test": 12}
    assert config["data"]["group_names"][1] == "contradiction_negation" and config["objectives"] == ["mlm", "l1"]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "train/loss_mlm" in record and "val/group_acc@neutral_negation" in record


# -- prepare, with torchvision's downloader fed local files ------------------------------------------


def release(tmp_path: Path) -> tuple[Path, Path]:
    """The fixture as the two downloads deliver it: multinli_1.0.zip (with the __MACOSX folder the official
    zip carries) and metadata_random.csv."""
    src = tmp_path / "release"
    write_fixture(src)
    archive = tmp_path / "multinli_1.0.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in mnli.TEXT_FILES:
            z.write(src / mnli.TEXT_DIR / name, f"{mnli.TEXT_DIR}/{name}")
        z.writestr(f"__MACOSX/{mnli.TEXT_DIR}/._{mnli.TEXT_FILES[0]}", b"\0")
    return archive, src / mnli.METADATA


def fake_network(monkeypatch: pytest.MonkeyPatch, files: dict[str, Path | Exception]) -> list[str]:
    """torchvision's download_url serving `files` (url -> local file, or the error to raise); its real
    download_and_extract_archive extracts what it 'downloads'."""
    from torchvision.datasets import utils

    calls: list[str] = []

    def download_url(url: str, root: str, filename: str | None = None, md5: str | None = None,
                     max_redirect_hops: int = 3) -> None:
        calls.append(url)
        Path(root).mkdir(parents=True, exist_ok=True)
        served = files[url]
        if isinstance(served, Exception):
            (Path(root) / (filename or "x")).write_bytes(b"")  # urlretrieve had opened the file
            raise served
        shutil.copy(served, Path(root) / (filename or Path(url).name))

    monkeypatch.setattr(utils, "download_url", download_url)
    return calls


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else ["<absent>"]


def test_prepare_downloads_verifies_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, meta = release(tmp_path)
    calls = fake_network(monkeypatch, {mnli.MNLI_URL: archive, mnli.METADATA_URL: meta})
    monkeypatch.setattr(mnli, "METADATA_SHA1", mnli.git_blob_sha1(meta))
    # The fixture's counts are not the official release's: refused, and everything it made is removed.
    res = invoke("prepare", "multinli", "--root", str(tmp_path / "a"))
    one_error_line(res, f"{tmp_path / 'a' / 'multinli'} has 2 train examples in group contradiction_no_negation, "
                        f"the official release has 57498; rerun: {FIX} --root {tmp_path / 'a'}")
    assert not (tmp_path / "a").exists() and calls == [mnli.METADATA_URL, mnli.MNLI_URL]
    monkeypatch.setattr(mnli, "OFFICIAL_COUNTS", {s: (2,) * 6 for s in ("train", "val", "test")})
    res = invoke("prepare", "multinli", "--root", str(tmp_path / "b"))
    data_dir = tmp_path / "b" / "multinli"
    assert res.exit_code == 0 and res.stdout.strip() == str(data_dir), res.output
    assert tree(data_dir) == ["data", "data/metadata_random.csv", mnli.TEXT_DIR,
                              *(f"{mnli.TEXT_DIR}/{n}" for n in sorted(mnli.TEXT_FILES))]  # zip and __MACOSX gone
    assert len(make(tmp_path / "b").source_rows().texts) == 36
    calls.clear()
    assert mnli.MultiNLI.prepare(tmp_path / "b") == data_dir and calls == []  # present: nothing downloaded


def test_prepare_offline_removes_what_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, meta = release(tmp_path)
    fake_network(monkeypatch, {mnli.METADATA_URL: meta, mnli.MNLI_URL: urllib.error.URLError("[Errno -3] no DNS")})
    monkeypatch.setattr(mnli, "METADATA_SHA1", mnli.git_blob_sha1(meta))
    root = tmp_path / "root"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    res = invoke("prepare", "multinli", "--root", str(root))
    line = one_error_line(res, f"multinli: download from {mnli.MNLI_URL} failed (URLError: <urlopen error [Errno -3] "
                               f"no DNS>); download by hand: unzip {mnli.MNLI_URL} into {root / 'multinli'}")
    assert line.endswith(f"rerun: {FIX} --root {root}") and res.stdout == ""
    assert tree(tmp_path) == before


def test_prepare_refuses_another_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, meta = release(tmp_path)
    calls = fake_network(monkeypatch, {mnli.MNLI_URL: archive, mnli.METADATA_URL: meta})
    sha1 = mnli.git_blob_sha1(meta)
    res = invoke("prepare", "multinli", "--root", str(tmp_path / "a"))  # the fixture is not group_DRO's file
    one_error_line(res, f"metadata_random.csv has git blob SHA-1 {sha1}, not group_DRO's {mnli.METADATA_SHA1}")
    assert not (tmp_path / "a").exists() and calls == [mnli.METADATA_URL]  # refused before the large zip


def test_prepare_keeps_group_dro_files_and_adds_the_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, meta = release(tmp_path)
    calls = fake_network(monkeypatch, {mnli.MNLI_URL: archive, mnli.METADATA_URL: meta})
    monkeypatch.setattr(mnli, "METADATA_SHA1", mnli.git_blob_sha1(meta))
    monkeypatch.setattr(mnli, "OFFICIAL_COUNTS", {s: (2,) * 6 for s in ("train", "val", "test")})
    group_dro = tmp_path / "data" / "multinli"
    cached_pickles(group_dro / "glue_data" / "MNLI")
    (group_dro / "data").mkdir()
    shutil.copy(meta, group_dro / mnli.METADATA)
    assert mnli.MultiNLI.prepare(tmp_path / "data") == group_dro and calls == [mnli.MNLI_URL]
    assert mnli.MultiNLI.prepare(group_dro) == group_dro  # group_DRO's root_dir as the root: the same copy
    (group_dro / mnli.METADATA).write_text((group_dro / mnli.METADATA).read_text() + "\n")
    shutil.rmtree(group_dro / mnli.TEXT_DIR)
    with pytest.raises(DataNotFoundError, match="predate this run, so they were kept"):
        mnli.MultiNLI.prepare(tmp_path / "data")
    assert (group_dro / mnli.METADATA).exists() and not (group_dro / mnli.TEXT_DIR).exists()


def test_git_blob_sha1_is_git_hash_object(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(b",gold_label\n0,1\n")
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    assert mnli.git_blob_sha1(path) == subprocess.check_output([git, "hash-object", str(path)], text=True).strip()
