"""LfF, CRT / ReWeightCRT / VanillaCRT, AFR and EIIL: hand computations, conformance, resume, bad inputs, short runs."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from robustbench_mtl.algorithms import _crt
from robustbench_mtl.algorithms.afr import AFRHParams, afr_weights, erm_split, fit_head
from robustbench_mtl.algorithms.eiil import infer_environments, scale_gradients, soft_penalty
from robustbench_mtl.algorithms.irm import irm_terms
from robustbench_mtl.algorithms.lff import ema_update, gce_loss, relative_difficulty
from robustbench_mtl.config import RunSpec, TrainHParams, resolve
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.results import read_jsonl
from robustbench_mtl.runner import run
from robustbench_mtl.testing import _Setup, check_algorithm
from test_mtl_algorithms import _records, _Stop, _StopAfterFirstEpoch

NEW = ("lff", "crt", "reweight_crt", "vanilla_crt", "afr", "eiil")
CRTS = ("crt", "reweight_crt", "vanilla_crt")
SHORT = ("train.epochs=2",)


def _algo(name: str, tasks: int = 1, **hparams: Any) -> tuple[_Setup, Any]:
    """`name` with `hparams` on the kit's tiny tabular data (64 examples a split), as the runner builds it."""
    setup = _Setup(name, (), "mlp", "tabular", tasks=tasks)
    setup.train_hp = TrainHParams(epochs=1, batch_size=16, eval_batch_size=10, lr=1e-2, patience=0)
    algo = setup.build(seed=0)
    algo.hparams = dataclasses.replace(algo.hparams, **hparams)
    algo.train_split = setup.train
    return setup, algo


def _backbone_state(algo: Any) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in algo.model.backbone.state_dict().items()}


# -- LfF ------------------------------------------------------------------------------------
def test_gce_value_and_gradient_weight_by_hand() -> None:
    # p_y = 0.25, q = 0.5: GCE = (1 - 0.25^0.5) / 0.5 = 1; its gradient is p_y^q = 0.5 times CE's,
    # and CE's gradient wrt the logits is softmax - onehot = (0.25 - 1, 0.75).
    logits = torch.tensor([[math.log(0.25), math.log(0.75)]], requires_grad=True)
    y = torch.tensor([0])
    value = gce_loss(logits, y, q=0.5)
    assert value.item() == pytest.approx(1.0, rel=1e-6)
    value.sum().backward()
    assert logits.grad.tolist()[0] == pytest.approx([0.5 * -0.75, 0.5 * 0.75], rel=1e-6)
    # q = 1: 1 - p_y; a missing label costs nothing
    two = torch.tensor([[0.0, math.log(3.0)], [1.0, 2.0]])
    assert gce_loss(two, torch.tensor([1, -1]), q=1.0).tolist() == pytest.approx([0.25, 0.0], abs=1e-6)


def test_ema_and_relative_difficulty_by_hand() -> None:
    ema = torch.tensor([0.0, 5.0, 2.0])
    ema_update(ema, torch.tensor([0, 2]), torch.tensor([4.0, 6.0]), torch.tensor([True, False]), alpha=0.7)
    assert ema.tolist() == pytest.approx([4.0, 5.0, 0.7 * 2 + 0.3 * 6])  # first visit: the loss itself
    assert relative_difficulty(torch.tensor([1.0, 3.0, 0.0]), torch.tensor([1.0, 1.0, 2.0])).tolist() == \
        pytest.approx([0.5, 0.75, 0.0], abs=1e-7)


@pytest.mark.parametrize("class_norm, hand", [(False, [2 / 5, 2 / 3]), (True, [1 / 3, 0.4])])
def test_lff_weights_from_ema_losses_by_hand(class_norm: bool, hand: list[float]) -> None:
    _, algo = _algo("lff", ema_alpha=0.5, class_norm=class_norm)
    algo.ema_b, algo.ema_d = torch.tensor([2.0, 4.0, 1.0, 3.0]), torch.tensor([2.0, 1.0, 1.0, 1.0])
    algo.seen, algo.classes = torch.ones(4, dtype=torch.bool), torch.tensor([0, 0, 1, 1])
    w = algo.difficulty(torch.tensor([0, 2]), torch.tensor([2.0, 3.0]), torch.tensor([4.0, 1.0]))
    # EMAs after the step: b = (2, 4, 2, 3), d = (3, 1, 1, 1). Class maxima: b (4, 3), d (3, 1);
    # normalised, example 0: 2/4 and 3/3 -> 0.5 / 1.5; example 2: 2/3 and 1/1 -> (2/3) / (5/3).
    assert algo.ema_b.tolist() == [2.0, 4.0, 2.0, 3.0] and algo.ema_d.tolist() == [3.0, 1.0, 1.0, 1.0]
    assert w.tolist() == pytest.approx(hand, rel=1e-6)


