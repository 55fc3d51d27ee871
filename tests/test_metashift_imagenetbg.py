"""The metashift and imagenetbg readers on tiny fixtures in SubpopBench's on-disk format: labels, groups, names,
bad inputs (one error line each), the metadata step and `prepare` (its downloader faked: tests never download)."""
from __future__ import annotations

import os
import re
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.datasets.utils
from PIL import Image

from robustbench_mtl.config import RunSpec
from robustbench_mtl.data import _subpop
from robustbench_mtl.data import imagenetbg as ib
from robustbench_mtl.data import metashift as ms
from robustbench_mtl.errors import DataNotFoundError
from robustbench_mtl.registry import DATASETS
from robustbench_mtl.runner import run
from robustbench_mtl.testing import check_dataset
from test_waterbirds import invoke, one_error_line

MS_FIX, IB_FIX = "robustbench-mtl prepare metashift", "robustbench-mtl prepare imagenetbg"
SPLIT_OF_K = (0, 1, 2, 0)  # metashift fixture: the k-th image of each folder goes to this split


# -- fixtures in SubpopBench's format -------------------------------------------------------------------------
def write_metashift(data_dir: Path, per_folder: int = 4, prefix: Path | None = None) -> pd.DataFrame:
    """The archive's four folders of .jpg (Visual Genome ids as names) and metadata_metashift.csv as SubpopBench's
    script writes it: columns filename, y, a, split; names `<prefix>/MetaShift-Cat-Dog-indoor-outdoor/<folder>/<id>.jpg`
    with prefix = the dataset directory as the script saw it. Red = cat, green = indoor, blue = 10 * row."""
    prefix = data_dir if prefix is None else prefix
    rows = []
    for folder, (y, a) in ms.FOLDERS.items():
        for k in range(per_folder):
            name = f"{2300000 + len(rows)}.jpg"
            path = data_dir / ms.IMAGES / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (48, 32), (200 if y else 30, 200 if a else 30, 10 * len(rows))).save(path, quality=95)
            rows.append({"filename": str(prefix / ms.IMAGES / folder / name), "y": y, "a": a,
                         "split": SPLIT_OF_K[k % 4]})
    meta = pd.DataFrame(rows, columns=["filename", "y", "a", "split"])
    meta.to_csv(data_dir / ms.METADATA, index=False)
    return meta


def write_imagenetbg(data_dir: Path, per_class: int = 1, prefix: Path | None = None) -> pd.DataFrame:
    """SubpopBench's backgrounds_challenge/: `in9l/{train,val}` and `bg_challenge/<variant>/val`, class folders
    `0<y>_<class>` of .JPEG, and metadata.csv (split, filename, y, a = 0). Red = 25 * y, green = 40 * split index."""
    prefix = data_dir if prefix is None else prefix
    rows = []
    for s, (split, folder) in enumerate(ib.SPLIT_DIRS.items()):
        for y, cls in enumerate(ib.CLASSES):
            for k in range(per_class):
                rel = Path(folder) / f"0{y}_{cls}" / f"n0{y}_{s}{k}.JPEG"
                (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (40, 56), (25 * y, 40 * s, 90)).save(data_dir / rel, format="JPEG", quality=95)
                rows.append({"split": split, "filename": str(prefix / rel), "y": y, "a": 0})
    meta = pd.DataFrame(rows, columns=["split", "filename", "y", "a"])
    meta.to_csv(data_dir / ib.METADATA, index=False)
    return meta


def make(key: str, root: Path | None = None, size: int = 16, **kw):
    cls = DATASETS.get(key)
    return cls(cls.HParams(image_size=size, **({} if root is None else {"root": str(root)}), **kw), key)


@pytest.fixture
def ms_root(tmp_path: Path) -> Path:
    write_metashift(mkdir(tmp_path / "data" / ms.DIR))
    return tmp_path / "data"


@pytest.fixture
def ib_root(tmp_path: Path) -> Path:
    write_imagenetbg(mkdir(tmp_path / "data" / ib.DIR))
    return tmp_path / "data"


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def mean_colour(s) -> torch.Tensor:
    return s.x.float().mean((2, 3))  # [N, 3]


