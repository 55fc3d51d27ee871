"""Focal, class-balanced, LDAM-DRW, balanced softmax, sqrt reweighting: hand computations, counts, resume, runs."""
from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from robustbench_mtl.algorithms._class_counts import class_balanced_weights, count_classes
from robustbench_mtl.algorithms.bsoftmax import log_prior
from robustbench_mtl.algorithms.focal import focal_loss
from robustbench_mtl.algorithms.ldam import drw_active, ldam_logits, ldam_margins
from robustbench_mtl.algorithms.sqrt_reweight import sqrt_inverse_weights
from robustbench_mtl.config import ModelHParams, RunSpec, TrainHParams, resolve
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.labels import algorithm_info
from robustbench_mtl.registry import ALGORITHMS
from robustbench_mtl.results import read_jsonl
from robustbench_mtl.runner import run
from test_mtl_algorithms import _records, _Stop, _StopAfterFirstEpoch
from robustbench_mtl.testing import _Setup, check_algorithm
from robustbench_mtl.trainer import assemble
from robustbench_mtl.types import Batch, Outputs

NEW = ("focal", "cb_loss", "ldam", "bsoftmax", "sqrt_reweight")
STEPS = 10  # the schedule length the algorithms below are built with


def _algo(name: str, tasks: int = 1, **hparams: Any) -> tuple[_Setup, Any]:
    """`name` with `hparams` on the kit's tiny tabular data (tasks = 2: tasks y and a), built as the runner does."""
    setup = _Setup(name, (), "mlp", "tabular", {"hidden": (4,), "rep_dim": 3}, tasks=tasks)
    setup.train_hp = TrainHParams(epochs=1, batch_size=16, lr=1e-2, patience=0)
    hp = {"backbone": setup.backbone_hp, "algorithm": dataclasses.replace(setup.algo_cls.HParams(), **hparams),
          "train": setup.train_hp, "model": ModelHParams()}
    classes = {"backbone": setup.backbone_cls, "algorithm": setup.algo_cls}
    algo = assemble(classes, hp, [], algorithm_info(setup.info, setup.use), 0, STEPS)
    algo.train_split = setup.train
    return setup, algo


def _with_counts(algo: Any, counts: dict[str, list[int]]) -> Any:
    """`algo` as if it had counted `counts` on its training split (what a checkpoint restores)."""
    algo.load_extra_state({"class_counts": counts})
    return algo


def _out(**logits: list[list[float]]) -> Outputs:
    z = {t: torch.tensor(v) for t, v in logits.items()}
    return Outputs(pooled=torch.zeros(len(next(iter(z.values()))), 3), logits=z)


def _batch(**labels: list[int]) -> Batch:
    y = {t: torch.tensor(v) for t, v in labels.items()}
    n = len(next(iter(y.values())))
    return Batch(torch.zeros(n, 2), y, torch.full((n,), -1), torch.full((n,), -1), torch.arange(n))


def _roundtrip(obj: Any) -> Any:
    torch.save(obj, buf := io.BytesIO())
    return torch.load(io.BytesIO(buf.getvalue()), weights_only=True)


def _ce(z: list[float], y: int) -> float:
    return math.log(sum(math.exp(v) for v in z)) - z[y]


# -- focal ----------------------------------------------------------------------------------
def test_focal_at_given_true_class_probabilities_by_hand() -> None:
    ce = torch.tensor([-math.log(0.8), -math.log(0.5), -math.log(0.1)])
    # (1 - p_t)^2 * (-log p_t): 0.2^2 * 0.22314, 0.5^2 * 0.69315, 0.9^2 * 2.30259
    assert focal_loss(ce, 2.0).tolist() == pytest.approx([0.04 * 0.2231436, 0.25 * 0.6931472, 0.81 * 2.3025851],
                                                         rel=1e-5)
    assert focal_loss(ce, 0.5).tolist() == pytest.approx([math.sqrt(0.2) * 0.2231436, math.sqrt(0.5) * 0.6931472,
                                                          math.sqrt(0.9) * 2.3025851], rel=1e-5)
    assert torch.allclose(focal_loss(ce, 0.0), ce)  # gamma 0 is the cross-entropy