def test_lff_twin_is_independent_trained_and_not_the_predictor() -> None:
    setup, algo = _algo("lff")
    assert any(k.startswith("biased.") for k in algo.state_dict())  # in checkpoint.pt's "algorithm"
    assert not torch.equal(algo.biased.backbone.net[0].weight, algo.model.backbone.net[0].weight)
    algo.setup(setup.train)
    before = {k: v.clone() for k, v in algo.biased.state_dict().items()}
    losses = algo.update(setup.train.batch(torch.arange(16)))
    assert {"loss_task", "loss_gce", "lff_weight"} <= set(losses) and 0 < losses["lff_weight"] < 1
    assert all(not torch.equal(before[k], v) for k, v in algo.biased.state_dict().items())
    assert bool(algo.seen[:16].all()) and not bool(algo.seen[16:].any())
    x = setup.splits["val"].inputs(slice(0, 8))
    assert torch.equal(algo.predict(x)["y"], algo.model(x).logits["y"].detach())


# -- CRT family -----------------------------------------------------------------------------
def test_stage2_loss_weights_by_hand() -> None:
    logits, y = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0, 1])
    ce = [math.log(2), math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1))]
    w = _crt.class_weights(y, 2)
    assert w.tolist() == [0.5, 0.5, 1.0]
    assert _crt.stage2_loss(logits, y, w, "loss").item() == pytest.approx((0.5 * ce[0] + 0.5 * ce[1] + ce[2]) / 2)
    assert _crt.stage2_loss(logits, y, w, "sampling").item() == pytest.approx(sum(ce) / 3)


def _imbalanced(setup: _Setup) -> None:
    """48 examples of class 1 and 16 of class 0 in the tiny training split."""
    setup.train.y["y"][:] = (torch.arange(len(setup.train)) % 4 != 0).long()