# -- metashift --------------------------------------------------------------------------------------------------
def test_metashift_class_attributes() -> None:
    cls = DATASETS.get("metashift")
    assert cls.tasks == {"y": 2} and cls.group_names == ("dog_outdoor", "dog_indoor", "cat_outdoor", "cat_indoor")
    assert cls.modality == "image" and "docs/methods.md#metashift" in cls.__doc__
    assert ms.FOLDERS == {"train/cat/cat(indoor)": (1, 1), "train/dog/dog(outdoor)": (0, 0),
                          "test/cat/cat(outdoor)": (1, 0), "test/dog/dog(indoor)": (0, 1)}  # SubpopBench's
    assert cls.HParams().augment == "none" and cls.presets["subpopbench"]["backbone"] == "resnet50"


def test_metashift_loads_labels_groups_and_rows(ms_root: Path) -> None:
    header = (ms_root / ms.DIR / ms.METADATA).read_text().splitlines()[0]
    assert header == "filename,y,a,split"
    ds = make("metashift", ms_root)
    splits = ds.load()
    assert ds.data_dir == ms_root / ms.DIR and ds.info().input_shape == (3, 16, 16)
    meta = pd.read_csv(ms_root / ms.DIR / ms.METADATA)
    for code, name in enumerate(("train", "val", "test")):
        s, rows = splits[name], meta[meta.split == code]
        assert s.x.dtype == torch.uint8 and s.x.shape[1] == 3 and len(s) == len(rows)
        c = mean_colour(s)
        assert torch.equal(s.y["y"], torch.tensor(rows.y.to_numpy())) and torch.equal(s.y["y"], (c[:, 0] > 128).long())
        assert torch.equal(s.g, 2 * s.y["y"] + (c[:, 1] > 128).long())  # g = 2*y + indoor
        assert torch.allclose(c[:, 2], torch.tensor(rows.index.to_numpy() * 10.0).float(), atol=4)  # metadata row order
        assert s.inputs(slice(None)).shape == (len(s), 3, 16, 16) and bool((s.e == 0).all())
    assert ds.group_counts() == {"train": (2, 2, 2, 2), "val": (1, 1, 1, 1), "test": (1, 1, 1, 1)}
    assert not ds.is_full_release()


@pytest.mark.parametrize("prefix", ["/elsewhere/old/data/metashift", "data/metashift", "", "metashift/metashift"])
def test_metashift_names_written_elsewhere_are_read_here(tmp_path: Path, prefix: str) -> None:
    # SubpopBench writes <data_path>/metashift/...: absolute, relative to where it ran, or (here) bare.
    data_dir = mkdir(tmp_path / "metashift")
    write_metashift(data_dir, prefix=Path(prefix))
    ds = make("metashift", tmp_path)
    assert len(ds.load()["train"]) == 8
    assert ds.source().paths[0] == str((data_dir / ms.IMAGES / "train/cat/cat(indoor)/2300000.jpg").resolve())


def test_relocated() -> None:
    assert _subpop.relocated("/a/metashift/M/x.jpg", "metashift") == "M/x.jpg"
    assert _subpop.relocated("/metashift/b/metashift/M/x.jpg", "metashift") == "M/x.jpg"  # the last one
    assert _subpop.relocated("M/x.jpg", "metashift") == "M/x.jpg"
    assert _subpop.relocated("/a/metashift", "metashift") == "/a/metashift"  # nothing follows: kept (and refused)
    assert _subpop.relocated("/a/metashift/../../x.jpg", "metashift") == "../../x.jpg"  # still refused later


def rewrite(root: Path, edit, key: str = "metashift") -> None:
    path = root / (ms.DIR if key == "metashift" else ib.DIR) / (ms.METADATA if key == "metashift" else ib.METADATA)
    edit(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m.drop(columns=["a"]), "lacks the column(s) a"),
    (lambda m: m.drop(columns=["split", "filename"]), "lacks the column(s) filename, split"),
    (lambda m: m.assign(y=m.y.replace("1", "cat")), "data row 1 has y 'cat', not one of 0, 1 (8 such row(s))"),
    (lambda m: m.assign(a=m.a.replace("0", "")), "has a an empty cell, not one of 0, 1"),
    (lambda m: m.assign(split=m.split.replace("2", "3")), "has split '3', not one of 0, 1, 2"),
    (lambda m: m[m.split != "1"], "has no rows of split 1"),
    (lambda m: m.assign(filename=["" if i == 2 else n for i, n in enumerate(m.filename)]),
     "data row 3 has an empty filename"),
])
def test_metashift_bad_metadata(ms_root: Path, edit, needle: str) -> None:
    rewrite(ms_root, edit)
    res = invoke("run", "--algo", "erm", "--data", "metashift", "--set", f"data.root={ms_root}",
                 "--out", str(ms_root.parent / "run"))
    one_error_line(res, needle)
    assert f"{MS_FIX} --root {ms_root}" in res.output and not (ms_root.parent / "run").exists()