def test_focal_algorithm_sums_tasks_and_ignores_missing_labels() -> None:
    _, algo = _algo("focal", tasks=2, gamma=2.0)
    # task y: softmax([log .8, log .2]) = (.8, .2); task a: (.5, .5); the second row misses its a label
    out = _out(y=[[math.log(0.8), math.log(0.2)], [math.log(0.8), math.log(0.2)]], a=[[0.0, 0.0], [3.0, -1.0]])
    losses = algo.task_losses(out, _batch(y=[0, 1], a=[1, -1]))
    fl = [0.2 ** 2 * -math.log(0.8), 0.8 ** 2 * -math.log(0.2), 0.5 ** 2 * -math.log(0.5)]
    assert losses.tolist() == pytest.approx([fl[0] + fl[2], fl[1]], rel=1e-5)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_focal_gradient_is_finite_at_zero_cross_entropy(gamma: float) -> None:
    ce = torch.tensor([0.0, 1e-9, 0.7], requires_grad=True)  # a missing label, a saturated one, an ordinary one
    focal_loss(ce, gamma).sum().backward()
    assert bool(torch.isfinite(ce.grad).all())
    # d/dCE (1 - e^-CE)^g CE = (1 - p)^g + g (1 - p)^(g - 1) p CE, at CE = 0.7
    p = math.exp(-0.7)
    assert float(ce.grad[2]) == pytest.approx((1 - p) ** gamma + gamma * (1 - p) ** (gamma - 1) * p * 0.7, rel=1e-5)


# -- class-balanced loss ----------------------------------------------------------------------
def test_class_balanced_weights_by_hand() -> None:
    # beta 0.9, n = (100, 10, 1): (1 - beta) / (1 - beta^n) = 0.1/0.99997344, 0.1/0.65132156, 0.1/0.1
    raw = [0.1 / (1 - 0.9 ** 100), 0.1 / (1 - 0.3486784401), 1.0]
    assert raw[:2] == pytest.approx([0.10000266, 0.15353399], rel=1e-6)
    w = class_balanced_weights(torch.tensor([100.0, 10.0, 1.0]), 0.9)
    assert w.tolist() == pytest.approx([3 * r / sum(raw) for r in raw], rel=1e-6)
    assert float(w.sum()) == pytest.approx(3.0)  # they sum to the number of classes
    # beta 0: equal weights; beta near 1: proportional to 1/n; no training examples: weight 0
    assert class_balanced_weights(torch.tensor([5.0, 50.0]), 0.0).tolist() == pytest.approx([1.0, 1.0])
    inv = [1 / 4, 1 / 12]
    assert class_balanced_weights(torch.tensor([4.0, 12.0]), 1 - 1e-9).tolist() == pytest.approx(
        [2 * v / sum(inv) for v in inv], rel=1e-5)
    assert class_balanced_weights(torch.tensor([3.0, 0.0, 1.0]), 0.5).tolist() == pytest.approx(
        [3 * (0.5 / 0.875) / (0.5 / 0.875 + 1), 0.0, 3 * 1 / (0.5 / 0.875 + 1)], rel=1e-6)


def test_cb_loss_is_the_batch_mean_of_weighted_cross_entropy() -> None:
    _, algo = _algo("cb_loss", beta=0.5)
    _with_counts(algo, {"y": [3, 1]})
    # beta 0.5: raw (0.5 / 0.875, 0.5 / 0.5) = (4/7, 1), summing to 2: (8/11, 14/11)
    w = [8 / 11, 14 / 11]
    z = [[1.0, 0.0], [0.5, 2.0], [0.0, 0.0]]
    loss = algo.aggregate(algo.task_losses(_out(y=z), _batch(y=[0, 0, 1])), _batch(y=[0, 0, 1]))
    expected = (w[0] * _ce(z[0], 0) + w[0] * _ce(z[1], 0) + w[1] * _ce(z[2], 1)) / 3  # mean, not / sum of w
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_cb_loss_beta_one_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"algorithm\.beta must be in \[0, 1\), got 1\.0"):
        resolve(RunSpec("synthetic", "cb_loss", overrides=("algorithm.beta=1",)))


