"""The waterbirds reader on tiny fixtures in both official layouts: labels, groups, cache, errors, prepare, a run."""
from __future__ import annotations

import os
import re
import sys
import types
import urllib.error
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from robustbench_mtl.cli import main
from robustbench_mtl.config import RunSpec
from robustbench_mtl.data import _files, _images, _store
from robustbench_mtl.data import waterbirds as wb
from robustbench_mtl.errors import ConfigError, DataNotFoundError
from robustbench_mtl.registry import DATASETS
from robustbench_mtl.runner import run

GROUP_DRO = "waterbird_complete95_forest2water2"
# (species folder, file stem) per label: real CUB names, waterbird = 1.
SPECIES = {0: ("013.Bobolink", "Bobolink_0001_9261"),
           1: ("001.Black_footed_Albatross", "Black_Footed_Albatross_0046_18")}
PLACES = {0: "/b/bamboo_forest/00001234.jpg", 1: "/o/ocean/00002195.jpg"}
FIX = "robustbench-mtl prepare waterbirds"


def write_fixture(data_dir: Path, per_group: int = 2) -> pd.DataFrame:
    """`per_group` images per group per split; green channel 200 on water, 50 on land, red = 10 * row."""
    rows = []
    for split in range(3):
        for y in (0, 1):
            for place in (0, 1):
                for k in range(per_group):
                    folder, stem = SPECIES[y]
                    rows.append({"img_filename": f"{folder}/{stem}_{split}{place}{k}.jpg", "y": y, "split": split,
                                 "place": place, "place_filename": PLACES[place]})
    meta = pd.DataFrame(rows)
    for i, r in meta.iterrows():
        (data_dir / r.img_filename).parent.mkdir(parents=True, exist_ok=True)
        colour = (10 * int(i), 200 if r.place else 50, 100)
        Image.new("RGB", (40, 30), colour).save(data_dir / r.img_filename, quality=95)
    # As generate_waterbirds.py writes it: img_id (1-based, CUB's) is the index, saved as the first column.
    meta.index = pd.RangeIndex(1, len(meta) + 1, name="img_id")
    meta.to_csv(data_dir / "metadata.csv")
    return meta


def make(root: Path | None = None, size: int = 16) -> wb.Waterbirds:
    cls = DATASETS.get("waterbirds")
    kw = {} if root is None else {"root": str(root)}
    return cls(cls.HParams(image_size=size, store_size=size, **kw), "waterbirds")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "data" / wb.WILDS_DIR).mkdir(parents=True)
    write_fixture(tmp_path / "data" / wb.WILDS_DIR)
    return tmp_path / "data"


def test_metadata_has_official_columns(root: Path) -> None:
    header = (root / wb.WILDS_DIR / "metadata.csv").read_text().splitlines()[0]
    assert header == "img_id,img_filename,y,split,place,place_filename"


