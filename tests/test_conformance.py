"""Every registered component (core and installed plugins) passes robustbench_mtl.testing's conformance checks."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from robustbench_mtl import testing
from robustbench_mtl.algorithms.base import Algorithm
from robustbench_mtl.algorithms.erm import ERM
from robustbench_mtl.data import waterbirds as wb
from robustbench_mtl.registry import REGISTRIES


@pytest.mark.parametrize("name", REGISTRIES["algorithms"].names())
def test_algorithm(name: str) -> None:
    testing.check_algorithm(name)


@pytest.mark.parametrize("name", REGISTRIES["objectives"].names())
def test_objective(name: str) -> None:
    testing.check_objective(name)


@pytest.mark.parametrize("name", REGISTRIES["backbones"].names())
def test_backbone(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no test downloads weights: tiny local configs instead
    testing.check_backbone(name, **_offline_backbone_overrides(name, tmp_path))


def _offline_backbone_overrides(name: str, tmp_path: Path) -> dict:
    """Hparams that let a pretrained-by-default backbone build without a download."""
    if name == "vit_b16":
        from transformers import ViTConfig, ViTModel

        config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           patch_size=4, image_size=16)
        ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
        return {"model": str(tmp_path / "vit")}
    if name == "bert":
        from test_bert import save_bert

        return {"model": str(save_bert(tmp_path / "bert"))}
    return {"timm": {"model": "resnet10t", "pretrained": False}, "resnet50": {"pretrained": False}}.get(name, {})


def write_celeba(data_dir: Path) -> None:
    """One image per group per split in the Google Drive TXT layout (count line, 40 names, '%2d' values)."""
    rows = [(s, y, m) for s in range(3) for y in (0, 1) for m in (0, 1)]
    names = [f"{i + 1:06d}.jpg" for i in range(len(rows))]
    (data_dir / "img_align_celeba").mkdir(parents=True)
    header = " ".join("Blond_Hair" if j == 9 else "Male" if j == 20 else f"a{j}" for j in range(40))
    attr = [str(len(rows)), header] + [n + "".join(f" {2 * (y if j == 9 else m if j == 20 else 0) - 1:2d}"
                                                   for j in range(40)) for n, (_, y, m) in zip(names, rows)]
    (data_dir / "list_attr_celeba.txt").write_text("\n".join(attr) + "\n")
    (data_dir / "list_eval_partition.txt").write_text("".join(f"{n} {s}\n" for n, (s, _, _) in zip(names, rows)))
    for n, (_, y, m) in zip(names, rows):
        Image.new("RGB", (178, 218), (40, 200 if m else 50, 200 if y else 50)).save(data_dir / "img_align_celeba" / n)


def write_waterbirds(data_dir: Path) -> None:
    """Two images per group per split in the official WILDS layout (metadata.csv + CUB-style folders)."""
    rows = [{"img_filename": f"{y}.Bird/Bird_{split}{place}{k}.jpg", "y": y, "split": split, "place": place,
             "place_filename": f"/p/place{place}.jpg"}
            for split in range(3) for y in (0, 1) for place in (0, 1) for k in range(2)]
    meta = pd.DataFrame(rows)
    for r in meta.itertuples():
        (data_dir / r.img_filename).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), (40, 200 if r.place else 50, 100)).save(data_dir / r.img_filename)
    meta.index = pd.RangeIndex(1, len(meta) + 1, name="img_id")
    meta.to_csv(data_dir / "metadata.csv")


@pytest.mark.parametrize("name", REGISTRIES["datasets"].names())
def test_dataset(name: str, tmp_path: Path) -> None:
    if name == "waterbirds":  # real data is not downloaded in tests: a tiny fixture in its official format
        write_waterbirds(tmp_path / wb.WILDS_DIR)
        testing.check_dataset(name, root=str(tmp_path), image_size=16)
    elif name == "celeba":
        write_celeba(tmp_path / "celeba")
        testing.check_dataset(name, root=str(tmp_path), image_size=16)
    elif name in ("civilcomments", "civilcomments_small"):
        from test_civilcomments import spec, write_csv

        write_csv(tmp_path / "civilcomments_v1.0" / "all_data_with_identities.csv", spec())
        testing.check_dataset(name, root=str(tmp_path), max_length=32)
    elif name == "multinli":
        from test_multinli import write_fixture

        write_fixture(tmp_path / "multinli")
        testing.check_dataset(name, root=str(tmp_path))
    elif name in ("metashift", "imagenetbg"):  # SubpopBench's on-disk format: metadata + image folders
        from test_metashift_imagenetbg import write_imagenetbg, write_metashift

        data_dir = tmp_path / ("metashift" if name == "metashift" else "backgrounds_challenge")
        data_dir.mkdir()
        (write_metashift if name == "metashift" else write_imagenetbg)(data_dir)
        testing.check_dataset(name, root=str(tmp_path), image_size=16)
    elif name == "multi_mnist":
        from test_multi_mnist import SMALL, write_fixture as write_mnist

        write_mnist(tmp_path)
        testing.check_dataset(name, root=str(tmp_path), **SMALL)
    else:
        testing.check_dataset(name)


# -- the checks catch contract violations ------------------------------------------------------------------
class Forgetful(ERM):
    """ERM that loses a counter in its checkpoint (violates extra_state / load_extra_state)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.steps = 0

    def update(self, batch, aux_batch=None):  # type: ignore[no-untyped-def]
        self.steps += 1
        return super().update(batch, aux_batch)

    def extra_state(self):  # type: ignore[no-untyped-def]
        return {"steps": self.steps}