# -- LDAM-DRW ---------------------------------------------------------------------------------
def test_ldam_margins_scale_as_inverse_fourth_root_with_max_m_for_the_rarest() -> None:
    # n^(-1/4) for n = 16, 1, 81: 1/2, 1, 1/3; the rarest class (n = 1) gets max_m = 0.5
    m = ldam_margins(torch.tensor([16.0, 1.0, 81.0]), 0.5)
    assert m.tolist() == pytest.approx([0.25, 0.5, 0.5 / 3], rel=1e-6)
    assert ldam_margins(torch.tensor([16.0, 0.0, 256.0]), 0.3).tolist() == pytest.approx([0.3, 0.0, 0.15], rel=1e-6)


def test_ldam_lowers_only_the_true_class_logit_then_scales() -> None:
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0], [4.0, 4.0, 4.0]])
    out = ldam_logits(z, torch.tensor([0, 2, -1]), torch.tensor([0.25, 0.5, 0.1]), 2.0)
    assert torch.allclose(out, torch.tensor([[1.5, 4.0, 6.0], [0.0, -2.0, 1.8], [8.0, 8.0, 8.0]]))


def test_ldam_drw_switches_to_class_balanced_weights_after_the_given_fraction() -> None:
    assert [drw_active(k, 10, 0.8) for k in (0, 7, 8, 9)] == [False, False, True, True]
    assert not any(drw_active(k, 10, 1.0) for k in range(10))  # drw_start 1: never (SubpopBench's plain LDAM)
    assert [drw_active(k, 10, 0.25) for k in (2, 3)] == [False, True]  # from update ceil(2.5) = 3 on
    _, algo = _algo("ldam", max_m=0.5, s=2.0, drw_start=0.8)  # total steps 10
    _with_counts(algo, {"y": [16, 1]})  # margins: 0.25 for class 0, 0.5 for class 1
    z = [[1.0, 0.0], [0.0, 1.0], [0.3, 0.2]]
    batch = _batch(y=[0, 1, 0])
    lm = [_ce([2 * (1.0 - 0.25), 0.0], 0), _ce([0.0, 2 * (1.0 - 0.5)], 1), _ce([2 * (0.3 - 0.25), 0.4], 0)]
    algo.updates = 7
    assert float(algo.aggregate(algo.task_losses(_out(y=z), batch), batch)) == pytest.approx(sum(lm) / 3, rel=1e-6)
    algo.updates = 8
    # beta 0.9999: raw (1e-4 / (1 - 0.9999^16), 1e-4 / 1e-4), rescaled to sum 2
    raw = [1e-4 / (1 - 0.9999 ** 16), 1.0]
    w = [2 * r / sum(raw) for r in raw]
    expected = (w[0] * lm[0] + w[1] * lm[1] + w[0] * lm[2]) / (w[0] + w[1] + w[0])  # as cross_entropy(weight=w)
    assert float(algo.aggregate(algo.task_losses(_out(y=z), batch), batch)) == pytest.approx(expected, rel=1e-5)


