"""JTT, IRM, V-REx and DFR: hand-computed quantities, conformance, resume, and short synthetic runs."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import numpy as np

from robustbench_mtl.algorithms import dfr as dfr_module
from robustbench_mtl.algorithms.dfr import balanced_resamples, split_halves
from robustbench_mtl.algorithms.irm import irm_terms
from robustbench_mtl.algorithms.jtt import JTT
from robustbench_mtl.algorithms.vrex import vrex_terms
from robustbench_mtl.config import RunSpec, TrainHParams
from robustbench_mtl.results import read_jsonl
from robustbench_mtl.runner import Reporter, run
from robustbench_mtl.testing import _Setup, check_algorithm
from test_mtl_algorithms import _records, _Stop, _StopAfterFirstEpoch

NEW = ("jtt", "irm", "vrex", "dfr", "br_dro")
SHORT = ("train.epochs=2",)


def _algo(name: str, **hparams: Any) -> tuple[_Setup, Any]:
    setup = _Setup(name, (), "mlp", "tabular")
    setup.train_hp = TrainHParams(epochs=1, batch_size=16, eval_batch_size=10, lr=1e-2, patience=0)
    algo = setup.build(seed=0)
    algo.hparams = dataclasses.replace(algo.hparams, **hparams)
    return setup, algo


# -- JTT ------------------------------------------------------------------------------------
def test_jtt_error_set_and_repeats_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    setup, algo = _algo("jtt", lambda_up=6)
    train = setup.train
    train.y["y"][5] = -1  # unlabelled: never in the error set
    # A controlled identification model: class 1 iff the first feature > 0.5 (chunks of 10 rows).
    monkeypatch.setattr(algo, "predict", lambda x: {"y": torch.stack([torch.zeros(len(x)), x[:, 0] - 0.5], 1)})
    hand = [float(i != 5 and int(train.x[i, 0] > 0.5) != int(train.y["y"][i])) for i in range(len(train))]
    error = algo.error_set(train)
    assert error.tolist() == hand and 0 < sum(hand) < len(train)
    algo.error = error
    assert algo.sampler_weights(train) is None
    repeats = algo.sampler_repeats(train)
    assert repeats.tolist() == [6 if e else 1 for e in hand]
    assert int(repeats.sum()) == len(train) + 5 * sum(hand)  # the official upsampled dataset's size


def test_jtt_stage2_epoch_is_the_upsampled_dataset(tmp_path: Path) -> None:
    # Official JTT: stage 2 is a shuffled pass over N + (lambda_up - 1)|E| examples an epoch, each error
    # example lambda_up times, and the LR schedule spans epochs x that many batches.
    seen: list[list[int]] = []
    original = JTT.update

    def spy(self, batch, aux_batch=None):
        seen[-1].extend(batch.idx.tolist())
        return original(self, batch, aux_batch)

    class EpochMarks(Reporter):
        def start(self, epochs, steps, start_epoch):
            seen.append([])

        def epoch_end(self, epoch, record):
            seen.append([])

    spec = RunSpec("synthetic", "jtt", overrides=("train.epochs=2", "algorithm.first_stage_epochs=1",
                                                  "algorithm.lambda_up=5", "train.scheduler=linear"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(JTT, "update", spy)
        out = run(spec, tmp_path / "r", reporter=EpochMarks()).out_dir
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    error = state["extra"]["error"]
    n, n_err = len(error), int(error.sum())
    assert 0 < n_err < n
    for epoch in seen[:2]:  # every example once, each error-set example 5 times, in a shuffled order
        counts = torch.bincount(torch.tensor(epoch), minlength=n)
        assert len(epoch) == n + 4 * n_err and torch.equal(counts, 1 + 4 * error.long())
    assert seen[0] != seen[1] and seen[0] != sorted(seen[0])
    steps = -(-(n + 4 * n_err) // 50)
    recs = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in recs if "phase" not in r] == [steps, 2 * steps]
    assert recs[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # linear decay reaches 0 at epochs x steps


def test_jtt_setup_resets_to_initial_weights() -> None:
    setup, algo = _algo("jtt", first_stage_epochs=1)
    init = {k: v.clone() for k, v in algo.model.state_dict().items()}
    algo.setup(setup.train)
    assert all(torch.equal(init[k], v) for k, v in algo.model.state_dict().items())
    assert algo.error is not None and algo.error.shape == (len(setup.train),)
    assert set(algo.error.unique().tolist()) <= {0.0, 1.0}
    assert not algo.optimizer.state  # a rebuilt optimizer: no stage-1 moments


@pytest.mark.parametrize("name", ["jtt", "dfr"])
def test_resume_keeps_state_and_matches_uninterrupted(name: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = JTT.setup
    monkeypatch.setattr(JTT, "setup", lambda self, train: (calls.append(1), original(self, train))[1])
    spec = RunSpec("synthetic", name, overrides=SHORT)
    whole = run(spec, tmp_path / "whole")
    with pytest.raises(_Stop):
        run(spec, tmp_path / "cut", reporter=_StopAfterFirstEpoch())
    resumed = run(spec, tmp_path / "cut")
    assert resumed.resumed_from_epoch == 0
    assert calls == ([1, 1] if name == "jtt" else [])  # stage 1 ran in the two fresh starts, not on resume
    assert _records(tmp_path / "cut") == _records(whole.out_dir)


# -- IRM and V-REx --------------------------------------------------------------------------
def test_irm_penalty_by_hand() -> None:
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -1.0], [-1.0, 2.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 0])
    e = torch.tensor([0, 0, 0, 1, 1])

    def hand_grad(rows: list[int]) -> float:  # d/dw CE(w z, y) at w = 1 = mean_i z_i . (softmax(z_i) - onehot(y_i))
        zz = z.detach()[rows]
        return float(((zz.softmax(1) - F.one_hot(y[rows], 2)) * zz).sum(1).mean())

    risk, penalty = irm_terms({"y": z}, {"y": y}, e)
    hand_risk = (F.cross_entropy(z[:3], y[:3]) + F.cross_entropy(z[3:], y[3:])) / 2
    assert risk.item() == pytest.approx(hand_risk.item(), rel=1e-6)
    assert penalty.item() == pytest.approx((hand_grad([0, 1, 2]) ** 2 + hand_grad([3, 4]) ** 2) / 2, rel=1e-5)
    penalty.backward()  # create_graph: the penalty itself is differentiable wrt the logits
    assert z.grad is not None and bool(z.grad.abs().sum() > 0)


def test_irm_anneal_rescale_and_optimizer_reset() -> None:
    setup, algo = _algo("irm", penalty_weight=100.0, anneal_steps=2)
    batch = setup.train.batch(torch.arange(16))
    for _ in range(2):
        algo.update(batch)
    assert algo.penalty_lambda() == 100.0 and algo.optimizer.state
    total, parts = algo.compute_loss(batch, None)
    assert total.item() == pytest.approx((parts["loss_task"] + 100 * parts["irm_penalty"]).item() / 100, rel=1e-5)
    algo.update(batch)  # the anneal step: Adam's moments restart, so its step count is 1 again
    assert all(int(s["step"]) == 1 for s in algo.optimizer.state.values())
    assert algo.extra_state() == {"updates": 3}


def test_vrex_variance_by_hand() -> None:
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 9.0])
    mean, var = vrex_terms(losses, torch.tensor([0, 0, 1, 1, 2]))
    risks = [1.5, 3.5, 9.0]  # per-environment means
    hand_mean = sum(risks) / 3
    assert mean.item() == pytest.approx(hand_mean)
    assert var.item() == pytest.approx(sum((r - hand_mean) ** 2 for r in risks) / 3)
    assert vrex_terms(losses, torch.zeros(5, dtype=torch.long))[1].item() == 0.0  # one env: V-REx is ERM


# -- DFR ------------------------------------------------------------------------------------
def test_dfr_halves_and_balanced_resamples() -> None:
    g = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
    retrain, held = split_halves(g, seed=0)
    assert sorted(retrain.tolist() + held.tolist()) == list(range(20))
    assert torch.bincount(g[retrain]).tolist() == [5, 2, 4] and torch.bincount(g[held]).tolist() == [5, 1, 3]
    assert torch.equal(split_halves(g, 0)[0], retrain)
    draws = balanced_resamples(g, 4, seed=1)
    assert len(draws) == 4 and all(torch.bincount(g[d]).tolist() == [3, 3, 3] for d in draws)
    assert all(len(d.unique()) == 9 for d in draws)  # without replacement
    assert all(torch.equal(a, b) for a, b in zip(draws, balanced_resamples(g, 4, seed=1)))
    assert any(not torch.equal(a, b) for a, b in zip(draws, balanced_resamples(g, 4, seed=2)))


def _dfr_with_spies(monkeypatch: pytest.MonkeyPatch, **hparams: Any) -> tuple[_Setup, Any, list, list]:
    """DFR on the tiny data with every regression fit and the val evaluation recorded."""
    setup, algo = _algo("dfr", **hparams)
    algo.train_split = setup.train
    fits: list[dict[str, Any]] = []
    evaluated: list[dict[str, Any]] = []
    original = dfr_module.fit_logits

    def fit_spy(reg, C, z, y, n_classes, seed):
        fits.append({"C": C, "z": z, "y": y})
        return original(reg, C, z, y, n_classes, seed)

    def evaluate_spy(split):
        evaluated.append({"x": split.x.clone(), "head": algo.model.heads["y"].weight.detach().clone()})
        return {"val/avg_acc": 0.5}

    monkeypatch.setattr(dfr_module, "fit_logits", fit_spy)
    algo.split_evaluator = evaluate_spy
    return setup, algo, fits, evaluated


def test_dfr_tunes_on_half_and_refits_on_all_of_val(monkeypatch: pytest.MonkeyPatch) -> None:
    setup, algo, fits, evaluated = _dfr_with_spies(monkeypatch, n_resamples=3, tune_resamples=2)
    val = setup.splits["val"]
    report = algo.after_training(val)
    grid = dfr_module.DFR_C_GRID
    tuning, final = fits[:2 * len(grid)], fits[2 * len(grid):]
    assert [f["C"] for f in tuning] == [c for c in grid for _ in range(2)]  # 2 draws per C, in grid order
    assert len(final) == 3 and len({f["C"] for f in final}) == 1 and report["dfr/C"] == final[0]["C"]
    fit_half, held_half = split_halves(val.g, 0)
    n_min = int(torch.bincount(val.g[fit_half]).min())
    assert all(len(f["y"]) == 4 * n_min for f in tuning)  # group-balanced draws of the fitting half
    assert all(len(f["y"]) == 4 * int(torch.bincount(val.g).min()) for f in final)  # of all of val
    # The reported val metrics come from the held-out half, scored by the tuning fit, not the final fit.
    assert len(evaluated) == 1 and torch.equal(evaluated[0]["x"], val.x[held_half])
    assert not torch.equal(evaluated[0]["head"], algo.model.heads["y"].weight.detach())
    assert report["val/avg_acc"] == 0.5


def test_dfr_final_fit_is_standardized_with_training_features(monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.preprocessing import StandardScaler

    setup, algo, fits, _ = _dfr_with_spies(monkeypatch, n_resamples=1, C=(0.3,))
    val = setup.splits["val"]
    algo.after_training(val)
    scaler = StandardScaler().fit(algo.features(setup.train).double().numpy())  # the official evaluation's
    z_val = scaler.transform(algo.features(val).double().numpy())
    final = fits[-1]["z"]
    rows = [int(np.flatnonzero(np.isclose(z_val, row, atol=1e-5).all(1))[0]) for row in final]
    assert len(set(rows)) == len(rows) == len(final)  # every fitted row is a val row under the train scaler


def test_dfr_l1_fit_is_sparse_and_l2_is_not() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 30, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    g = 2 * y + (torch.rand(400, generator=gen) > 0.5).long()
    draws = balanced_resamples(g, 1, seed=0)
    w1, _ = dfr_module.averaged_head("l1", 0.05, x, y, draws, 2, None, seed=0)
    w2, _ = dfr_module.averaged_head("l2", 0.05, x, y, draws, 2, None, seed=0)
    assert int((w1[1] == 0).sum()) >= 20 and bool(w1[1, 0] > 0)  # most noise features exactly zero
    assert int((w2[1] == 0).sum()) == 0


def test_logistic_regression_spells_the_penalty_for_each_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    import sklearn

    monkeypatch.setattr(sklearn, "__version__", "1.7.2")
    old = dfr_module.logistic_regression("l1", 0.1, False, 0).get_params()
    assert old["penalty"] == "l1"  # < 1.8 ignores l1_ratio unless penalty='elasticnet'
    monkeypatch.setattr(sklearn, "__version__", "1.8.0")
    new = dfr_module.logistic_regression("l1", 0.1, False, 0).get_params()
    assert new["l1_ratio"] == 1.0 and new["penalty"] in ("deprecated", "l2")  # `penalty` left at its default


def test_dfr_retrained_heads_change_predictions() -> None:
    setup, algo = _algo("dfr")
    val = setup.splits["val"]
    before = algo.predict(val.inputs(slice(None)))["y"].argmax(1)
    report = algo.after_training(val)
    assert report["dfr/C"] in dfr_module.DFR_C_GRID
    after = algo.predict(val.inputs(slice(None)))["y"].argmax(1)
    assert not torch.equal(after, before)
    assert (after == val.y["y"]).float().mean() > 0.7  # the tiny data's label feature separates well


# -- BR-DRO (reimplementation) -------------------------------------------------------------
def test_br_dro_adversary_is_checkpointed_and_trained() -> None:
    setup, algo = _algo("br_dro")
    assert any(k.startswith("adversary.") for k in algo.state_dict())  # in checkpoint.pt's "algorithm"
    before = {k: v.clone() for k, v in algo.adversary.state_dict().items()}
    losses = algo.update(setup.train.batch(torch.arange(16)))
    assert 0 < losses["adv_w_mean"] < 1
    assert any(not torch.equal(before[k], v) for k, v in algo.adversary.state_dict().items())
    assert algo.extra_state()["adv_optimizer"]["state"]  # Adam moments travel in extra_state
    assert not set(map(id, algo.adversary.parameters())) & {id(p) for g in algo.optimizer.param_groups
                                                              for p in g["params"]}


# -- conformance and end to end -------------------------------------------------------------
@pytest.mark.parametrize("name", NEW)
def test_check_algorithm(name: str) -> None:
    check_algorithm(name)


@pytest.mark.parametrize("name", ["irm", "vrex", "jtt", "br_dro"])
def test_check_algorithm_with_aux(name: str) -> None:
    check_algorithm(name, aux=("recon",))


@pytest.mark.parametrize("name", NEW)
def test_two_epoch_synthetic_run(name: str, tmp_path: Path) -> None:
    res = run(RunSpec("synthetic", name, overrides=SHORT), tmp_path / name)
    final = json.loads((res.out_dir / "final.json").read_text())
    recs = read_jsonl(res.out_dir / "metrics.jsonl")
    assert final["epochs_run"] == 2
    phases = [r.get("phase") for r in recs]
    if name == "dfr":
        assert phases == [None, None, "after_training"] and recs[-1]["epoch"] == 2
        assert len([k for k in recs[-1] if k.startswith("val/group_acc@")]) == 4
        assert recs[-1]["dfr/C"] in dfr_module.DFR_C_GRID
        for sel in final["selections"].values():  # every protocol reports the retrained model
            assert sel["epoch"] == 2 and sel["phase"] == "after_training"
            assert sel["test"]["worst_group_acc"] == recs[-1]["test/worst_group_acc"]
            assert (res.out_dir / sel["weights"]).exists()
    elif name == "jtt":  # stage-1 epochs are recorded; by default they are never selected
        assert phases == ["setup"] * 2 + [None, None]
        assert all("phase" not in s for s in final["selections"].values())
    else:
        assert phases == [None, None] and all("phase" not in s for s in final["selections"].values())


@pytest.mark.parametrize("phase2_only", [True, False])
def test_jtt_records_stage1_and_selects_by_option(tmp_path, phase2_only: bool) -> None:
    import json

    from robustbench_mtl.config import RunSpec
    from robustbench_mtl.results import read_jsonl
    from robustbench_mtl.runner import run

    spec = RunSpec("synthetic", "jtt", overrides=("train.epochs=3", "algorithm.first_stage_epochs=4",
                                                  f"algorithm.select_phase2_only={phase2_only}"))
    out = run(spec, tmp_path / "r").out_dir
    recs = read_jsonl(out / "metrics.jsonl")
    assert [r.get("phase") for r in recs] == ["setup"] * 4 + [None] * 3
    assert [r["epoch"] for r in recs] == [0, 1, 2, 3, 0, 1, 2]
    final = json.loads((out / "final.json").read_text())
    assert final["epochs_run"] == 3
    chosen = final["selections"]["oracle_worst_group"]
    stage1_best = max(r["test/worst_group_acc"] for r in recs[:4])
    stage2_best = max(r["test/worst_group_acc"] for r in recs[4:])
    if phase2_only:
        assert "phase" not in chosen and chosen["test"]["worst_group_acc"] == stage2_best
    else:
        assert chosen["test"]["worst_group_acc"] == max(stage1_best, stage2_best)


@pytest.mark.parametrize("phase2_only", [True, False])
def test_jtt_option_decides_whether_a_better_stage1_record_can_win(phase2_only: bool) -> None:
    from robustbench_mtl.selection import select_all

    _, algo = _algo("jtt", select_phase2_only=phase2_only)

    from robustbench_mtl.registry import SELECTIONS

    def rec(epoch: int, wg: float, phase: str | None) -> dict[str, Any]:
        # every protocol's metric moves with wg (negated where the protocol minimises): all agree on the best
        r = {"epoch": epoch, **{cls.metric: -wg if cls.minimize else wg for _, cls in SELECTIONS.load_all()},
             "val/worst_group_acc": wg}
        return {**r, "phase": phase} if phase else r

    records = [rec(0, 0.9, "setup"), rec(1, 0.8, "setup"), rec(0, 0.5, None), rec(1, 0.6, None)]
    chosen = select_all(records, 0, selectable=algo.selectable)
    for entry in chosen.values():
        if phase2_only:
            assert "phase" not in entry and entry["epoch"] == 1 and entry["val"]["worst_group_acc"] == 0.6
        else:  # the released mt_l1 code's behaviour: the stage-1 ERM model wins
            assert entry["phase"] == "setup" and entry["epoch"] == 0 and entry["val"]["worst_group_acc"] == 0.9
