"""The celeba reader on tiny fixtures in both official formats: labels, alignment, cache, errors, prepare, a run."""
from __future__ import annotations

import random
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import torchvision.datasets
from click.testing import CliRunner
from PIL import Image

from robustbench_mtl import testing
from robustbench_mtl.cli import main
from robustbench_mtl.data import _images, _store
from robustbench_mtl.data import celeba as cb
from robustbench_mtl.errors import DataNotFoundError
from robustbench_mtl.registry import DATASETS

# The 40 attribute names of list_attr_celeba, in the released order (Blond_Hair is index 9, Male 20).
ATTRS = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
         "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
         "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
         "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
         "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()
WILDS, GROUP_DRO, TV = (layout for layout, _ in cb.LAYOUTS)
FORMAT = dict(cb.LAYOUTS)
FIX = "robustbench-mtl prepare celeba"


def spec(per_group: int = 2) -> list[tuple[int, int, int]]:
    """(partition, blond, male) per row in file order: splits interleaved, unlike the release, on purpose."""
    rows = [(s, y, m) for s in range(3) for y in (0, 1) for m in (0, 1) for _ in range(per_group)]
    random.Random(0).shuffle(rows)
    return rows


def attr_values(i: int, y: int, male: int) -> list[int]:
    """-1/1 per attribute: the two read ones from the spec, the others a pattern that must not leak in."""
    return [2 * (y if a == "Blond_Hair" else male if a == "Male" else int((i + j) % 3 == 0)) - 1
            for j, a in enumerate(ATTRS)]


def write_images(images: Path, rows: list[tuple[int, int, int]]) -> None:
    """Red = 10 * row; most images at CelebA's 178x218, some smaller; one grayscale JPEG, one PNG named .jpg."""
    images.mkdir(parents=True, exist_ok=True)
    for i, (_, y, male) in enumerate(rows):
        path, size = images / f"{i + 1:06d}.jpg", (178, 218) if i % 3 else (40, 50)
        colour = (10 * i, 200 if male else 50, 100 if y else 30)
        if i == 1:
            Image.new("L", size, 10 * i).save(path, quality=95)
        elif i == 2:
            Image.new("RGB", size, colour).save(path, format="PNG")
        else:
            Image.new("RGB", size, colour).save(path, quality=95)