def test_ldam_drw_with_a_missing_label_reduces_over_the_labelled_rows() -> None:
    _, algo = _algo("ldam", tasks=2, max_m=0.5, s=1.0, drw_start=0.1)
    _with_counts(algo, {"y": [16, 1], "a": [1, 1]})
    algo.updates = 5
    z = [[1.0, 0.0], [0.0, 1.0], [0.3, 0.2]]
    batch = _batch(y=[0, 1, -1], a=[0, 1, 1])
    lm = [_ce([1.0 - 0.25, 0.0], 0), _ce([0.0, 1.0 - 0.5], 1)]
    raw = [1e-4 / (1 - 0.9999 ** 16), 1.0]
    w = [2 * r / sum(raw) for r in raw]
    la = [_ce([1.0 - 0.5, 0.0], 0), _ce([0.0, 1.0 - 0.5], 1), _ce([0.3, 0.2 - 0.5], 1)]  # equal counts, weights 1
    # task y: weighted mean over its 2 labelled rows times their share 2/3 of the batch; task a: the plain mean
    expected = 2 / 3 * (w[0] * lm[0] + w[1] * lm[1]) / (w[0] + w[1]) + sum(la) / 3
    loss = algo.aggregate(algo.task_losses(_out(y=z, a=z), batch), batch)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_ldam_counts_its_updates_and_checkpoints_them() -> None:
    setup, algo = _algo("ldam")
    algo.setup(setup.train)
    for i in range(3):
        algo.update(setup.train.batch(torch.arange(16 * i, 16 * i + 16)))
    state = _roundtrip(algo.extra_state())
    assert state == {"class_counts": {"y": [32, 32]}, "updates": 3}
    _, fresh = _algo("ldam")
    fresh.load_extra_state(state)
    assert fresh.updates == 3 and fresh.class_counts == {"y": [32, 32]}


# -- balanced softmax -------------------------------------------------------------------------
def test_balanced_softmax_adds_the_log_class_prior_in_training_only() -> None:
    assert log_prior(torch.tensor([3.0, 1.0])).tolist() == pytest.approx([math.log(0.75), math.log(0.25)])
    setup, algo = _algo("bsoftmax")
    _with_counts(algo, {"y": [3, 1]})
    z = [[0.0, 0.0], [2.0, -1.0]]
    losses = algo.task_losses(_out(y=z), _batch(y=[1, 0]))
    # softmax(0 + log .75, 0 + log .25) gives class 1 probability 0.25: CE = log 4
    assert losses.tolist() == pytest.approx([math.log(4.0), _ce([2.0 + math.log(0.75), -1.0 + math.log(0.25)], 0)],
                                            rel=1e-5)
    assert losses.tolist() == pytest.approx(  # = CE of the logits plus the log prior
        F.cross_entropy(torch.tensor(z) + torch.tensor([math.log(0.75), math.log(0.25)]), torch.tensor([1, 0]),
                        reduction="none").tolist(), rel=1e-6)
    x = setup.splits["val"].inputs(slice(0, 8))
    with torch.no_grad():
        raw = algo.model(x).logits["y"]
    assert torch.equal(algo.predict(x)["y"], raw)  # prediction: the raw logits, no prior


def test_balanced_softmax_with_a_class_absent_from_training_stays_finite() -> None:
    _, algo = _algo("bsoftmax")
    _with_counts(algo, {"y": [5, 0]})  # log prior (0, -inf): class 1 is never a training target
    z = torch.tensor([[0.3, 2.0], [1.0, 1.0]], requires_grad=True)
    loss = algo.task_losses(Outputs(torch.zeros(2, 3), logits={"y": z}), _batch(y=[0, 0])).mean()
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-7) and bool(torch.isfinite(z.grad).all())


# -- sqrt reweighting ---------------------------------------------------------------------------
def test_sqrt_weights_by_hand() -> None:
    # n = (4, 1, 16): 1/sqrt(n) = (1/2, 1, 1/4), sum 1.75, rescaled to sum 3: (6/7, 12/7, 3/7)
    w = sqrt_inverse_weights(torch.tensor([4.0, 1.0, 16.0]))
    assert w.tolist() == pytest.approx([6 / 7, 12 / 7, 3 / 7], rel=1e-6)
    assert sqrt_inverse_weights(torch.tensor([9.0, 0.0])).tolist() == pytest.approx([2.0, 0.0])