@pytest.mark.parametrize("layout", wb.LAYOUTS)
def test_layouts_load(tmp_path: Path, layout: str) -> None:
    (tmp_path / layout).mkdir(parents=True)
    write_fixture(tmp_path / layout)
    ds = make(tmp_path)
    splits = ds.load()
    assert ds.data_dir == tmp_path / layout
    for s in splits.values():
        assert s.x.shape == (8, 3, 16, 16) and s.x.dtype == torch.uint8
        place = (s.x[:, 1].float().mean((1, 2)) > 128).long()  # the green channel encodes the background
        assert torch.equal(s.g, 2 * s.y["y"] + place)
        assert s.y["y"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and s.e.tolist() == [0] * 8
        assert 0.0 <= float(s.inputs(slice(None)).min()) and float(s.inputs(slice(None)).max()) <= 1.0
    assert ds.group_counts() == {k: (2, 2, 2, 2) for k in ("train", "val", "test")}
    assert not ds.is_full_release()  # a subset loads; its counts are recorded, not rejected
    assert ds.info().input_shape == (3, 16, 16)


def test_rows_keep_metadata_order(root: Path) -> None:
    red = make(root).load()["val"].x[:, 0].float().mean((1, 2))
    assert torch.allclose(red, torch.arange(8, 16).float() * 10, atol=4)  # val is rows 8..15


def test_wilds_layout_searched_first(root: Path) -> None:
    (root / GROUP_DRO).mkdir()
    write_fixture(root / GROUP_DRO, per_group=1)
    assert make(root).data_dir == root / wb.WILDS_DIR


def test_env_var_replaces_default_root(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTBENCH_MTL_DATA", str(root))
    assert make().data_dir == root / wb.WILDS_DIR and len(make().load()["train"]) == 8
    with pytest.raises(DataNotFoundError):  # an explicit root wins over the variable
        make(tmp_path / "elsewhere").load()


def test_cache_reused_and_keyed_by_files(root: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    first = make(root).load()
    assert capsys.readouterr().out == ""  # loading shows nothing on stdout
    path = _store.store_path(make(root).store_key("test"))
    assert path.exists()
    monkeypatch.setattr(_images, "decode", lambda *a: pytest.fail("decoded again despite the cache"))
    assert torch.equal(make(root).load()["test"].x, first["test"].x)
    meta = pd.read_csv(root / wb.WILDS_DIR / "metadata.csv")
    meta.loc[0, "y"] = 1
    meta.to_csv(root / wb.WILDS_DIR / "metadata.csv", index=False)
    assert _store.store_path(make(root).store_key("test")) != path


def rewrite(root: Path, edit) -> None:
    path = root / wb.WILDS_DIR / "metadata.csv"
    edit(pd.read_csv(path)).to_csv(path, index=False)


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m.drop(columns=["place", "y"]), "lacks the column(s) y, place"),
    (lambda m: m.assign(split=m.split.replace(2, 3)), "split value(s) outside {0, 1, 2}"),
    (lambda m: m.assign(y=m.y.replace(1, 2)), "y value(s) outside {0, 1}"),
    (lambda m: m.assign(place=m.place.astype(str).replace("1", "water")), "place value(s) outside {0, 1}"),
    (lambda m: m[m.split != 1], "no val rows"),
])
def test_bad_metadata(root: Path, edit, needle: str) -> None:
    rewrite(root, edit)
    with pytest.raises(DataNotFoundError) as exc:
        make(root).load()
    msg = str(exc.value)
    assert needle in msg and f"{FIX} --root {root}" in msg and "\n" not in msg


def test_no_metadata_and_missing_images(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=f"no metadata.csv found.*{FIX} --root"):
        make(tmp_path / "empty").load()
    meta = pd.read_csv(root / wb.WILDS_DIR / "metadata.csv")
    for name in meta.img_filename[3:5]:
        (root / wb.WILDS_DIR / name).unlink()
    with pytest.raises(DataNotFoundError) as exc:
        make(root).load()
    assert "2 of 24 images" in str(exc.value) and f"(first: {meta.img_filename[3]})" in str(exc.value)
    assert FIX in str(exc.value)


def test_undecodable_image(root: Path) -> None:
    name = pd.read_csv(root / wb.WILDS_DIR / "metadata.csv").img_filename[0]
    (root / wb.WILDS_DIR / name).write_bytes(b"<html>quota exceeded</html>")  # a failed download's page
    with pytest.raises(DataNotFoundError, match=f"{name} cannot be decoded.*delete .*{FIX}"):
        make(root).load()


def test_truncated_image(root: Path) -> None:
    name = pd.read_csv(root / wb.WILDS_DIR / "metadata.csv").img_filename[5]
    path = root / wb.WILDS_DIR / name
    path.write_bytes(path.read_bytes()[:100])  # an interrupted download: a real JPEG's first 100 bytes
    res = invoke("run", "--algo", "erm", "--data", "waterbirds", "--set", f"data.root={root}",
                 "--out", str(root.parent / "run"))
    one_error_line(res, f"{name} cannot be decoded")
    assert f"delete {root / wb.WILDS_DIR} and run {FIX} --root {root}" in res.output