@pytest.mark.parametrize("name", CRTS)
def test_crt_stage2_freezes_the_backbone_and_balances_as_declared(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    setup, algo = _algo(name, retrain_epochs=20)
    _imbalanced(setup)
    seen: list[torch.Tensor] = []
    original = _crt.stage2_loss

    def spy(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, balance: str) -> torch.Tensor:
        seen.append(y.clone())
        return original(logits, y, weights, balance)

    monkeypatch.setattr(_crt, "stage2_loss", spy)
    backbone, head = _backbone_state(algo), algo.model.heads["y"].weight.detach().clone()
    assert algo.after_training(setup.splits["val"]) is True
    assert all(torch.equal(backbone[k], v) for k, v in algo.model.backbone.state_dict().items())
    assert not torch.equal(head, algo.model.heads["y"].weight)
    counts = torch.bincount(torch.cat(seen), minlength=2).tolist()
    assert sum(counts) == 20 * 64 and len(seen) == 20 * 4  # 20 epochs of 4 batches of 16
    if name == "crt":  # each class drawn with probability 1/2: 640 expected, sd sqrt(1280 / 4) ~ 18
        assert all(abs(c - 640) < 80 for c in counts)
    else:  # plain shuffled passes: the data's 16 / 48 every epoch
        assert counts == [20 * 16, 20 * 48]


def test_crt_retrains_every_task_head_with_two_tasks() -> None:
    setup, algo = _algo("crt", tasks=2, retrain_epochs=2)
    heads = {t: h.weight.detach().clone() for t, h in algo.model.heads.items()}
    algo.after_training(setup.splits["val"])
    assert all(not torch.equal(heads[t], h.weight) for t, h in algo.model.heads.items())


# -- AFR ------------------------------------------------------------------------------------
def test_afr_weights_by_hand() -> None:
    p, y = torch.tensor([0.9, 0.5, 0.1]), torch.tensor([0, 0, 1])
    raw = [math.exp(-1.8), math.exp(-1.0), math.exp(-0.2)]  # exp(-gamma p), gamma = 2
    assert afr_weights(p, y, 2.0, False, 2).tolist() == pytest.approx([r / sum(raw) for r in raw], rel=1e-6)
    bal = [raw[0] / 2, raw[1] / 2, raw[2] / 1]  # times 1 / n_y: class 0 has 2 examples, class 1 one
    assert afr_weights(p, y, 2.0, True, 2).tolist() == pytest.approx([b / sum(bal) for b in bal], rel=1e-6)
    assert afr_weights(p, y, 0.0, False, 2).tolist() == pytest.approx([1 / 3] * 3)  # gamma 0: uniform


def test_afr_split_and_stage1_sees_only_the_erm_part() -> None:
    erm, rw = erm_split(10, 0.8, seed=0)
    assert len(erm) == 8 and len(rw) == 2 and sorted(erm.tolist() + rw.tolist()) == list(range(10))
    assert torch.equal(erm_split(10, 0.8, seed=0)[0], erm) and not torch.equal(erm_split(10, 0.8, seed=1)[0], erm)
    setup, algo = _algo("afr", erm_fraction=0.75)
    algo.setup(setup.train)
    repeats = algo.sampler_repeats(setup.train)
    erm, rw = algo.split(64)
    assert repeats[erm].tolist() == [1] * 48 and repeats[rw].tolist() == [0] * 16
    assert algo.total_steps == 1 * 3 and algo.extra_state() == {"erm_examples": 48}  # 1 epoch of 48 / 16


def test_afr_fit_starts_from_the_erm_head_and_lambda_pulls_back() -> None:
    gen = torch.Generator().manual_seed(0)
    feats, y = torch.randn(40, 3, generator=gen), (torch.arange(40) % 2)
    head = torch.nn.Linear(3, 2)
    w0, b0 = torch.zeros(2, 3), torch.zeros(2)
    w = torch.full((40,), 1 / 40)
    fit_head(head, w0, b0, feats, y, w, reg=0.0, lr=0.1, steps=0, grad_clip=1.0)
    assert torch.equal(head.weight, w0) and torch.equal(head.bias, b0)  # zero steps: exactly the ERM head
    fit_head(head, w0, b0, feats, y, w, reg=0.0, lr=0.1, steps=50, grad_clip=1.0)
    free = (head.weight - w0).norm()
    fit_head(head, w0, b0, feats, y, w, reg=10.0, lr=0.01, steps=50, grad_clip=1.0)
    assert 0 < (head.weight - w0).norm() < free


def test_afr_after_training_keeps_the_backbone_and_picks_from_the_grid() -> None:
    setup, algo = _algo("afr", gamma=(0.0, 4.0), reg=(0.0, 0.1), epochs=20)
    algo.setup(setup.train)
    backbone, head = _backbone_state(algo), algo.model.heads["y"].weight.detach().clone()
    extras = algo.after_training(setup.splits["val"])
    assert all(torch.equal(backbone[k], v) for k, v in algo.model.backbone.state_dict().items())
    assert not torch.equal(head, algo.model.heads["y"].weight)
    assert algo.chosen["y"][0] in (0.0, 4.0) and algo.chosen["y"][1] in (0.0, 0.1)
    # the choice is recorded; no val/* key, so the runner evaluates all of val with its group labels
    assert extras == {"afr/gamma": algo.chosen["y"][0], "afr/lambda": algo.chosen["y"][1]}


# -- EIIL -----------------------------------------------------------------------------------
def _two_calibrations() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float, float]:
    """40 examples right but under-confident (logits (0, 0.5), y = 1: a larger scale lowers their loss) and
    10 wrong and over-confident (logits (0, 3), y = 0: a smaller scale lowers it), interleaved."""
    under = torch.arange(50) % 5 != 0
    z = torch.where(under[:, None], torch.tensor([0.0, 0.5]), torch.tensor([0.0, 3.0]))
    y = under.long()
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    g_under, g_over = 0.5 * (sig(0.5) - 1), 3 * sig(3.0)  # <softmax(z) - onehot(y), z> by hand
    return {"y": z}, {"y": y}, g_under, g_over


def test_eiil_scale_gradients_by_hand() -> None:
    logits, y, g_under, g_over = _two_calibrations()
    g = scale_gradients(logits, y)
    assert g.shape == (1, 50)
    assert g[0, 1].item() == pytest.approx(g_under, rel=1e-6) and g[0, 0].item() == pytest.approx(g_over, rel=1e-6)
    assert scale_gradients(logits, {"y": torch.full((50,), -1)}).abs().sum() == 0  # missing labels count 0
    q = torch.full((50,), 0.5)  # the undivided data: both halves see the pooled gradient
    pooled = (40 * g_under + 10 * g_over) / 50
    assert soft_penalty(q, g).item() == pytest.approx((pooled / 2) ** 2, rel=1e-5)


def test_eiil_separates_the_two_calibrations_and_raises_the_penalty() -> None:
    logits, y, g_under, g_over = _two_calibrations()
    torch.manual_seed(0)
    envs = infer_environments(scale_gradients(logits, y), steps=3000, lr=0.01)
    under = y["y"] == 1
    assert len(envs[under].unique()) == 1 and len(envs[~under].unique()) == 1
    assert envs[under][0] != envs[~under][0]
    _, inferred = irm_terms(logits, y, envs)
    _, pooled = irm_terms(logits, y, torch.zeros(50, dtype=torch.long))
    assert inferred.item() == pytest.approx((g_under ** 2 + g_over ** 2) / 2, rel=1e-5)  # mean_e (grad_e)^2
    assert pooled.item() == pytest.approx(((40 * g_under + 10 * g_over) / 50) ** 2, rel=1e-5)
    assert inferred.item() > 5 * pooled.item()