def write_lists(data_dir: Path, fmt: str, rows: list[tuple[int, int, int]]) -> None:
    """list_attr_celeba and list_eval_partition as released: Kaggle CSV, or Drive TXT (count line, names line,
    values printed '%2d' after one space)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(rows))]
    values = [attr_values(i, y, m) for i, (_, y, m) in enumerate(rows)]
    if fmt == "csv":
        attr = ["image_id," + ",".join(ATTRS)] + [n + "," + ",".join(map(str, v)) for n, v in zip(names, values)]
        part = ["image_id,partition"] + [f"{n},{s}" for n, (s, _, _) in zip(names, rows)]
    else:
        attr = [str(len(rows)), " ".join(ATTRS) + " "] + [n + "".join(f" {x:2d}" for x in v)
                                                           for n, v in zip(names, values)]
        part = [f"{n} {s}" for n, (s, _, _) in zip(names, rows)]
    (data_dir / f"list_attr_celeba.{fmt}").write_text("\n".join(attr) + "\n")
    (data_dir / f"list_eval_partition.{fmt}").write_text("\n".join(part) + "\n")


def write_fixture(root: Path, layout: str, per_group: int = 2) -> list[tuple[int, int, int]]:
    rows = spec(per_group)
    write_lists(root / layout, FORMAT[layout], rows)
    write_images(root / layout / cb.IMAGES, rows)
    return rows


def make(root: Path | None = None, size: int = 16) -> cb.CelebA:
    cls = DATASETS.get("celeba")
    kw = {} if root is None else {"root": str(root)}
    return cls(cls.HParams(image_size=size, store_size=size, **kw), "celeba")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_fixture(tmp_path / "data", WILDS)
    return tmp_path / "data"


@pytest.mark.parametrize("layout", [WILDS, GROUP_DRO, TV])
def test_layouts_load(tmp_path: Path, layout: str) -> None:
    rows = write_fixture(tmp_path, layout)
    ds = make(tmp_path)
    splits = ds.load()
    assert ds.data_dir == tmp_path / layout
    for k, (name, s) in enumerate(splits.items()):
        mine = [i for i, r in enumerate(rows) if r[0] == k]  # file order within the split
        assert s.x.shape == (8, 3, 16, 16) and s.x.dtype == torch.uint8
        assert s.y["y"].tolist() == [rows[i][1] for i in mine], name
        assert s.g.tolist() == [2 * rows[i][1] + rows[i][2] for i in mine] and s.e.tolist() == [0] * 8
        red = s.x[:, 0].float().mean((1, 2))  # row alignment: each image is the one its row names
        assert torch.allclose(red, torch.tensor(mine).float() * 10, atol=4), name
    assert ds.group_counts() == {k: (2, 2, 2, 2) for k in ("train", "val", "test")}
    assert not ds.is_full_release()  # a subset loads; its counts are recorded, not rejected
    assert ds.info().input_shape == (3, 16, 16) and ds.info().group_names == cb.GROUPS


def test_csv_and_txt_give_the_same_tensors(tmp_path: Path) -> None:
    write_fixture(tmp_path / "a", WILDS)
    write_fixture(tmp_path / "b", TV)
    a, b = make(tmp_path / "a").load(), make(tmp_path / "b").load()
    for k in a:
        assert torch.equal(a[k].x, b[k].x) and torch.equal(a[k].y["y"], b[k].y["y"]) and torch.equal(a[k].g, b[k].g)


def test_layout_search_order(tmp_path: Path) -> None:
    for per_group, layout in enumerate((TV, GROUP_DRO, WILDS), 1):  # sizes tell the copies apart
        write_fixture(tmp_path, layout, per_group)
    for layout, n in ((WILDS, 3), (GROUP_DRO, 2), (TV, 1)):
        ds = make(tmp_path)
        assert ds.data_dir == tmp_path / layout and len(ds.load()["train"]) == 4 * n
        shutil.rmtree(tmp_path / layout)


def test_env_var_replaces_default_root(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTBENCH_MTL_DATA", str(root))
    assert make().data_dir == root / WILDS and len(make().load()["val"]) == 8
    with pytest.raises(DataNotFoundError, match="no CelebA list files found"):  # an explicit root wins
        make(tmp_path / "elsewhere").load()


def test_cache_reused_and_keyed_by_files(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make(root).load()
    path = _store.store_path(make(root).store_key("test"))
    assert path.exists()
    monkeypatch.setattr(_images, "decode", lambda *a: pytest.fail("decoded again despite the cache"))
    assert torch.equal(make(root).load()["test"].x, first["test"].x)
    attr = root / WILDS / "list_attr_celeba.csv"
    male = 1 + ATTRS.index("Male")
    set_field(attr, 1, male, {"1": "-1", "-1": "1"}[lines_of(attr)[1].split(",")[male]])  # relabel one image
    assert _store.store_path(make(root).store_key("test")) != path


def test_check_dataset_passes(root: Path) -> None:
    testing.check_dataset("celeba", root=str(root), image_size=16)


# -- bad inputs: one `error:` line, exit 2, no run directory, no cache file ----------------------------------
def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def put(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def edit_row(path: Path, row: int, fn) -> None:  # row: 0-based line index of the file
    lines = lines_of(path)
    lines[row] = fn(lines[row])
    put(path, lines)


def swap(path: Path, a: int, b: int) -> None:
    lines = lines_of(path)
    lines[a], lines[b] = lines[b], lines[a]
    put(path, lines)


def set_field(path: Path, row: int, field: int, value: str) -> None:  # a CSV cell
    edit_row(path, row, lambda s: ",".join(value if k == field else v for k, v in enumerate(s.split(","))))


def nest(images: Path) -> None:  # as Kaggle's archive unpacks: img_align_celeba/img_align_celeba/000001.jpg
    images.rename(images.parent / "tmp")
    images.mkdir()
    (images.parent / "tmp").rename(images / cb.IMAGES)


def rename(d: Path, fmt: str, old: str, new: str) -> None:  # in both lists, so that they stay aligned
    for f in (f"list_attr_celeba.{fmt}", f"list_eval_partition.{fmt}"):
        (d / f).write_text((d / f).read_text().replace(old, new))


def outside(d: Path, fmt: str, how: str) -> None:
    secret = d.parent.parent / "secret.jpg"  # a readable image: without the check it would be trained on
    Image.new("RGB", (20, 20), (1, 2, 3)).save(secret)
    name = {"dotdot": "../../../secret.jpg", "absolute": str(secret), "symlink": "000003.jpg"}[how]
    if how == "symlink":
        (d / cb.IMAGES / name).unlink()
        (d / cb.IMAGES / name).symlink_to(secret)
    else:
        rename(d, fmt, "000003.jpg", name)


A_CSV, P_CSV, A_TXT, P_TXT = "list_attr_celeba.csv", "list_eval_partition.csv", "list_attr_celeba.txt", \
    "list_eval_partition.txt"
CASES = {  # name: (layout, break the files, what the line must say)
    "csv rows misaligned": (WILDS, lambda d: swap(d / P_CSV, 4, 5),
                            f"{{d}}/{A_CSV} data row 4 names '000004.jpg' but {{d}}/{P_CSV} data row 4 names "
                            "'000005.jpg' (2 row(s) differ)"),
    "txt rows misaligned": (TV, lambda d: swap(d / P_TXT, 3, 4),
                            f"{{d}}/{A_TXT} line 6 names '000004.jpg' but {{d}}/{P_TXT} line 4 names '000005.jpg'"),
    "row counts differ": (WILDS, lambda d: put(d / P_CSV, lines_of(d / P_CSV)[:-1]),
                          f"{{d}}/{A_CSV} lists 24 images but {{d}}/{P_CSV} lists 23"),
    "name with ..": (WILDS, lambda d: outside(d, "csv", "dotdot"),
                     f"{{d}}/{A_CSV} data row 3 names '../../../secret.jpg', which is outside {{d}}/{cb.IMAGES}; "
                     f"fix the file or re-run prepare: {FIX}"),
    "absolute name": (TV, lambda d: outside(d, "txt", "absolute"), f"{{d}}/{A_TXT} line 5 names '/"),
    "symlink out": (WILDS, lambda d: outside(d, "csv", "symlink"),
                    f"{{d}}/{A_CSV} data row 3 names '000003.jpg', which is outside"),
    "csv partition 3": (WILDS, lambda d: edit_row(d / P_CSV, 2, lambda s: s[:-1] + "3"),
                        f"{{d}}/{P_CSV} data row 2 has partition '3', not one of 0, 1, 2 (1 such row(s))"),
    "txt partition x": (TV, lambda d: edit_row(d / P_TXT, 6, lambda s: s[:-1] + "x"),
                        f"{{d}}/{P_TXT} line 7 has partition 'x', not one of 0, 1, 2"),
    "csv attribute 0": (WILDS, lambda d: set_field(d / A_CSV, 5, 1 + ATTRS.index("Blond_Hair"), "0"),
                        f"{{d}}/{A_CSV} data row 5 has Blond_Hair '0', not one of -1, 1 (1 such row(s))"),
    "csv lacks Male": (WILDS, lambda d: edit_row(d / A_CSV, 0, lambda s: s.replace(",Male,", ",Man,")),
                       f"{{d}}/{A_CSV} lacks the column(s) Male"),
    "csv empty image_id": (WILDS, lambda d: rename(d, "csv", "000007.jpg", ""), f"{{d}}/{A_CSV} data row 7 has an empty "),
    "txt lacks Blond_Hair": (TV, lambda d: edit_row(d / A_TXT, 1, lambda s: s.replace("Blond_Hair", "Blonde")),
                             f"{{d}}/{A_TXT} line 2 lacks the attribute(s) Blond_Hair"),
    "txt count line": (TV, lambda d: edit_row(d / A_TXT, 0, lambda s: "25"),
                       f"{{d}}/{A_TXT} line 1 says 25 images but 24 rows follow the names line"),
    "txt short row": (TV, lambda d: edit_row(d / A_TXT, 8, lambda s: s[:-3]),
                      f"{{d}}/{A_TXT} line 9 has 40 fields, not 41 (a file name and 40 value(s))"),
    "no val rows": (TV, lambda d: (d / P_TXT).write_text((d / P_TXT).read_text().replace(" 1\n", " 0\n")),
                    f"{{d}}/{P_TXT} has no val rows (partition 1)"),
    "partition file missing": (GROUP_DRO, lambda d: (d / P_CSV).unlink(), f"{{d}}/{A_CSV} has no {P_CSV} beside it"),
    "no files": (WILDS, lambda d: shutil.rmtree(d), "no CelebA list files found (looked for "),
    "missing image": (TV, lambda d: (d / cb.IMAGES / "000005.jpg").unlink(),
                      f"1 of 24 images listed in {A_TXT} are missing under {{d}}/{cb.IMAGES} (first: 000005.jpg) "
                      f"in line 7; fix: {FIX}"),
    "kaggle nesting": (WILDS, lambda d: nest(d / cb.IMAGES),
                       f"(first: 000001.jpg) in data row 1; move the images of {{d}}/{cb.IMAGES}/{cb.IMAGES} up into"),
    "undecodable image": (WILDS, lambda d: (d / cb.IMAGES / "000005.jpg").write_bytes(b"<html>quota</html>"),
                          f"{cb.IMAGES}/000005.jpg cannot be decoded (cannot identify image file "
                          f"'{{d}}/{cb.IMAGES}/000005.jpg'), listed in {{d}}/{A_CSV} data row 5; "
                          "fix: delete {d} and run"),
}


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def one_error_line(res, needle: str) -> None:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith("error: ") and needle in lines[0], res.output


def one_stderr_error(res, needle: str) -> None:
    """Exactly one `error:` line, on stderr (stderr may also hold the downloader's progress); stdout empty."""
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert res.exit_code != 0 and len(errors) == 1 and res.stdout == "", res.output
    assert needle in errors[0] and "Traceback" not in res.output, res.output


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_writes_nothing(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  case: str) -> None:
    layout, breaks, needle = CASES[case]
    if layout != WILDS:
        shutil.rmtree(root / WILDS)
        write_fixture(root, layout)
    d = root / layout
    breaks(d)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ROBUSTBENCH_MTL_CACHE", str(cache))
    out = tmp_path / "run"
    res = invoke("run", "--algo", "erm", "--data", "celeba", "--set", f"data.root={root}", "--set", "train.epochs=1",
                 "--set", "data.image_size=16", "--out", str(out))
    one_error_line(res, needle.format(d=d))
    assert res.output.strip().startswith("error: celeba: ")
    assert f"{FIX} --root {root}" in res.output
    assert not out.exists() and not (cache.exists() and any(cache.iterdir()))


def test_undecodable_image_names_its_row_and_the_fix(root: Path) -> None:
    (root / WILDS / cb.IMAGES / "000006.jpg").write_bytes(b"\xff\xd8\xff\xe0")  # a JPEG cut after 4 bytes
    with pytest.raises(DataNotFoundError) as exc:
        make(root).load()
    msg = str(exc.value)
    assert f"listed in {root / WILDS / A_CSV} data row 6; fix: delete {root / WILDS} and run {FIX} --root {root}" in msg
    assert "\n" not in msg


@pytest.mark.slow
def test_one_epoch_run(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = invoke("run", "--algo", "erm", "--data", "celeba", "--set", f"data.root={root}", "--set", "train.epochs=1",
                 "--set", "data.image_size=16", "--set", "backbone.patch_size=4", "--set", "train.batch_size=8",
                 "--device", "cpu", "--quiet", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert (out / "final.json").exists()


# -- prepare: torchvision's downloader, stubbed (tests never download) -----------------------------------------
QUOTA = ("Failed to retrieve file url:\n\n\tToo many users have viewed or downloaded this file recently. Please\n"
         "\ttry accessing the file again later.\n\nYou may still be able to access the file from the browser:\n\n"
         "\thttps://drive.google.com/uc?id=0B7EVK8r0v71pZjFTYXZWM3FlRnM\n\nbut Gdown can't.")


class FileURLRetrievalError(Exception):  # gdown.exceptions' name for a quota or confirmation page
    pass


def fake_torchvision(monkeypatch: pytest.MonkeyPatch, fill) -> list[tuple[str, str, bool]]:
    """torchvision's CelebA in miniature: download=True writes into <root>/celeba (`fill` stands in for the
    Drive downloads and the unzip), then the list files must be there (its integrity check)."""
    calls: list[tuple[str, str, bool]] = []

    class CelebA:
        def __init__(self, root: str, split: str = "train", target_type="attr", transform=None,
                     target_transform=None, download: bool = False) -> None:
            calls.append((root, split, download))
            base = Path(root) / "celeba"
            base.mkdir(parents=True, exist_ok=True)
            print("Downloading...")  # gdown's progress; it must not reach stdout
            fill(base)
            if not (base / "list_attr_celeba.txt").is_file():
                raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")

    monkeypatch.setattr(torchvision.datasets, "CelebA", CelebA)
    monkeypatch.setitem(sys.modules, "gdown", types.ModuleType("gdown"))
    return calls


def quota(d: Path) -> None:
    (d / "img_align_celeba.zip").write_bytes(b"<html>")  # gdown has opened the file when the page comes back
    raise FileURLRetrievalError(QUOTA)


def complete(d: Path) -> None:
    write_lists(d, "txt", spec(1))
    write_images(d / cb.IMAGES, spec(1))
    (d / "img_align_celeba.zip").write_bytes(b"zip")


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else ["<absent>"]


@pytest.mark.parametrize("existing", [None, "other files", "partial celeba"])
def test_prepare_quota_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: str | None) -> None:
    root = tmp_path / "new" / "root"
    if existing:
        root.mkdir(parents=True)
        (root / "waterbirds_v1.0").mkdir()
    if existing == "partial celeba":
        (root / "celeba").mkdir()
        (root / "celeba" / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    before = tree(tmp_path)
    calls = fake_torchvision(monkeypatch, quota)
    res = invoke("prepare", "celeba", "--root", str(root))
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert res.exit_code != 0 and len(errors) == 1 and res.stdout == "", res.output
    assert errors[0].startswith("error: celeba: download from Google Drive failed (FileURLRetrievalError: Failed to "
                                "retrieve file url: Too many users have viewed"), res.output
    assert cb.KAGGLE_URL in errors[0] and f"{root / 'celebA_v1.0'} holds list_attr_celeba.csv" in errors[0]
    assert f"put in {root / 'celeba'}; then rerun: {FIX} --root {root}" in errors[0]
    assert ("predates this run" in errors[0]) == (existing == "partial celeba") and "Traceback" not in res.output
    assert calls == [(str(root), "all", True)]  # torchvision's downloader over every partition
    assert tree(tmp_path) == before  # what it made is gone, what was there is untouched


def test_prepare_needs_gdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gdown", None)  # import gdown now raises ImportError
    one_error_line(invoke("prepare", "celeba", "--root", str(tmp_path / "r")), "pip install gdown")
    assert not (tmp_path / "r").exists()


def test_prepare_succeeds_and_verifies_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_torchvision(monkeypatch, complete)
    res = invoke("prepare", "celeba", "--root", str(tmp_path / "a"))  # official counts: a fixture is refused
    one_stderr_error(res, f"error: celeba: download into {tmp_path / 'a' / 'celeba'} has 1 train images in group "
                            f"not_blond_female, the official release has 71629; rerun: {FIX}")
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(cb.CelebA, "official_counts", {k: (1, 1, 1, 1) for k in ("train", "val", "test")})
    res = invoke("prepare", "celeba", "--root", str(tmp_path / "b"))
    assert res.exit_code == 0 and res.stdout.strip() == str(tmp_path / "b" / "celeba"), res.output
    assert "Downloading" in res.stderr and not (tmp_path / "b" / "celeba" / "img_align_celeba.zip").exists()
    ds = make(tmp_path / "b")
    assert ds.is_full_release() and ds.data_dir == tmp_path / "b" / "celeba"


def test_prepare_incomplete_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_torchvision(monkeypatch, lambda d: write_lists(d, "txt", spec(1)))  # lists, but no images
    with pytest.raises(DataNotFoundError, match=r"is incomplete \(12 of 12 images listed in list_attr_celeba.txt "
                                                r"are missing .*\); rerun: " + FIX):
        cb.CelebA.prepare(tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_prepare_present_data_needs_no_download(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gdown", None)
    monkeypatch.setattr(torchvision.datasets, "CelebA", None)
    assert cb.CelebA.prepare(root) == root / WILDS