def test_empty_image_name(root: Path) -> None:  # an empty cell is NaN to pandas: a TypeError before the check
    rewrite(root, lambda m: m.assign(img_filename=m.img_filename.where(m.index != 1)))
    with pytest.raises(DataNotFoundError, match=f"empty img_filename in data row 2.*{FIX}"):
        make(root).load()


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def one_error_line(res, needle: str) -> None:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith("error: ") and needle in lines[0], res.output


def set_name(root: Path, row: int, name: str) -> None:
    rewrite(root, lambda m: m.assign(img_filename=[name if i == row - 1 else n for i, n in enumerate(m.img_filename)]))


@pytest.mark.parametrize("name, link", [
    ("../../secret/x.jpg", None),
    ("013.Bobolink/../../../secret/x.jpg", None),  # leaves only after normalisation
    ("{outside}", None),  # absolute
    ("evil.jpg", "evil.jpg"),  # a symlink to the outside file
    ("001.Black_footed_Albatross/more/x.jpg", "001.Black_footed_Albatross/more"),  # a symlink to its folder
])
def test_names_outside_the_data_dir(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                    link: str | None) -> None:
    outside = tmp_path / "secret" / "x.jpg"  # a readable image: today it is read (and trained on)
    outside.parent.mkdir()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(outside)
    data_dir, name = root / wb.WILDS_DIR, name.format(outside=outside)
    if link:
        (data_dir / link).symlink_to(outside if link.endswith(".jpg") else outside.parent)
    set_name(root, 3, name)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ROBUSTBENCH_MTL_CACHE", str(cache))
    monkeypatch.setattr(_images, "decode", lambda *a: pytest.fail("an image was read"))
    out = tmp_path / "run"
    res = invoke("run", "--algo", "erm", "--data", "waterbirds", "--set", f"data.root={root}",
                 "--set", "train.epochs=1", "--out", str(out))
    one_error_line(res, f"{data_dir / 'metadata.csv'} data row 3 names {name!r}, which is outside {data_dir}; "
                        f"fix the file or re-run prepare: {FIX} --root {root}")
    assert not out.exists() and not (cache.exists() and any(cache.iterdir()))


def test_inside_helper(tmp_path: Path) -> None:
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "b.jpg").write_bytes(b"")
    (tmp_path / "d" / "a" / "up").symlink_to("..")  # a link that stays inside is fine
    check = _files.Inside(tmp_path / "d")
    real = (tmp_path / "d").resolve()
    assert check("a/../b.jpg") == str(real / "b.jpg") and check("a/up/b.jpg") == str(real / "b.jpg")
    assert _files.inside(tmp_path / "d", "a/not-yet.jpg") == real / "a" / "not-yet.jpg"  # existence: caller's check
    for name in ("..", "a/../..", "../d2/x", "/etc/passwd", "a/up/../../x"):
        with pytest.raises(_files.OutsideRoot, match=re.escape(f"{name!r} is outside {tmp_path / 'd'}")):
            _files.inside(tmp_path / "d", name)