def test_eiil_setup_infers_resets_and_trains_irm_on_the_inferred_envs() -> None:
    setup, algo = _algo("eiil", reference_epochs=1, infer_steps=200)
    init = {k: v.clone() for k, v in algo.model.state_dict().items()}
    algo.setup(setup.train)
    assert all(torch.equal(init[k], v) for k, v in algo.model.state_dict().items())
    assert algo.envs.shape == (64,) and set(algo.envs.unique().tolist()) <= {0, 1}
    batch = setup.train.batch(torch.arange(16))
    assert bool((batch.e == -1).all())  # no declared environments or groups reach it
    out = algo.model(batch.x)
    expected = irm_terms(out.logits, batch.y, algo.envs[:16])
    got = algo.penalty_terms(out, batch)
    assert all(torch.allclose(a, b) for a, b in zip(got, expected))
    assert torch.equal(algo.extra_state()["envs"], algo.envs)
    assert not algo.selectable({"phase": "setup"}) and algo.selectable({"epoch": 0})


# -- bad inputs -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*CRTS, "afr"])
def test_head_replacing_objective_is_one_line(name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve(RunSpec("multidigits", name, aux=("mtcrl",)))
    text = str(exc.value)
    assert "\n" not in text and text.startswith(f"{name} retrains the linear task heads")


# -- conformance, resume, end to end ---------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", NEW)
def test_conformance_with_two_tasks(name: str) -> None:
    check_algorithm(name, tasks=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lff", "eiil"])
def test_conformance_with_an_auxiliary_objective(name: str) -> None:
    check_algorithm(name, aux=("recon",))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lff", "afr", "eiil"])
def test_resume_matches_an_uninterrupted_run(name: str, tmp_path: Path) -> None:
    spec = RunSpec("synthetic", name, overrides=(*SHORT, *(("algorithm.infer_steps=300",) if name == "eiil" else ())))
    whole = run(spec, tmp_path / "whole")
    with pytest.raises(_Stop):
        run(spec, tmp_path / "cut", reporter=_StopAfterFirstEpoch())
    extra = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["extra"]
    assert {"lff": "ema_b", "afr": "erm_examples", "eiil": "envs"}[name] in extra
    resumed = run(spec, tmp_path / "cut")
    assert resumed.resumed_from_epoch == 0
    assert _records(tmp_path / "cut") == _records(whole.out_dir)


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW)
def test_two_epoch_synthetic_run(name: str, tmp_path: Path) -> None:
    overrides = (*SHORT, *(("algorithm.infer_steps=300",) if name == "eiil" else ()))
    res = run(RunSpec("synthetic", name, overrides=overrides), tmp_path / name)
    final = json.loads((res.out_dir / "final.json").read_text())
    recs = read_jsonl(res.out_dir / "metrics.jsonl")
    phases = [r.get("phase") for r in recs]
    assert final["epochs_run"] == 2
    flags = json.loads((res.out_dir / "config.json").read_text())["algorithm_flags"]
    assert not flags["uses_train_groups"] and not flags["uses_val_groups"] and flags["environments"] is None
    if name in (*CRTS, "afr"):  # stage 2 is one more record, chosen by every protocol
        assert phases == [None, None, "after_training"]
        assert len([k for k in recs[-1] if k.startswith("val/group_acc@")]) == 4  # all of val, groups included
        assert all(s["phase"] == "after_training" for s in final["selections"].values())
    elif name == "eiil":  # the reference model's epochs are recorded, never selected
        assert phases == ["setup", "setup", None, None]
        assert all("phase" not in s for s in final["selections"].values())
    else:
        assert phases == [None, None]
    if name == "afr":  # stage 1 passes over 80% of the 1000 training points, 50 a batch
        assert [r["step"] for r in recs if "phase" not in r] == [16, 32]


def test_afr_records_its_choice_beside_all_of_val_with_group_labels(tmp_path: Path) -> None:
    spec = RunSpec("synthetic", "afr", threads=1, overrides=("train.epochs=1",))
    last = read_jsonl(run(spec, tmp_path / "r").out_dir / "metrics.jsonl")[-1]
    assert last["phase"] == "after_training" and last["afr/gamma"] in AFRHParams().gamma
    assert math.isfinite(last["val/worst_group_acc"])  # the runner's val, with its group labels