def test_metashift_missing_metadata_file_and_images(ms_root: Path, tmp_path: Path) -> None:
    res = invoke("run", "--algo", "erm", "--data", "metashift", "--set", f"data.root={tmp_path / 'empty'}",
                 "--out", str(tmp_path / "run"))
    one_error_line(res, f"no metadata_metashift.csv found (looked for {tmp_path / 'empty' / ms.DIR / ms.METADATA})")
    assert f"{MS_FIX} --root {tmp_path / 'empty'}" in res.output
    meta = pd.read_csv(ms_root / ms.DIR / ms.METADATA)
    for name in meta.filename[2:4]:
        os.unlink(name)
    with pytest.raises(DataNotFoundError, match=r"2 of 16 images listed in metadata_metashift.csv are missing .*"
                                                r"data row 3.*" + MS_FIX):
        make("metashift", ms_root).load()


def test_metashift_undecodable_image(ms_root: Path) -> None:
    name = pd.read_csv(ms_root / ms.DIR / ms.METADATA).filename[5]
    Path(name).write_bytes(b"<html>Dropbox: file not found</html>")
    with pytest.raises(DataNotFoundError, match=re.escape(name) + f" cannot be decoded.*data row 6; fix: delete "
                                                                  f".*{MS_FIX}"):
        make("metashift", ms_root).load()


@pytest.mark.parametrize("name, link", [
    ("../../secret/x.jpg", None),
    ("MetaShift-Cat-Dog-indoor-outdoor/../../secret/x.jpg", None),  # leaves only after normalisation
    ("/old/data/metashift/../../../secret/x.jpg", None),  # leaves after the part after metashift/
    ("{outside}", None),  # absolute, no metashift/ in it
    ("MetaShift-Cat-Dog-indoor-outdoor/evil.jpg", "MetaShift-Cat-Dog-indoor-outdoor/evil.jpg"),  # a symlink out
])
def test_metashift_names_outside_the_data_dir(ms_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              name: str, link: str | None) -> None:
    outside = tmp_path / "secret" / "x.jpg"  # a readable image: it must not be read (or trained on)
    outside.parent.mkdir()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(outside)
    data_dir, name = ms_root / ms.DIR, name.format(outside=outside)
    if link:
        (data_dir / link).symlink_to(outside)
    rewrite(ms_root, lambda m: m.assign(filename=[name if i == 2 else n for i, n in enumerate(m.filename)]))
    monkeypatch.setattr(_subpop, "decode_center", lambda *a: pytest.fail("an image was read"))
    res = invoke("run", "--algo", "erm", "--data", "metashift", "--set", f"data.root={ms_root}",
                 "--set", "train.epochs=1", "--out", str(tmp_path / "run"))
    one_error_line(res, f"{data_dir / ms.METADATA} data row 3 names {name!r}, which is outside {data_dir}; fix the "
                        f"file or delete it and re-run prepare: {MS_FIX} --root {ms_root}")
    assert not (tmp_path / "run").exists()


def test_decode_center_keeps_the_centre_square(tmp_path: Path) -> None:
    im = Image.new("RGB", (90, 30), (255, 0, 0))  # red | green | blue thirds: the centre square is green
    im.paste((0, 255, 0), (30, 0, 60, 30))
    im.paste((0, 0, 255), (60, 0, 90, 30))
    im.save(tmp_path / "wide.png")
    arr = _subpop.decode_center(str(tmp_path / "wide.png"), 12)
    assert arr.shape == (3, 12, 12) and arr[1].min() > 200 and arr[0].max() < 60 and arr[2].max() < 60
    view = _subpop.CenterView(16)  # SubpopBench's Resize(256) + CenterCrop(224), at 16: resize to 18, crop 16
    x = torch.arange(20 * 20, dtype=torch.float32).view(1, 1, 20, 20).expand(1, 3, 20, 20)
    assert view.resized == 18 and view(x).shape == (1, 3, 16, 16)
    assert _subpop.CenterView(224).resized == 256