def test_removed_on_failure_keeps_what_was_there(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("mine")
    with pytest.raises(KeyError), _files.removed_on_failure(tmp_path / "old"):
        (tmp_path / "old" / "new").mkdir()
        (tmp_path / "old" / "new" / "f").write_text("")
        (tmp_path / "old" / "archive.tar.gz").write_text("")
        raise KeyError
    assert os.listdir(tmp_path / "old") == ["keep.txt"]
    with pytest.raises(KeyError), _files.removed_on_failure(tmp_path / "a" / "b" / "c"):
        (tmp_path / "a" / "b" / "c").mkdir(parents=True)
        (tmp_path / "a" / "other").write_text("")  # not ours to judge: a stops being empty, so it stays
        raise KeyError
    assert os.listdir(tmp_path / "a") == ["other"]
    with _files.removed_on_failure(tmp_path / "ok"):
        (tmp_path / "ok").mkdir()
    assert (tmp_path / "ok").is_dir()


def test_cli_run_without_data(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "X"
    res = invoke("run", "--algo", "erm", "--data", "waterbirds", "--set", f"data.root={tmp_path / 'empty'}",
                 "--out", str(out))
    one_error_line(res, FIX)
    assert not out.exists()


def test_cli_prepare_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one_error_line(invoke("prepare", "toybirds", "--root", str(tmp_path)), "dataset 'toybirds' is embedded")
    monkeypatch.setitem(sys.modules, "wilds", None)  # import wilds now raises ImportError
    one_error_line(invoke("prepare", "waterbirds", "--root", str(tmp_path)), "needs the wilds package: pip install")
    with pytest.raises(ConfigError, match=re.escape("pip install 'robustbench-mtl[data]'")):
        wb.Waterbirds.prepare(tmp_path)


def test_cli_prepare_install_hint_verbatim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wilds", None)
    one_error_line(invoke("prepare", "waterbirds", "--root", str(tmp_path)), "pip install 'robustbench-mtl[data]'")


def test_prepare_present_data_needs_no_wilds(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wilds", None)
    assert wb.Waterbirds.prepare(root) == root / wb.WILDS_DIR


WILDS_URL = "https://worksheets.codalab.org/rest/bundles/0x505056d5cdea4e4eaa0e242cbfe2daa4/contents/blob/"
MANUAL_URL = "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz"  # DATASETS.md §1


def fake_wilds(monkeypatch: pytest.MonkeyPatch, fill) -> list[str]:
    """wilds 2.0.0 in miniature: its declared URL, its downloader (which `fill` stands in for) and its
    get_dataset, which prints a download error and then fails on the missing metadata.csv."""
    calls: list[str] = []

    def download_and_extract_archive(url: str, download_root: str, extract_root: str | None = None,
                                     filename: str | None = None, md5: str | None = None,
                                     remove_finished: bool = False, size: int | None = None) -> None:
        calls.append(url)
        print("Downloading", url, "to", Path(download_root) / filename)  # WILDS prints progress on stdout
        os.makedirs(download_root, exist_ok=True)
        fill(Path(download_root))

    class WaterbirdsDataset:
        _versions_dict = {"1.0": {"download_url": WILDS_URL, "compressed_size": None}}

        def __init__(self, root_dir: str, download: bool) -> None:
            data_dir = Path(root_dir) / wb.WILDS_DIR
            os.makedirs(root_dir, exist_ok=True)
            try:  # wilds_dataset.py download_dataset: the error is printed, not raised
                download_and_extract_archive(url=WILDS_URL, download_root=str(data_dir), filename="archive.tar.gz")
            except Exception as e:
                print("Exception: ", e)
            pd.read_csv(data_dir / "metadata.csv")

    mods = {"wilds": types.ModuleType("wilds"), "wilds.datasets": types.ModuleType("wilds.datasets"),
            "wilds.datasets.download_utils": types.ModuleType("wilds.datasets.download_utils"),
            "wilds.datasets.waterbirds_dataset": types.ModuleType("wilds.datasets.waterbirds_dataset")}
    mods["wilds"].get_dataset = lambda dataset, download, root_dir: WaterbirdsDataset(root_dir, download)
    mods["wilds"].datasets = mods["wilds.datasets"]
    mods["wilds.datasets.download_utils"].download_and_extract_archive = download_and_extract_archive
    mods["wilds.datasets.waterbirds_dataset"].WaterbirdsDataset = WaterbirdsDataset
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return calls


def partial(d: Path) -> None:  # what a swallowed download error leaves behind
    (d / "RELEASE_v1.0.txt").write_text("")


def offline(d: Path) -> None:  # urlretrieve has opened the archive when the name lookup fails
    (d / "archive.tar.gz").write_bytes(b"")
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else ["<absent>"]


@pytest.mark.parametrize("existing", [None, "empty", "other files", "partial waterbirds_v1.0"])
def test_prepare_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: str | None) -> None:
    root = tmp_path / "new" / "root"
    if existing:
        root.mkdir(parents=True)
    if existing == "other files":
        (root / "celebA_v1.0").mkdir()
        (root / "notes.txt").write_text("mine")
    if existing == "partial waterbirds_v1.0":
        (root / wb.WILDS_DIR).mkdir()
        (root / wb.WILDS_DIR / "metadata.csv").write_text("img_filename\n")
    before = tree(tmp_path)
    calls = fake_wilds(monkeypatch, offline)
    res = invoke("prepare", "waterbirds", "--root", str(root))
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert res.exit_code != 0 and len(errors) == 1 and res.stdout == "", res.output
    assert errors[0].startswith(f"error: waterbirds: download from {WILDS_URL} failed (URLError: <urlopen error "
                                "[Errno -3] Temporary failure in name resolution>); check the network or download "
                                f"it by hand: extract {MANUAL_URL} into {root}; then "), res.output
    assert errors[0].endswith(f"rerun: {FIX} --root {root}") and "Traceback" not in res.output
    assert calls == [WILDS_URL]  # WILDS' own downloader with the URL WILDS declares
    assert tree(tmp_path) == before  # what it made is gone, what was there is untouched
    assert ("predates this run" in errors[0]) == (existing == "partial waterbirds_v1.0")


def test_prepare_verifies_the_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_wilds(monkeypatch, partial)
    with pytest.raises(DataNotFoundError, match=r"metadata.csv is missing\); rerun: " + FIX):
        wb.Waterbirds.prepare(tmp_path / "a")
    assert not (tmp_path / "a").exists()  # an incomplete download is not left to pass for a dataset

    def complete(d: Path) -> None:
        partial(d)
        write_fixture(d, per_group=1)

    fake_wilds(monkeypatch, complete)
    # A download whose counts per split and group are not the official release's is refused and removed.
    with pytest.raises(DataNotFoundError, match=r"has 1 train images in group landbird_land, the official release "
                                                r"has 3498; rerun: " + FIX):
        wb.Waterbirds.prepare(tmp_path / "c")
    assert not (tmp_path / "c").exists()
    monkeypatch.setattr(wb, "OFFICIAL_COUNTS", {s: (1, 1, 1, 1) for s in ("train", "val", "test")})
    res = invoke("prepare", "waterbirds", "--root", str(tmp_path / "b"))
    assert res.exit_code == 0 and res.stdout.strip() == str(tmp_path / "b" / wb.WILDS_DIR), res.output
    assert "Downloading" in res.stderr  # WILDS' progress goes to stderr, stdout holds only the directory


@pytest.mark.slow
def test_one_epoch_run(root: Path, tmp_path: Path) -> None:
    spec = RunSpec("waterbirds", "erm", overrides=(f"data.root={root}", "data.image_size=32", "backbone.patch_size=8",
                                                   "train.epochs=1", "train.batch_size=8"), device="cpu")
    result = run(spec, out_dir=tmp_path / "run")
    assert (tmp_path / "run" / "final.json").exists() and result.final["epochs_run"] == 1


def test_safe_extraction_refuses_members_outside_the_target(tmp_path: Path) -> None:
    import io
    import tarfile

    from robustbench_mtl.data._files import safe_extraction

    if not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no extraction filters")
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        payload = b"owned"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    target = tmp_path / "target"
    target.mkdir()
    before = tarfile.TarFile.extraction_filter
    with safe_extraction(), tarfile.open(archive) as tar, pytest.raises(tarfile.FilterError):
        tar.extractall(target)  # a bare extractall, as WILDS calls it
    assert not (tmp_path / "escaped.txt").exists()
    assert tarfile.TarFile.extraction_filter is before  # the process-wide default is restored