class NaNLoss(ERM):
    """ERM whose aggregate is NaN: update must report it (the base class raises)."""

    def aggregate(self, losses, batch):  # type: ignore[no-untyped-def]
        return losses.mean() * float("nan")


class Undocumented(ERM):
    pass


Undocumented.__doc__ = ""  # inspect.getdoc would otherwise inherit ERM's


class Nondeterministic(ERM):
    """ERM with noise from an unseeded generator added to the loss."""

    def aggregate(self, losses, batch):  # type: ignore[no-untyped-def]
        return losses.mean() + torch.rand((), generator=torch.Generator().manual_seed(int.from_bytes(
            __import__("os").urandom(4), "little")))


@pytest.mark.parametrize("cls, message", [
    (Forgetful, "load_extra_state"), (Undocumented, "docstring"), (Nondeterministic, "same seed"),
    (NaNLoss, "non-finite"),
])
def test_violations_are_reported(cls: type, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRIES["algorithms"]._items, "bad_algo", cls)
    with pytest.raises(AssertionError, match=message):
        testing.check_algorithm("bad_algo")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, spaces to '-', punctuation other than '-' and '_' dropped."""
    import re

    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", markdown, re.M)}


def test_every_method_page_cites_an_existing_section_of_docs_methods() -> None:
    import inspect
    import re
    from pathlib import Path

    from robustbench_mtl.registry import CORE_DIST, REGISTRIES

    root = Path(__file__).resolve().parents[1]
    anchors = _anchors((root / "docs" / "methods.md").read_text())
    for kind in ("algorithms", "objectives", "selections", "datasets"):
        for name, cls in REGISTRIES[kind].load_all():
            if REGISTRIES[kind].provider(name).dist != CORE_DIST:
                continue
            cited = re.findall(r"docs/methods\.md#([\w\-]+)", inspect.getdoc(cls) or "")
            assert f"{name}" in cited, f"{kind} '{name}': its docstring must cite docs/methods.md#{name}"
            assert set(cited) <= anchors, f"{kind} '{name}' cites missing sections {set(cited) - anchors}"
    # Users have the repository, not the team's internal notes: nothing may send them there.
    for path in [*root.joinpath("robustbench_mtl").rglob("*.py"), *root.joinpath("docs").glob("*.md"),
                 root / "README.md", *root.joinpath("leaderboards").glob("*.md")]:
        text = path.read_text()
        assert "METHODS.md" not in text and "DESIGN.md" not in text and "METHODS §" not in text, path


class _TwinInInit(Algorithm):
    """ERM plus a second head trained on the same loss, created in __init__ (a test algorithm)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.twin = torch.nn.Linear(self.model.backbone.out_dim, 2)

    def compute_loss(self, batch, aux_batch):
        out = self.model(batch.x)
        twin = torch.nn.functional.cross_entropy(self.twin(out.pooled), batch.y["y"])
        total = self.task_losses(out, batch).mean() + twin
        return total, {"loss_twin": twin}


class _TwinTooLate(_TwinInInit):
    """The same, but its optimizer was built before the twin existed (a defect the kit must catch)."""

    def __init__(self, *args, **kwargs) -> None:
        Algorithm.__init__(self, *args, **kwargs)
        self.optimizer  # noqa: B018  built now, over the model only
        self.twin = torch.nn.Linear(self.model.backbone.out_dim, 2)


def test_a_second_network_is_trained_and_an_untrained_one_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_mtl.registry import ALGORITHMS

    monkeypatch.setitem(ALGORITHMS._items, "_twin_ok", _TwinInInit)
    monkeypatch.setitem(ALGORITHMS._items, "_twin_late", _TwinTooLate)
    testing.check_algorithm("_twin_ok")
    with pytest.raises(AssertionError, match=r"received gradients but never changed.*twin\.weight"):
        testing.check_algorithm("_twin_late")