def test_metashift_metadata_step_follows_subpopbench(tmp_path: Path) -> None:
    data_dir = mkdir(tmp_path / "metashift")
    written = write_metashift(data_dir, per_folder=7)
    frame = ms.metadata_frame(data_dir)
    assert list(frame.columns) == ["filename", "y", "a", "split"] and len(frame) == 28
    assert sorted(frame.filename) == sorted(written.filename)  # every .jpg, named <data_dir>/MetaShift-.../...
    assert frame.filename.tolist() == sorted(frame.filename, key=lambda n: list(ms.FOLDERS).index(
        n.split(ms.IMAGES + "/")[1].rsplit("/", 1)[0]))  # folder by folder in SubpopBench's order
    for f in frame.itertuples():
        assert (f.y, f.a) == ms.FOLDERS[f.filename.split(ms.IMAGES + "/")[1].rsplit("/", 1)[0]]
    rng = np.random.RandomState(42)  # SubpopBench's draw: int(25%) test, then int(10%) of the rest val
    test = rng.choice(np.arange(28), size=7, replace=False)
    val = rng.choice(np.setdiff1d(np.arange(28), test), size=2, replace=False)
    assert set(np.flatnonzero(frame.split == 2)) == set(test) and set(np.flatnonzero(frame.split == 1)) == set(val)
    assert frame.equals(ms.metadata_frame(data_dir))  # sorted listing: the same on every machine


def fake_download(monkeypatch: pytest.MonkeyPatch, fill) -> list[tuple[str, str, str]]:
    """torchvision's download_and_extract_archive, with `fill(extract_dir, filename)` standing in for the
    download and extraction (tests never download)."""
    calls: list[tuple[str, str, str]] = []

    def download_and_extract_archive(url: str, download_root: str, extract_root: str | None = None,
                                     filename: str | None = None, md5: str | None = None,
                                     remove_finished: bool = False) -> None:
        calls.append((url, download_root, filename))
        print("Downloading", url)  # torchvision prints progress on stdout
        os.makedirs(download_root, exist_ok=True)
        fill(Path(download_root), filename)

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", download_and_extract_archive)
    return calls


def offline(d: Path, filename: str) -> None:
    (d / filename).write_bytes(b"")  # urlretrieve has opened the archive when the name lookup fails
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else ["<absent>"]


