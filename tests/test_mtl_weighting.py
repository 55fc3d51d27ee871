"""LibMTL's loss weightings (uw, dwa, gradnorm, mgda, cagrad, imtl, rlw, nash_mtl): hand computations, updates,
resume, bad inputs, short runs."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from scipy.optimize import minimize

from robustbench_mtl.algorithms._surgery import flat_grad
from robustbench_mtl.algorithms.cagrad import cagrad_direction, cagrad_weights
from robustbench_mtl.algorithms.dwa import dwa_weights
from robustbench_mtl.algorithms.gradnorm import gradnorm_loss, gradnorm_targets
from robustbench_mtl.algorithms.imtl import imtl_weights
from robustbench_mtl.algorithms.mgda import min_norm_weights
from robustbench_mtl.algorithms.nash_mtl import NashSolver, clip_norm
from robustbench_mtl.algorithms.rlw import random_weights
from robustbench_mtl.algorithms.uw import uncertainty_loss
from robustbench_mtl.cli import main
from robustbench_mtl.config import RunSpec, resolve
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.registry import DATASETS
from robustbench_mtl.results import read_jsonl
from robustbench_mtl.runner import run
from robustbench_mtl.testing import check_algorithm
from test_mtl_algorithms import _algo, _one_line, _records, _Stop, _StopAfterFirstEpoch, _TwoTasks

LOSS_BASED = ("uw", "dwa", "rlw")
GRADIENT_BASED = ("gradnorm", "mgda", "cagrad", "imtl", "nash_mtl")
ALL = (*LOSS_BASED, *GRADIENT_BASED)
SGD1 = {"optimizer": "sgd", "lr": 1.0, "momentum": 0.0}  # a parameter moves by exactly minus its gradient


@pytest.fixture
def two_tasks(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(DATASETS._items, "_two_tasks", _TwoTasks)
    return "_two_tasks"


def _hand_risks(algo: Any, batch: Any) -> torch.Tensor:
    """R_y, R_a of the model as it is: plain mean cross-entropies (the kit's data has no missing labels)."""
    out = algo.model(batch.x)
    return torch.stack([F.cross_entropy(out.logits[t], batch.y[t]) for t in ("y", "a")])


# -- UW -------------------------------------------------------------------------------------
def test_uw_loss_by_hand() -> None:
    losses, s = torch.tensor([0.8, 2.0]), torch.tensor([0.0, math.log(2.0)])
    # (e^0 0.8 + 0) / 2 + (2.0 / 2 + ln 2) / 2 = 0.4 + 0.5 + 0.34657
    assert uncertainty_loss(losses, s).item() == pytest.approx(0.4 + 0.5 + 0.5 * math.log(2.0), rel=1e-6)
    s = s.clone().requires_grad_(True)
    uncertainty_loss(losses, s).backward()  # d/ds_t = (1 - e^{-s_t} R_t) / 2: zero where s_t = log R_t
    assert s.grad.tolist() == pytest.approx([0.5 * (1 - 0.8), 0.0], abs=1e-6)


def test_uw_update_steps_the_log_variances_and_reports_the_weights() -> None:
    setup, algo = _algo("uw", train=SGD1)
    assert algo.log_vars.tolist() == [-0.5, -0.5]  # LibMTL's start
    batch = setup.train.batch(torch.arange(16))
    risks = _hand_risks(algo, batch)
    out = algo.update(batch)
    hand = sum(0.5 * (math.exp(0.5) * r - 0.5) for r in risks.tolist())
    assert out["loss_task"] == pytest.approx(hand, rel=1e-5)
    assert out["weight_y"] == out["weight_a"] == pytest.approx(0.5 * math.exp(0.5), rel=1e-6)
    # SGD, lr 1: s_t moves by -(1 - e^{0.5} R_t) / 2
    expected = [-0.5 - 0.5 * (1 - math.exp(0.5) * r) for r in risks.tolist()]
    assert algo.log_vars.tolist() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name, param", [("uw", "log_vars"), ("gradnorm", "theta")])
def test_learnable_weights_have_no_weight_decay(name: str, param: str) -> None:
    _, algo = _algo(name, train={"weight_decay": 0.1, "no_decay": "bias_norm"})
    groups = algo.optimizer.param_groups
    own = [g for g in groups if any(p is getattr(algo, param) for p in g["params"])]
    assert len(own) == 1 and own[0]["weight_decay"] == 0.0 and len(own[0]["params"]) == 1
    assert sum(len(g["params"]) for g in groups) == len(list(algo.optimized_parameters()))


# -- DWA ------------------------------------------------------------------------------------
def test_dwa_weights_by_hand() -> None:
    assert dwa_weights([], 2.0, 2).tolist() == [1.0, 1.0]
    assert dwa_weights([[1.0, 2.0]], 2.0, 2).tolist() == [1.0, 1.0]  # two epochs are needed
    # r = (0.5 / 1.0, 1.8 / 2.0) = (0.5, 0.9); w = 2 softmax(r / 2) = 2 (e^0.25, e^0.45) / (e^0.25 + e^0.45)
    z = math.exp(0.25) + math.exp(0.45)
    hand = [2 * math.exp(0.25) / z, 2 * math.exp(0.45) / z]
    assert dwa_weights([[1.0, 2.0], [0.5, 1.8]], 2.0, 2).tolist() == pytest.approx(hand, rel=1e-6)
    assert dwa_weights([[9.0, 9.0], [1.0, 2.0], [0.5, 1.8]], 2.0, 2).tolist() == pytest.approx(hand, rel=1e-6)
    # three tasks, temperature 1: r = (1, 1, 0.5) -> 3 (e, e, e^0.5) / (2e + e^0.5)
    z = 2 * math.e + math.exp(0.5)
    assert dwa_weights([[2.0, 1.0, 4.0], [2.0, 1.0, 2.0]], 1.0, 3).tolist() == pytest.approx(
        [3 * math.e / z, 3 * math.e / z, 3 * math.exp(0.5) / z], rel=1e-6)


def test_dwa_averages_each_epochs_losses_and_weighs_from_the_third_epoch() -> None:
    setup, algo = _algo("dwa", train={"epochs": 5})  # 10 steps over 5 epochs: 2 updates an epoch
    seen = []
    for i in range(4):
        batch = setup.train.batch(torch.arange(16 * i, 16 * i + 16))
        seen.append(_hand_risks(algo, batch).detach())
        out = algo.update(batch)
        assert (out["weight_y"], out["weight_a"]) == (1.0, 1.0)  # epochs 0 and 1: ERM's weights
        assert out["loss_task"] == pytest.approx(float(seen[-1].sum()), rel=1e-5)
    epoch0, epoch1 = ((seen[0] + seen[1]) / 2).tolist(), ((seen[2] + seen[3]) / 2).tolist()
    assert algo.history == [pytest.approx(epoch0, rel=1e-5), pytest.approx(epoch1, rel=1e-5)]
    r = [epoch1[t] / epoch0[t] for t in range(2)]
    z = math.exp(r[0] / 2) + math.exp(r[1] / 2)
    out = algo.update(setup.train.batch(torch.arange(16)))
    assert (out["weight_y"], out["weight_a"]) == pytest.approx((2 * math.exp(r[0] / 2) / z, 2 * math.exp(r[1] / 2) / z),
                                                               rel=1e-5)
    assert algo.epoch_steps == 1 and len(algo.history) == 2


# -- RLW ------------------------------------------------------------------------------------
def test_rlw_weights_are_a_softmax_of_normal_draws_summing_to_one() -> None:
    z = torch.randn(3, generator=torch.Generator().manual_seed(5)).tolist()
    hand = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
    w = random_weights(3, torch.Generator().manual_seed(5))
    assert w.tolist() == pytest.approx(hand, rel=1e-6) and float(w.sum()) == pytest.approx(1.0)
    draws = torch.stack([random_weights(4) for _ in range(50)])
    assert bool((draws > 0).all()) and torch.allclose(draws.sum(1), torch.ones(50))
    assert len({tuple(d.tolist()) for d in draws}) == 50  # fresh every call


def test_rlw_update_uses_the_global_generator() -> None:
    setup, algo = _algo("rlw")
    batch = setup.train.batch(torch.arange(16))
    risks = _hand_risks(algo, batch)
    torch.manual_seed(11)
    w = torch.softmax(torch.randn(2), 0).tolist()
    torch.manual_seed(11)
    out = algo.update(batch)
    assert (out["weight_y"], out["weight_a"]) == pytest.approx(tuple(w), rel=1e-6)
    assert out["loss_task"] == pytest.approx(w[0] * risks[0].item() + w[1] * risks[1].item(), rel=1e-5)


@pytest.mark.parametrize("name", LOSS_BASED)
def test_loss_weightings_give_every_parameter_the_weighted_gradient(name: str) -> None:
    setup, algo = _algo(name, train=SGD1)
    _, twin = _algo(name, train=SGD1)  # the same seed: the same initial weights, never stepped
    batch = setup.train.batch(torch.arange(16))
    torch.manual_seed(4)
    out = algo.update(batch)
    w = torch.tensor([out["weight_y"], out["weight_a"]])
    risks = _hand_risks(twin, batch)
    params = list(twin.model.parameters())
    grads = torch.autograd.grad((w * risks).sum(), params)  # heads and backbone alike: the weighted sum's gradient
    for after, b, g in zip(algo.model.parameters(), params, grads):
        assert torch.allclose(b.detach() - after.detach(), g, atol=1e-6)


# -- GradNorm -------------------------------------------------------------------------------
def test_gradnorm_targets_and_loss_by_hand() -> None:
    norms, losses, initial = torch.tensor([1.0, 3.0]), torch.tensor([0.5, 0.9]), torch.tensor([1.0, 1.0])
    # L~ = (0.5, 0.9), mean 0.7, r = (5/7, 9/7); alpha 1: target = mean G (2) * r = (10/7, 18/7)
    assert gradnorm_targets(norms, losses, initial, 1.0).tolist() == pytest.approx([10 / 7, 18 / 7], rel=1e-6)
    # alpha 0: every target is the mean norm
    assert gradnorm_targets(norms, losses, initial, 0.0).tolist() == pytest.approx([2.0, 2.0], rel=1e-6)
    # L~ relative to the initial losses: (0.5 / 0.5, 0.9 / 1.8) = (1, 0.5), r = (4/3, 2/3), alpha 2: 2 (16/9, 4/9)
    assert gradnorm_targets(norms, losses, torch.tensor([0.5, 1.8]), 2.0).tolist() == pytest.approx(
        [32 / 9, 8 / 9], rel=1e-6)
    w = torch.ones(2, requires_grad=True)
    loss = gradnorm_loss(w, norms, losses, initial, 1.0)
    assert loss.item() == pytest.approx(3 / 7 + 3 / 7, rel=1e-6)  # |1 - 10/7| + |3 - 18/7|
    loss.backward()  # the targets are constants: dL/dw_t = sign(G_t - target_t) |g_t|
    assert w.grad.tolist() == pytest.approx([-1.0, 3.0], rel=1e-6)


def test_gradnorm_update_by_hand() -> None:
    setup, algo = _algo("gradnorm", train=SGD1, alpha=1.5)
    batch = setup.train.batch(torch.arange(16))
    risks = _hand_risks(algo, batch)
    grads = torch.stack([flat_grad(r, algo.shared) for r in risks])
    n1, n2 = grads.norm(dim=1).tolist()
    before = [p.detach().clone() for p in algo.shared]
    out = algo.update(batch)
    assert (out["weight_y"], out["weight_a"]) == (1.0, 1.0)  # T softmax(0)
    assert algo.initial_losses.tolist() == pytest.approx(risks.tolist(), rel=1e-6)  # R_t(0): the first update's
    # First step: r = 1, target = mean G, L_grad = |n1 - m| + |n2 - m|; with w = 2 softmax(theta) at theta = 0,
    # dL/dtheta_j = dL/dw_j - mean_t dL/dw_t, dL/dw = sign(n - m) n; SGD lr 1 moves theta by minus that.
    dl_dw = [math.copysign(n1, n1 - n2), math.copysign(n2, n2 - n1)]
    hand = [-(dl_dw[0] - sum(dl_dw) / 2), -(dl_dw[1] - sum(dl_dw) / 2)]
    assert algo.theta.tolist() == pytest.approx(hand, rel=1e-5)
    assert (algo.theta[0] > 0) == (n1 < n2)  # the task with the smaller gradient gains weight
    moved = torch.cat([(b - p.detach()).reshape(-1) for b, p in zip(before, algo.shared)])
    assert torch.allclose(moved, grads.sum(0), atol=1e-5)  # w = (1, 1) before the step
    w = (2 * torch.softmax(algo.theta.detach(), 0)).tolist()
    out = algo.update(batch)  # the second step weighs with the stepped theta
    assert (out["weight_y"], out["weight_a"]) == pytest.approx(tuple(w), rel=1e-6) and sum(w) == pytest.approx(2.0)


# -- MGDA -----------------------------------------------------------------------------------
def test_mgda_two_task_closed_form_by_hand() -> None:
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    # alpha_1 = ((g2 - g1) . g2) / |g1 - g2|^2 = ((-2, 1) . (-1, 1)) / |(2, -1)|^2 = 3 / 5
    assert min_norm_weights(g @ g.T).tolist() == pytest.approx([0.6, 0.4], rel=1e-6)
    assert (torch.tensor([0.6, 0.4]) @ g).tolist() == pytest.approx([0.2, 0.4])  # orthogonal to g1 - g2
    g = torch.tensor([[1.0, 0.0], [2.0, 0.0]])  # ((1, 0) . (2, 0)) / 1 = 2, clipped to 1: g1 itself
    assert min_norm_weights(g @ g.T).tolist() == [1.0, 0.0]
    g = torch.tensor([[3.0, 1.0], [3.0, 1.0]])  # equal gradients: any split; 1/2 each
    assert min_norm_weights(g @ g.T).tolist() == [0.5, 0.5]


def test_mgda_frank_wolfe_finds_the_min_norm_point() -> None:
    assert min_norm_weights(torch.eye(3)).tolist() == pytest.approx([1 / 3] * 3, abs=1e-4)  # orthonormal: the centroid
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        g = torch.randn(4, 6, generator=gen).double()
        m = (g @ g.T).numpy()
        res = minimize(lambda a: a @ m @ a, np.full(4, 0.25), method="SLSQP", bounds=[(0, 1)] * 4,
                       constraints=({"type": "eq", "fun": lambda a: a.sum() - 1},), options={"ftol": 1e-12})
        alpha = min_norm_weights(g @ g.T).double()
        assert float(alpha.sum()) == pytest.approx(1.0, abs=1e-6) and bool((alpha >= 0).all())
        assert float(alpha @ (g @ g.T) @ alpha) == pytest.approx(res.fun, rel=1e-6, abs=1e-9)


# -- CAGrad ---------------------------------------------------------------------------------
def test_cagrad_two_dimensional_examples_by_hand() -> None:
    # g1 = (2, 0), g2 = (0, 1): g0 = (1, 0.5), |g0| = sqrt(1.25). Task 2 is the worse off (g2 . g0 = 0.5 < 2), and
    # moving along e2 raises only it, so the best d in the ball |d - g0| <= c |g0| is g0 + c |g0| e2 (dual: w = e2).
    g = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    assert cagrad_weights(g @ g.T, 0.5).tolist() == pytest.approx([0.0, 1.0], abs=1e-5)
    d = [1.0, 0.5 + 0.5 * math.sqrt(1.25)]
    assert cagrad_direction(g, 0.5, rescale=0).tolist() == pytest.approx(d, abs=1e-5)
    assert cagrad_direction(g, 0.5, rescale=1).tolist() == pytest.approx([v / 1.25 for v in d], abs=1e-5)
    assert cagrad_direction(g, 0.5, rescale=2).tolist() == pytest.approx([v / 1.5 for v in d], abs=1e-5)
    # symmetric: g1 = (1, 0), g2 = (0, 1): w = (1/2, 1/2), d = (1 + c) g0; rescaled by 1 + c^2 = 1.25: (0.6, 0.6)
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert cagrad_direction(g, 0.5).tolist() == pytest.approx([0.6, 0.6], abs=1e-5)


def test_cagrad_with_c_zero_is_the_mean_gradient() -> None:
    g = torch.randn(3, 20, generator=torch.Generator().manual_seed(2))
    for rescale in (0, 1, 2):
        assert torch.allclose(cagrad_direction(g, 0.0, rescale), g.mean(0), atol=1e-6)


def test_cagrad_maximises_the_worst_task_within_the_ball() -> None:
    # Two conflicting 2-D gradients; brute force over the ball's boundary (the optimum lies on it for these).
    g = torch.tensor([[1.0, 0.2], [-0.6, 1.0]], dtype=torch.float64)
    c = 0.4
    g0 = g.mean(0)
    theta = torch.linspace(0, 2 * math.pi, 200001, dtype=torch.float64)
    cand = g0 + c * g0.norm() * torch.stack([theta.cos(), theta.sin()], 1)
    best = (cand @ g.T).min(1).values.max()
    d = cagrad_direction(g.float(), c, rescale=0).double()
    assert float(d.sub(g0).norm()) == pytest.approx(c * float(g0.norm()), rel=1e-4)
    assert float((g @ d).min()) == pytest.approx(float(best), abs=1e-5)


# -- IMTL -----------------------------------------------------------------------------------
def test_imtl_two_dimensional_example_by_hand() -> None:
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # u1 = (1, 0), u2 = (0, 1); D = g1 - g2 = (1, -2), U = u1 - u2 = (1, -1): D U' = 3, g1 U' = 1, so alpha_2 = 1/3
    alpha = imtl_weights(g @ g.T)
    assert alpha.tolist() == pytest.approx([2 / 3, 1 / 3], rel=1e-6)
    d = alpha @ g
    assert d.tolist() == pytest.approx([2 / 3, 2 / 3], rel=1e-6)  # projections on u1 and u2: both 2/3


def test_imtl_projections_are_equal_for_three_tasks() -> None:
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        g = torch.randn(3, 10, generator=gen)
        alpha = imtl_weights(g @ g.T)
        proj = F.normalize(g, dim=1) @ (alpha @ g)
        assert float(alpha.sum()) == pytest.approx(1.0, abs=1e-6)
        assert torch.allclose(proj, proj.mean().expand(3), atol=1e-4)
    g = torch.tensor([[1.0, 2.0], [1.0, 2.0]])  # equal gradients: singular, alpha = (1, 0)
    assert imtl_weights(g @ g.T).tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


# -- Nash-MTL -------------------------------------------------------------------------------
def test_nash_weights_by_hand() -> None:
    solver = NashSolver(2)
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # M = diag(1, 4): alpha_1 * 1 * alpha_1 = 1 and alpha_2 * 4 * alpha_2 = 1, so alpha = (1, 1/2); d = (1, 1)
    alpha = solver(g @ g.T)
    assert alpha.tolist() == pytest.approx([1.0, 0.5], rel=1e-4)
    d = alpha.float() @ g
    assert (g @ d).tolist() == pytest.approx([1 / alpha[0].item(), 1 / alpha[1].item()], rel=1e-4)  # 1 / alpha_t
    assert solver(torch.tensor([[1.0, -1.0], [-1.0, 1.0]])) is None  # g2 = -g1: no direction helps both


def test_nash_weights_solve_the_bargaining_equation() -> None:
    solver, gen = NashSolver(3), torch.Generator().manual_seed(4)
    for scale in (1e-3, 1.0, 1e3):
        g = scale * torch.randn(3, 8, generator=gen)
        m = (g @ g.T).double()
        alpha = solver(g @ g.T)
        assert bool((alpha > 0).all())
        assert torch.allclose(alpha * (m @ alpha), torch.ones(3, dtype=torch.float64), atol=1e-3)
        assert float((alpha.float() @ g).norm()) == pytest.approx(math.sqrt(3), rel=1e-2)  # |d|^2 = sum_t 1


def test_nash_clip_and_reuse_of_the_weights() -> None:
    assert clip_norm(torch.tensor([3.0, 4.0]), 1.0).tolist() == pytest.approx([0.6, 0.8], rel=1e-5)
    assert clip_norm(torch.tensor([0.3, 0.4]), 1.0).tolist() == pytest.approx([0.3, 0.4])
    assert clip_norm(torch.tensor([3.0, 4.0]), 0.0).tolist() == [3.0, 4.0]
    setup, algo = _algo("nash_mtl", update_weights_every=2)
    first = None
    for i in range(3):
        algo.update(setup.train.batch(torch.arange(16 * i, 16 * i + 16)))
        if i == 0:
            first = algo.alpha.clone()
            assert not torch.equal(first, torch.ones(2))
        if i == 1:
            assert torch.equal(algo.alpha, first)  # step 1 reuses step 0's weights
    assert algo.updates == 3 and not torch.equal(algo.alpha, first)


def test_nash_keeps_the_last_weights_where_no_solution_exists() -> None:
    _, algo = _algo("nash_mtl", max_norm=0.0)
    algo.alpha = torch.tensor([0.3, 0.7])
    g = torch.tensor([[1.0, 2.0, 0.0], [-1.0, -2.0, 0.0]])
    assert torch.allclose(algo.combine(g), torch.tensor([0.3, 0.7]) @ g)


def test_nash_without_cvxpy_is_one_line(two_tasks: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "cvxpy", None)  # import cvxpy now raises ImportError
    with pytest.raises(ConfigError) as exc:
        run(RunSpec(two_tasks, "nash_mtl"), tmp_path / "r")
    assert _one_line(exc) == 'nash_mtl needs cvxpy, an optional extra: pip install "robustbench-mtl[nash]"'
    assert not (tmp_path / "r").exists()


# -- the gradient-based updates -------------------------------------------------------------
def _rule(name: str, grads: torch.Tensor, hparams: Any) -> torch.Tensor:
    if name == "mgda":
        return min_norm_weights(grads @ grads.T) @ grads
    if name == "cagrad":
        return cagrad_direction(grads, hparams.c, hparams.rescale)
    if name == "imtl":
        return imtl_weights(grads @ grads.T) @ grads
    if name == "nash_mtl":
        return clip_norm(NashSolver(2)(grads @ grads.T).float() @ grads, hparams.max_norm)
    return grads.sum(0)  # gradnorm's first step: w = (1, 1)


@pytest.mark.parametrize("name", GRADIENT_BASED)
def test_gradient_weightings_move_the_backbone_by_their_rule_and_heads_by_their_own_gradient(name: str) -> None:
    setup, algo = _algo(name, train=SGD1, seed=2)
    batch = setup.train.batch(torch.arange(16))
    risks = _hand_risks(algo, batch)
    grads = torch.stack([flat_grad(r, algo.shared) for r in risks])
    assert grads[0] @ grads[1] < 0  # the tasks conflict: every rule acts
    heads = [p for h in algo.model.heads.values() for p in h.parameters()]
    head_grads = torch.autograd.grad(risks.sum(), heads)
    expected = _rule(name, grads, algo.hparams)
    before, heads_before = [p.detach().clone() for p in algo.shared], [p.detach().clone() for p in heads]
    algo.update(batch)
    moved = torch.cat([(b - p.detach()).reshape(-1) for b, p in zip(before, algo.shared)])
    assert torch.allclose(moved, expected, atol=1e-5)
    for b, p, g in zip(heads_before, heads, head_grads):
        assert torch.allclose(b - p.detach(), g, atol=1e-6)


# -- checkpoints: a resumed run equals an uninterrupted one ---------------------------------
@pytest.mark.parametrize("name, overrides, key", [
    ("dwa", ("train.epochs=3",), "history"), ("gradnorm", (), "initial_losses"),
    ("nash_mtl", ("algorithm.update_weights_every=3",), "alpha"), ("uw", (), None)])
def test_resume_matches_an_uninterrupted_run(name: str, overrides: tuple[str, ...], key: str | None,
                                             two_tasks: str, tmp_path: Path) -> None:
    spec = RunSpec(two_tasks, name, overrides=overrides)
    whole = run(spec, tmp_path / "whole").out_dir
    with pytest.raises(_Stop):
        run(spec, tmp_path / "cut", reporter=_StopAfterFirstEpoch())
    extra = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["extra"]
    if key is not None:
        assert len(extra[key]) > 0
    resumed = run(spec, tmp_path / "cut")
    assert resumed.resumed_from_epoch == 0
    assert _records(tmp_path / "cut") == _records(whole)


# -- conformance with an auxiliary objective ------------------------------------------------
@pytest.mark.parametrize("name", ["uw", "gradnorm", "nash_mtl"])
def test_conformance_with_an_auxiliary_objective(name: str) -> None:
    check_algorithm(name, aux=("recon",), tasks=2)


# -- bad inputs -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_a_one_task_dataset_is_one_line(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        run(RunSpec("synthetic", name), tmp_path / "r")
    assert _one_line(exc).startswith(f"{name} needs a dataset with at least 2 tasks; dataset 'synthetic' has 1 (y)")
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError):
        resolve(RunSpec("synthetic", name))


# -- end to end -----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_one_epoch_on_multidigits(name: str, tmp_path: Path) -> None:
    out = tmp_path / name
    res = CliRunner().invoke(main, ["run", "--algo", name, "--data", "multidigits", "--set", "train.epochs=1",
                                    "--set", "data.n_train=300", "--set", "data.n_val=200", "--set", "data.n_test=300",
                                    "--device", "cpu", "--threads", "1", "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "final.json").read_text())["epochs_run"] == 1
    rec = read_jsonl(out / "metrics.jsonl")[-1]
    assert math.isfinite(rec["train/loss"]) and {"val/avg_acc/left", "test/worst_group_acc/right"} <= set(rec)
    if name in (*LOSS_BASED, "gradnorm"):
        assert {"train/weight_left", "train/weight_right"} <= set(rec)