def test_sqrt_reweight_loss_and_its_tasks() -> None:
    _, algo = _algo("sqrt_reweight", tasks=2)
    _with_counts(algo, {"y": [4, 1], "a": [9, 9]})  # y: (1/2, 1) -> (2/3, 4/3); a: equal, 1 each
    z = [[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]
    batch = _batch(y=[0, 1, 1], a=[1, -1, 0])
    losses = algo.task_losses(_out(y=z, a=z), batch)
    assert losses.tolist() == pytest.approx([2 / 3 * _ce(z[0], 0) + _ce(z[0], 1), 4 / 3 * _ce(z[1], 1),
                                             4 / 3 * _ce(z[2], 1) + _ce(z[2], 0)], rel=1e-6)


# -- counts -------------------------------------------------------------------------------------
def test_counts_come_from_training_labels_per_task_and_survive_a_checkpoint() -> None:
    y = {"y": torch.tensor([0, 0, 1, 2, 0]), "a": torch.tensor([1, -1, 1, 0, -1])}
    assert count_classes(y, {"y": 3, "a": 2}) == {"y": [3, 1, 1], "a": [1, 2]}
    setup, algo = _algo("cb_loss", tasks=2)
    assert algo.sampler_weights(setup.train) is None  # counts (also on resume, where setup is not called)
    assert algo.class_counts == count_classes(setup.train.y, setup.info.tasks)
    _, fresh = _algo("cb_loss", tasks=2)
    fresh.load_extra_state(_roundtrip(algo.extra_state()))
    assert fresh.class_counts == algo.class_counts
    assert torch.equal(fresh.counts("a"), algo.counts("a"))
    with pytest.raises(RuntimeError, match="class counts unknown"):
        _algo("cb_loss")[1].counts("y")


@pytest.mark.parametrize("name", NEW)
def test_no_group_labels(name: str) -> None:
    cls = ALGORITHMS.get(name)
    assert not (cls.uses_train_groups or cls.uses_val_groups or cls.uses_environments)


# -- conformance --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NEW)
def test_conformance_with_two_tasks(name: str) -> None:
    check_algorithm(name, tasks=2)


def test_conformance_with_an_auxiliary_objective() -> None:
    check_algorithm("ldam", aux=("recon",))


# -- end to end ---------------------------------------------------------------------------------
def test_one_epoch_runs_on_synthetic(tmp_path: Path) -> None:
    for name in NEW:
        res = run(RunSpec("synthetic", name, threads=1, overrides=("train.epochs=1",)), tmp_path / name)
        final = json.loads((res.out_dir / "final.json").read_text())
        assert final["epochs_run"] == 1
        flags = json.loads((res.out_dir / "config.json").read_text())["algorithm_flags"]
        assert flags["uses_train_groups"] is False
        rec = read_jsonl(res.out_dir / "metrics.jsonl")[-1]
        assert math.isfinite(rec["train/loss"]) and "test/worst_group_acc" in rec


def test_ldam_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    # DRW starts in the middle of the second epoch: a resumed run must know how many updates were done.
    spec = RunSpec("synthetic", "ldam", threads=1, overrides=("train.epochs=2", "algorithm.drw_start=0.75"))
    whole = run(spec, tmp_path / "whole").out_dir
    with pytest.raises(_Stop):
        run(spec, tmp_path / "cut", reporter=_StopAfterFirstEpoch())
    extra = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["extra"]
    steps = extra["updates"]
    assert steps > 0 and sum(extra["class_counts"]["y"]) > 0
    resumed = run(spec, tmp_path / "cut")
    assert resumed.resumed_from_epoch == 0
    assert _records(tmp_path / "cut") == _records(whole)
    final = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["extra"]
    assert final["updates"] == 2 * steps and not drw_active(steps, 2 * steps, 0.75)
    assert drw_active(2 * steps - 1, 2 * steps, 0.75)  # the second epoch ran both phases