def test_metashift_prepare_present_data_downloads_nothing(ms_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_download(monkeypatch, lambda d, f: pytest.fail("downloaded although the files are there"))
    assert ms.MetaShift.prepare(ms_root) == ms_root / ms.DIR


@pytest.mark.parametrize("existing", [None, "other files"])
def test_metashift_prepare_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: str | None) -> None:
    root = tmp_path / "new" / "root"
    if existing:
        mkdir(root / "waterbirds_v1.0")
        (root / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    calls = fake_download(monkeypatch, offline)
    res = invoke("prepare", "metashift", "--root", str(root))
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert res.exit_code == 2 and len(errors) == 1 and res.stdout == "", res.output
    assert errors[0].startswith(f"error: metashift: download from {ms.URL} failed (URLError: <urlopen error [Errno -3] "
                                "Temporary failure in name resolution>); check the network or download by hand: "
                                f"extract {ms.URL} into {root / ms.DIR}; then rerun: {MS_FIX} --root {root}")
    assert calls == [(ms.URL, str(root / ms.DIR), "metashift.tar.gz")]  # SubpopBench's archive, into metashift/
    assert tree(tmp_path) == before  # what it made is gone, what was there is untouched


def test_metashift_prepare_downloads_writes_metadata_and_verifies(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def archive(d: Path, filename: str) -> None:  # the archive's images, without a metadata file
        write_metashift(d, per_folder=5)
        (d / ms.METADATA).unlink()

    fake_download(monkeypatch, archive)
    # 20 images, not the release's 3,499: refused, and everything it made removed.
    with pytest.raises(DataNotFoundError, match=r"has 13 images in split 0, SubpopBench's release has 2276; rerun: "
                                                + MS_FIX):
        ms.MetaShift.prepare(tmp_path / "a")
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(ms.MetaShift, "release_sizes", {0: 13, 1: 2, 2: 5})  # int(20 * .25) = 5, int(20 * .1) = 2
    res = invoke("prepare", "metashift", "--root", str(tmp_path / "b"))
    assert res.exit_code == 0 and res.stdout.strip() == str(tmp_path / "b" / ms.DIR), res.output
    assert "Downloading" in res.stderr  # the downloader's progress goes to stderr; stdout holds only the directory
    meta = pd.read_csv(tmp_path / "b" / ms.DIR / ms.METADATA)
    assert meta.filename[0] == str(tmp_path / "b" / ms.DIR / ms.IMAGES / "train/cat/cat(indoor)/2300000.jpg")
    assert len(make("metashift", tmp_path / "b").load()["test"]) == 5


def test_metashift_prepare_keeps_an_existing_metadata_file(ms_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_download(monkeypatch, lambda d, f: pytest.fail("downloaded although the images are there"))
    rewrite(ms_root, lambda m: m.drop(columns=["a"]))  # a broken file: reported, never replaced
    before = (ms_root / ms.DIR / ms.METADATA).read_text()
    with pytest.raises(DataNotFoundError, match=r"lacks the column\(s\) a\); rerun: .*predate this run"):
        ms.MetaShift.prepare(ms_root)
    assert (ms_root / ms.DIR / ms.METADATA).read_text() == before and len(tree(ms_root)) > 16


def test_metashift_check_dataset(ms_root: Path) -> None:
    check_dataset("metashift", root=str(ms_root), image_size=16)
    check_dataset("metashift", root=str(ms_root), image_size=16, augment="paper", store_size=24)


# -- imagenetbg -------------------------------------------------------------------------------------------------
def test_imagenetbg_class_attributes() -> None:
    cls = DATASETS.get("imagenetbg")
    assert cls.tasks == {"y": 9} and len(cls.group_names) == 9 and cls.group_names[2] == "wheeled_vehicle"
    assert cls.split_values == ("train", "val", "test", "mixed_rand", "only_fg", "no_fg")
    assert "docs/methods.md#imagenetbg" in cls.__doc__ and cls.HParams().test_split == "test"
    assert [folder for _, _, folder in ib.ARCHIVES] == ["bg_challenge", "original", "in9l"]


@pytest.mark.parametrize("test_split", ib.TEST_SPLITS)
def test_imagenetbg_loads_classes_and_the_chosen_test_split(ib_root: Path, test_split: str) -> None:
    header = (ib_root / ib.DIR / ib.METADATA).read_text().splitlines()[0]
    assert header == "split,filename,y,a"
    ds = make("imagenetbg", ib_root, test_split=test_split)
    splits = ds.load()
    for name, value in (("train", "train"), ("val", "val"), ("test", test_split)):
        s, c = splits[name], mean_colour(splits[name])
        assert len(s) == 9 and torch.equal(s.y["y"], torch.arange(9)) and torch.equal(s.g, s.y["y"])
        assert torch.allclose(c[:, 0], torch.arange(9) * 25.0, atol=5)
        green = 40.0 * list(ib.SPLIT_DIRS).index(value)  # the fixture's green level of that split's folder
        assert torch.allclose(c[:, 1], torch.full((9,), green), atol=5), name
    assert ds.info().train_group_counts == (1,) * 9


def test_imagenetbg_test_split_changes_store_and_fingerprint(ib_root: Path) -> None:
    a, b = make("imagenetbg", ib_root), make("imagenetbg", ib_root, test_split="mixed_rand")
    assert a.store_key("train") == b.store_key("train") and a.store_key("test") != b.store_key("test")
    assert a.fingerprint() != b.fingerprint()


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m.drop(columns=["y"]), "lacks the column(s) y"),
    (lambda m: m.assign(y=m.y.replace("8", "9")), "has y '9', not one of 0, 1, 2, 3, 4, 5, 6, 7, 8"),
    (lambda m: m.assign(a=m.a.replace("0", "1")), "has a '1', not one of 0"),
    (lambda m: m.assign(split=m.split.replace("only_fg", "mixed_same")), "has split 'mixed_same'"),
    (lambda m: m[m.split != "no_fg"], "has no rows of split 'no_fg'"),
    (lambda m: m.assign(filename=m.filename.str.replace("in9l/train/00_dog", "in9l/train/../../../x", regex=False)),
     "names '"),
])
def test_imagenetbg_bad_metadata(ib_root: Path, edit, needle: str) -> None:
    rewrite(ib_root, edit, "imagenetbg")
    res = invoke("run", "--algo", "erm", "--data", "imagenetbg", "--set", f"data.root={ib_root}",
                 "--out", str(ib_root.parent / "run"))
    one_error_line(res, needle)
    assert f"{IB_FIX} --root {ib_root}" in res.output


