"""rho_spur: exact values on models that read one half or both, the algorithm's prediction path, final.json fields."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from robustbench_mtl.backbones.base import Backbone
from robustbench_mtl.config import RunSpec, TrainHParams, resolve
from robustbench_mtl.data._pairs import SIDE, SPURIOUS_REGIONS, region_mask
from robustbench_mtl.data.base import DataInfo, TensorSplit
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.hparams import hp
from robustbench_mtl.model import Model
from robustbench_mtl.registry import ALGORITHMS, DATASETS
from robustbench_mtl.runner import run
from robustbench_mtl.saliency import MAX_EXAMPLES, rho_spur, selected_rho_spur, spurious_masks, subset
from robustbench_mtl.trainer import build
from robustbench_mtl.types import Outputs

SHAPE = (1, SIDE, 2 * SIDE)
TASKS = {"left": 10, "right": 10}
MASKS = {t: region_mask(r, SHAPE) for t, r in SPURIOUS_REGIONS.items()}  # right: columns 0:28, left: 28:56
INFO = DataInfo("pairs", "image", SHAPE, TASKS, ("agree", "disagree"), (1, 1))


@dataclass(frozen=True)
class HalfHParams:
    reads: str = hp("left", help="which half of the input the backbone reads: left, right or both (summed)")


class Half(Backbone):
    """A nonlinear backbone on one half of a pair image, or on the sum of both halves (equal saliency)."""

    HParams = HalfHParams
    modalities = ("image",)

    def __init__(self, hparams: Any, info: DataInfo, reads: str | None = None) -> None:
        super().__init__(hparams, info)
        self.reads = reads or hparams.reads
        self.out_dim = 8
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 8), nn.Tanh())

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Outputs:
        left, right = x[..., :SIDE], x[..., SIDE:]
        half = {"left": left, "right": right, "both": left + right}[self.reads]
        return Outputs(self.net(half))


def _algo(name: str, reads: str) -> Any:
    torch.manual_seed(0)
    model = Model(Half(HalfHParams(reads), INFO), TASKS, {})
    cls = ALGORITHMS.get(name)
    return cls(model, cls.HParams(), TrainHParams(), INFO, 1)


def _split(n: int = 40, missing: int = 0) -> TensorSplit:
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, *SHAPE), generator=gen, dtype=torch.uint8)
    y = {t: torch.randint(0, 10, (n,), generator=gen) for t in TASKS}
    y["right"][:missing] = -1
    return TensorSplit(x, y, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))


def test_a_model_reading_one_half_puts_all_saliency_there() -> None:
    # Reading the left digit only: every bit of task right's saliency is spurious, none of task left's.
    rho, counts = rho_spur(_algo("erm", "left"), _split(), MASKS, batch_size=16)
    assert rho == {"left": 0.0, "right": 1.0} and counts == {"left": 40, "right": 40}
    rho, _ = rho_spur(_algo("erm", "right"), _split(), MASKS, batch_size=16)
    assert rho == {"left": 1.0, "right": 0.0}


def test_a_model_reading_both_halves_equally_is_one_half() -> None:
    rho, _ = rho_spur(_algo("erm", "both"), _split(), MASKS, batch_size=7)
    assert rho["left"] == pytest.approx(0.5, abs=1e-9) and rho["right"] == pytest.approx(0.5, abs=1e-9)


def test_stl_measures_each_task_with_its_own_model() -> None:
    # STL: task left's model reads the left half, task right's model the right half: nothing spurious.
    algo = _algo("stl", "left")
    algo.model.task_backbones["right"] = Half(HalfHParams(), INFO, reads="right")
    rho, _ = rho_spur(algo, _split(), MASKS)
    assert rho == {"left": 0.0, "right": 0.0}


def test_fp32_eval_mode_batched_and_unlabelled_examples_left_out() -> None:
    algo = _algo("erm", "both")
    algo.model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    algo.autocast = autocast
    whole, _ = rho_spur(_algo("erm", "both"), _split(missing=5), MASKS, batch_size=64)
    rho, counts = rho_spur(algo, _split(missing=5), MASKS, batch_size=3)
    assert rho == pytest.approx(whole, abs=1e-12)  # fp32 under a bf16 autocast, and batching changes nothing
    assert counts == {"left": 40, "right": 35} and algo.autocast is autocast and not algo.model.training
    assert not any(p.grad is not None for p in algo.parameters())  # only the input's gradient is taken


def test_the_subset_is_fixed_seeded_and_capped() -> None:
    assert subset(MAX_EXAMPLES) is None and subset(10, cap=20) is None
    a, b = subset(50, cap=20), subset(50, cap=20)
    assert torch.equal(a, b) and len(a) == 20 and torch.equal(a, a.sort().values) and len(set(a.tolist())) == 20
    _, counts = rho_spur(_algo("erm", "left"), _split(), MASKS, max_examples=10)
    assert counts == {"left": 10, "right": 10}


def test_masks_from_declared_regions_and_none_without() -> None:
    synthetic = resolve(RunSpec("synthetic", "erm")).dataset
    assert spurious_masks(synthetic, (2,)) == {}

    class Tab:
        name, modality, spurious_regions = "tab", "tabular", {"y": ((1, 2),)}

    (mask,) = spurious_masks(Tab(), (3,)).values()
    assert mask.tolist() == [False, True, False]
    Tab.modality = "text"
    assert spurious_masks(Tab(), (3,)) == {}
    Tab.modality, Tab.spurious_regions = "tabular", {"y": (None, (1, 2))}
    with pytest.raises(ConfigError, match=r"tab: spurious_regions\['y'\] has 2 axes but one input has 1"):
        spurious_masks(Tab(), (3,))


def test_each_protocol_measures_its_own_selected_weights(tmp_path: Path) -> None:
    # One model class; the saved weights decide which half it reads (a half's input weights zeroed).
    algo = _algo("erm", "both")
    (tmp_path / "selected").mkdir()
    weights = algo.model.backbone.net[1].weight  # [8, 28*28]: "both" reads left + right through the same weights
    own = {k: v.clone() for k, v in algo.model.state_dict().items()}
    for proto, scale in (("val_avg", 0.0), ("val_worst_group", 1.0), ("oracle", 1.0)):
        with torch.no_grad():
            weights.mul_(scale)
        torch.save(algo.model.state_dict(), tmp_path / "selected" / f"{proto}.pt")
        algo.model.load_state_dict(own)
    selections = {"val_avg": {"epoch": 0}, "val_worst_group": {"epoch": 2}, "oracle": {"epoch": 2},
                  "no_file": {"epoch": 1}}
    ds = type("Pairs", (), {"name": "pairs", "modality": "image", "spurious_regions": SPURIOUS_REGIONS})()
    info = selected_rho_spur(algo, ds, _split(), tmp_path, selections, 16)
    assert selections["val_avg"]["saliency"] == {"test/rho_spur/left": None, "test/rho_spur/right": None}  # all 0
    assert selections["val_worst_group"]["saliency"] == {"test/rho_spur/left": pytest.approx(0.5),
                                                         "test/rho_spur/right": pytest.approx(0.5)}
    assert selections["oracle"]["saliency"] == selections["val_worst_group"]["saliency"]  # the same record
    assert "saliency" not in selections["no_file"]  # no selected/<protocol>.pt, nothing to measure
    assert (info["split"], info["examples"], info["max_examples"]) == ("test", {"left": 40, "right": 40}, MAX_EXAMPLES)
    assert all(torch.equal(v, own[k]) for k, v in algo.model.state_dict().items())  # its own weights again


def test_a_prediction_without_gradients_is_recorded_not_fatal(tmp_path: Path) -> None:
    class NoGrad(ALGORITHMS.get("erm")):  # type: ignore[misc]
        def predict(self, x: Tensor) -> dict[str, Tensor]:
            with torch.no_grad():
                return {t: v.float() for t, v in self.model(x).logits.items()}

    model = Model(Half(HalfHParams(), INFO), TASKS, {})
    algo = NoGrad(model, NoGrad.HParams(), TrainHParams(), INFO, 1)
    (tmp_path / "selected").mkdir()
    torch.save(model.state_dict(), tmp_path / "selected" / "val_avg.pt")
    selections = {"val_avg": {"epoch": 0}}
    ds = type("Pairs", (), {"name": "pairs", "modality": "image", "spurious_regions": SPURIOUS_REGIONS})()
    info = selected_rho_spur(algo, ds, _split(), tmp_path, selections, 16)
    assert "saliency" not in selections["val_avg"] and "no gradient with respect to its inputs" in info["unavailable"]


def test_no_saliency_fields_without_spurious_regions(tmp_path: Path) -> None:
    assert not getattr(DATASETS.get("synthetic"), "spurious_regions", None)
    final = run(RunSpec("synthetic", "erm", threads=1, overrides=("train.epochs=1",)), tmp_path / "r").final
    assert "saliency" not in final and not any("saliency" in e for e in final["selections"].values())


@pytest.mark.slow
def test_final_json_fields_after_a_real_multidigits_run(tmp_path: Path) -> None:
    spec = RunSpec("multidigits", "erm", device="cpu", threads=1,
                   overrides=("train.epochs=1", "data.n_train=300", "data.n_val=200", "data.n_test=300"))
    out = tmp_path / "run"
    run(spec, out)
    final = json.loads((out / "final.json").read_text())
    assert final["saliency"]["split"] == "test" and final["saliency"]["examples"] == {"left": 300, "right": 300}
    assert (final["saliency"]["max_examples"], final["saliency"]["subset_seed"]) == (MAX_EXAMPLES, 0)
    for entry in final["selections"].values():
        assert set(entry["saliency"]) == {"test/rho_spur/left", "test/rho_spur/right"}
        assert all(0 < v < 1 for v in entry["saliency"].values())
    # The same number from the selected weights, loaded into a freshly built model.
    r = resolve(spec)
    algo = build(r, torch.device("cpu"), 1)
    algo.model.load_state_dict(torch.load(out / "selected" / "val_avg.pt", weights_only=True))
    rho, _ = rho_spur(algo, r.dataset.load()["test"], MASKS)
    assert final["selections"]["val_avg"]["saliency"] == {f"test/rho_spur/{t}": pytest.approx(v, rel=1e-6)
                                                          for t, v in rho.items()}


def test_train_metrics_of_the_selected_model_on_a_fixed_training_subset(tmp_path: Path) -> None:
    from robustbench_mtl.trainer import evaluate

    spec = RunSpec("multidigits", "erm", threads=1,
                   overrides=("train.epochs=1", "data.n_train=1100", "data.n_val=200", "data.n_test=200"))
    out = tmp_path / "r"
    final = run(spec, out).final
    assert final["train_metrics"] == {"split": "train", "max_examples": MAX_EXAMPLES, "examples": MAX_EXAMPLES}
    r = resolve(spec)
    algo = build(r, torch.device("cpu"), 1)
    algo.model.load_state_dict(torch.load(out / "selected" / "val_avg.pt", weights_only=True))
    train = r.dataset.load()["train"]
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:MAX_EXAMPLES].sort().values
    expected = evaluate(algo, train.subset(idx), "train", r)
    entry = final["selections"]["val_avg"]
    assert entry["train"]["avg_acc/left"] == pytest.approx(expected["train/avg_acc/left"], rel=1e-6)
    # erm sees no training groups: no group metrics rather than nulls
    assert "worst_group_acc" not in entry["train"] and "worst_class_acc" in entry["train"]
    # one-task runs: nothing reads training-subset metrics, so none are measured
    one = run(RunSpec("synthetic", "erm", threads=1, overrides=("train.epochs=1",)), tmp_path / "one").final
    assert "train_metrics" not in one and not any("train" in e for e in one["selections"].values())