def test_imagenetbg_missing_metadata_file(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=f"no metadata.csv found .*{ib.DIR}.*{IB_FIX} --root"):
        make("imagenetbg", tmp_path).load()


def test_imagenetbg_metadata_step_follows_subpopbench(tmp_path: Path) -> None:
    data_dir = mkdir(tmp_path / ib.DIR)
    written = write_imagenetbg(data_dir, per_class=2)
    (data_dir / "in9l/train/00_dog/notes.txt").write_text("")  # not a .JPEG: not listed
    mkdir(data_dir / "original/train/00_dog")  # original.tar.gz: downloaded, never listed
    (data_dir / "original/train/00_dog/n0.JPEG").write_bytes(b"")
    frame = ib.metadata_frame(data_dir)
    assert list(frame.columns) == ["split", "filename", "y", "a"] and len(frame) == 6 * 9 * 2
    assert frame.filename.tolist() == written.filename.tolist()  # split by split, class by class, sorted
    assert frame.split.tolist() == written.split.tolist() and bool((frame.a == 0).all())


def test_imagenetbg_prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixture = mkdir(tmp_path / "fixture")
    write_imagenetbg(fixture)

    def archive(d: Path, filename: str) -> None:  # each archive brings its own top folder
        folder = {f: top for _, f, top in ib.ARCHIVES}[filename]
        shutil.copytree(fixture / folder, d / folder)

    root = tmp_path / "root"
    mkdir(root / ib.DIR / "original")  # already there: not downloaded again
    calls = fake_download(monkeypatch, archive)
    with pytest.raises(DataNotFoundError, match=r"has 9 images in split 'test', SubpopBench's release has 4050"):
        ib.ImageNetBG.prepare(root)
    assert [c[2] for c in calls] == ["backgrounds_challenge_data.tar.gz", "in9l.tar.gz"]
    assert [c[0] for c in calls] == [ib.ARCHIVES[0][0], ib.ARCHIVES[2][0]]  # SubpopBench's URLs
    assert tree(root) == [ib.DIR, f"{ib.DIR}/original"]  # only what predates the call is left
    monkeypatch.setattr(ib.ImageNetBG, "release_sizes", {s: 9 for s in ib.TEST_SPLITS})
    assert ib.ImageNetBG.prepare(root) == root / ib.DIR
    assert len(pd.read_csv(root / ib.DIR / ib.METADATA)) == 54
    fake_download(monkeypatch, lambda d, f: pytest.fail("downloaded again"))
    assert ib.ImageNetBG.prepare(root) == root / ib.DIR  # complete: nothing to do


def test_imagenetbg_check_dataset(ib_root: Path) -> None:
    check_dataset("imagenetbg", root=str(ib_root), image_size=16)
    check_dataset("imagenetbg", root=str(ib_root), image_size=16, test_split="only_fg")


@pytest.mark.slow
def test_one_epoch_runs(ms_root: Path, ib_root: Path, tmp_path: Path) -> None:
    for key, root in (("metashift", ms_root), ("imagenetbg", ib_root)):
        spec = RunSpec(key, "erm", overrides=(f"data.root={root}", "data.image_size=32", "backbone.patch_size=8",
                                              "train.epochs=1", "train.batch_size=4"), device="cpu")
        result = run(spec, out_dir=tmp_path / key)
        assert (tmp_path / key / "final.json").exists() and result.final["epochs_run"] == 1
