"""Mixup, LISA, MMD, CORAL and CDANN: hand computations, conformance on every input kind, bad inputs, short runs."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import torch.nn.functional as F

from robustbench_mtl.algorithms import mixup as mixup_module
from robustbench_mtl.algorithms._alignment import domain_features, pairwise_mean
from robustbench_mtl.algorithms._mixing import MixPlan, mix_rows, mixed_losses
from robustbench_mtl.algorithms.cdann import class_balanced_weights, class_keys, conditional_input
from robustbench_mtl.algorithms.coral import coral_discrepancy
from robustbench_mtl.algorithms.lisa import LISA, LISAHParams, cutmix_block, lisa_blocks, lisa_plan
from robustbench_mtl.algorithms.mixup import mixup_plan
from robustbench_mtl.algorithms.mmd import mmd2
from robustbench_mtl.checkpoint import seed_everything
from robustbench_mtl.config import ModelHParams, RunSpec, TrainHParams, resolve
from robustbench_mtl.data.base import Dataset, TensorSplit
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.hparams import Choice, hp
from robustbench_mtl.labels import algorithm_info
from robustbench_mtl.registry import ALGORITHMS, DATASETS
from robustbench_mtl.runner import run
from robustbench_mtl.testing import TINY_BERT, TINY_VIT, _Setup, check_algorithm
from robustbench_mtl.trainer import assemble
from robustbench_mtl.types import Batch

NEW = ("mixup", "lisa", "mmd", "coral", "cdann")
ALIGNMENT = ("mmd", "coral", "cdann")


def _build(name: str, tasks: int = 1, backbone: str = "mlp", modality: str = "tabular",
           backbone_hp: dict[str, Any] | None = None, **hparams: Any) -> tuple[_Setup, Any]:
    """`name` with `hparams`, built as the runner builds it on the kit's tiny data (mlp: one hidden layer of 4,
    a representation of 3)."""
    setup = _Setup(name, (), backbone, modality, backbone_hp or {"hidden": (4,), "rep_dim": 3}, tasks=tasks)
    setup.train_hp = TrainHParams(epochs=1, batch_size=16, lr=1e-2, patience=0)
    hps = {"backbone": setup.backbone_hp, "algorithm": dataclasses.replace(setup.algo_cls.HParams(), **hparams),
           "train": setup.train_hp, "model": ModelHParams()}
    classes = {"backbone": setup.backbone_cls, "algorithm": setup.algo_cls}
    algo = assemble(classes, hps, [], algorithm_info(setup.info, setup.use), 0, 10)
    algo.train_split = setup.train
    return setup, algo


def _ce(z: list[float], c: int) -> float:
    """Cross-entropy of logits z for class c, by hand."""
    return math.log(sum(math.exp(v) for v in z)) - z[c]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# -- mixing rules -----------------------------------------------------------------------------
PLAN3 = MixPlan(torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0]), torch.full((3,), 0.3))


def test_mixed_rows_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    expected = torch.tensor([[2.4, 3.4], [4.4, 5.4], [2.2, 3.2]])  # 0.3 x_i + 0.7 x_{second(i)}
    assert torch.allclose(mix_rows(x, PLAN3), expected)


def test_mixup_loss_at_fixed_lambda_and_permutation_by_hand() -> None:
    z = [[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    y = [0, 1, -1]  # the third label is missing: its term is 0, its partner's still counts
    got = mixed_losses({"y": torch.tensor(z)}, {"y": torch.tensor(y)}, PLAN3)
    expected = [0.3 * _ce(z[0], 0) + 0.7 * _ce(z[0], 1),  # row 0 pairs with example 1 (label 1)
                0.3 * _ce(z[1], 1) + 0.7 * 0.0,  # row 1 pairs with example 2 (missing)
                0.3 * 0.0 + 0.7 * _ce(z[2], 0)]  # row 2: own label missing, partner example 0 (label 0)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    assert expected[2] == pytest.approx(0.7 * math.log(2))


def test_mixed_loss_sums_tasks() -> None:
    z = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    plan = MixPlan(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0.25, 0.25]))
    got = mixed_losses({"a": z, "b": z}, {"a": torch.tensor([0, 1]), "b": torch.tensor([1, -1])}, plan)
    row0 = (0.25 * _ce([0, 2], 0) + 0.75 * _ce([0, 2], 1)) + 0.25 * _ce([0, 2], 1)
    row1 = (0.25 * _ce([1, 0], 1) + 0.75 * _ce([1, 0], 0)) + 0.75 * _ce([1, 0], 1)
    assert got.tolist() == pytest.approx([row0, row1], rel=1e-6)


def test_mixup_plan_is_one_lambda_and_a_permutation() -> None:
    seed_everything(0)
    plan = mixup_plan(16, 0.2)
    assert plan.first.tolist() == list(range(16)) and sorted(plan.second.tolist()) == list(range(16))
    assert len(set(plan.lam.tolist())) == 1 and 0 <= float(plan.lam[0]) <= 1 and plan.boxes is None
    assert mixup_plan(4, 0.0).lam.tolist() == [1.0] * 4  # alpha = 0: no mixing


def test_mixup_update_mixes_inputs_at_the_drawn_lambda(monkeypatch: pytest.MonkeyPatch) -> None:
    setup, algo = _build("mixup")
    batch = setup.train.batch(torch.arange(4))
    plan = MixPlan(torch.arange(4), torch.tensor([2, 3, 0, 1]), torch.full((4,), 0.3))
    monkeypatch.setattr(mixup_module, "mixup_plan", lambda n, alpha: plan)
    loss, parts = algo.compute_loss(batch, None)
    x, y = batch.x, batch.y["y"]
    logits = algo.model(0.3 * x + 0.7 * x[[2, 3, 0, 1]]).logits["y"]
    expected = (0.3 * F.cross_entropy(logits, y) + 0.7 * F.cross_entropy(logits, y[[2, 3, 0, 1]]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and parts["loss_task"] is loss


def test_mixup_without_mixing_is_erm() -> None:
    setup, algo = _build("mixup", alpha=0.0)
    batch = setup.train.batch(torch.arange(16))
    loss, _ = algo.compute_loss(batch, None)
    assert loss.item() == pytest.approx(F.cross_entropy(algo.model(batch.x).logits["y"], batch.y["y"]).item(), rel=1e-6)


@pytest.mark.slow  # the first text test of a session trains the tiny tokenizer (~10 s)
def test_mixup_on_text_mixes_the_pooled_representation(monkeypatch: pytest.MonkeyPatch) -> None:
    setup, algo = _build("mixup", backbone="bert_tiny", modality="text", backbone_hp=TINY_BERT)
    algo.model.eval()  # no dropout: the two passes below must agree
    batch = setup.train.batch(torch.arange(4))
    assert not batch.x.is_floating_point()
    plan = MixPlan(torch.arange(4), torch.tensor([1, 0, 3, 2]), torch.full((4,), 0.6))
    monkeypatch.setattr(mixup_module, "mixup_plan", lambda n, alpha: plan)
    loss, _ = algo.compute_loss(batch, None)
    pooled = algo.model(batch.x).pooled
    logits = algo.model.heads["y"](0.6 * pooled + 0.4 * pooled[[1, 0, 3, 2]])
    y = batch.y["y"]
    expected = 0.6 * F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(logits, y[[1, 0, 3, 2]])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# -- LISA pairing --------------------------------------------------------------------------------
Y8 = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
A8 = torch.tensor([0, 1, 0, 1, 0, 0, 1, -1])  # the last example's attribute (group) is unknown


def _pairs(blocks: list[tuple[torch.Tensor, torch.Tensor]]) -> set[frozenset[int]]:
    return {frozenset((i, j)) for f, s in blocks for i, j in zip(f.tolist(), s.tolist())}


def test_lisa_intra_label_pairs_share_the_label_and_differ_in_attribute() -> None:
    seed_everything(0)
    blocks = lisa_blocks(Y8, A8, intra_label=True)
    # label 0: attribute 0 at {0, 2}, attribute 1 at {1, 3}; label 1: attribute 0 at {4, 5}, 1 at {6}
    assert _pairs(blocks) == {frozenset((0, 1)), frozenset((2, 3)), frozenset((4, 6))}
    for first, second in blocks:
        assert torch.equal(Y8[first], Y8[second]) and bool((A8[first] != A8[second]).all())


def test_lisa_intra_attribute_pairs_share_the_attribute_and_differ_in_label() -> None:
    seed_everything(0)
    blocks = lisa_blocks(Y8, A8, intra_label=False)
    # attribute 0: label 0 at {0, 2}, label 1 at {4, 5}; attribute 1: label 0 at {1, 3}, label 1 at {6}
    assert _pairs(blocks) == {frozenset((0, 4)), frozenset((2, 5)), frozenset((1, 6))}
    for first, second in blocks:
        assert torch.equal(A8[first], A8[second]) and bool((Y8[first] != Y8[second]).all())


def test_lisa_picks_two_of_several_attributes() -> None:
    y, a = torch.tensor([0, 0, 0, 0, 0, 0]), torch.tensor([0, 1, 2, 0, 1, 2])
    for seed in range(5):
        seed_everything(seed)
        (first, second), = lisa_blocks(y, a, intra_label=True)
        assert len(first) == 2 and len(set(a[first].tolist())) == 1 and len(set(a[second].tolist())) == 1
        assert int(a[first[0]]) != int(a[second[0]])


def test_lisa_plan_fills_the_batch_with_valid_pairs() -> None:
    seed_everything(0)
    plan = lisa_plan(Y8, A8, intra_label=True, alpha=2.0)
    assert plan is not None and len(plan) == 8 and plan.boxes is None  # 3 pairs a round: 3 rounds, 8 of 9 kept
    assert {frozenset((i, j)) for i, j in zip(plan.first.tolist(), plan.second.tolist())} <= {
        frozenset((0, 1)), frozenset((2, 3)), frozenset((4, 6))}
    assert bool(((plan.lam >= 0) & (plan.lam <= 1)).all()) and len(set(plan.lam.tolist())) > 1  # one per pair
    assert 7 not in plan.first.tolist() + plan.second.tolist()
    one_attribute = torch.zeros(8, dtype=torch.long)
    assert lisa_plan(Y8, one_attribute, intra_label=True, alpha=2.0) is None  # no pair: an unmixed step


def test_lisa_without_pairs_takes_an_erm_step() -> None:
    setup, algo = _build("lisa", p_sel=1.0)  # always intra-label
    batch = setup.train.batch(torch.arange(16))
    batch = dataclasses.replace(batch, g=2 * batch.y["y"])  # every example has attribute 0
    loss, _ = algo.compute_loss(batch, None)
    assert loss.item() == pytest.approx(F.cross_entropy(algo.model(batch.x).logits["y"], batch.y["y"]).item(),
                                        rel=1e-6)


def test_lisa_reads_the_attribute_from_the_group() -> None:
    setup, algo = _build("lisa", p_sel=0.0)  # always intra-attribute
    batch = setup.train.batch(torch.arange(16))
    assert torch.equal(batch.g, 2 * batch.y["y"] + torch.arange(16) % 2)  # the kit's g = 2 y + a
    seed_everything(0)
    plan = algo.plan(batch)
    assert plan is not None
    a = batch.g % 2
    assert torch.equal(a[plan.first], a[plan.second]) and not bool((batch.y["y"][plan.first] ==
                                                                   batch.y["y"][plan.second]).any())


def test_cutmix_pastes_the_box_by_hand() -> None:
    x = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    box = torch.tensor([[1, 3, 0, 2], [1, 3, 0, 2]])  # rows 1-2, columns 0-1
    mixed = mix_rows(x, MixPlan(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.full((2,), 0.75), box))
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[1:3, 0:2] = True
    assert torch.equal(mixed[0, 0], inside.float()) and torch.equal(mixed[1, 0], (~inside).float())


def test_cutmix_block_lambda_is_the_kept_pixel_share() -> None:
    for seed in range(5):
        seed_everything(seed)
        plan = cutmix_block(torch.tensor([0, 2]), torch.tensor([1, 3]), 1.0, 8, 6)
        assert plan.first.tolist() == [0, 2, 1, 3] and plan.second.tolist() == [1, 3, 0, 2]
        top, bottom, left, right = plan.boxes[0].tolist()
        assert (plan.boxes == plan.boxes[0]).all() and 0 <= top <= bottom <= 8 and 0 <= left <= right <= 6
        assert plan.lam.tolist() == pytest.approx([1 - (bottom - top) * (right - left) / 48] * 4)


# -- MMD and CORAL -----------------------------------------------------------------------------
def test_mmd_of_identical_sets_is_zero() -> None:
    x = torch.randn(5, 3)
    assert mmd2(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_mmd_of_two_point_sets_by_hand() -> None:
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0]])
    # k(u, v) = exp(-|u - v|^2): Kxx = (1 + e^-1 + e^-1 + 1) / 4, Kyy = 1, Kxy = (e^-4 + e^-1) / 2
    expected = (2 + 2 * math.exp(-1)) / 4 + 1 - 2 * (math.exp(-4) + math.exp(-1)) / 2
    assert mmd2(x, y, gammas=(1.0,)).item() == pytest.approx(expected, rel=1e-6)
    # the default mixture of 7 bandwidths on {0} vs {1}: 7 + 7 - 2 sum_g exp(-g)
    gammas = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
    assert mmd2(torch.tensor([[0.0]]), torch.tensor([[1.0]])).item() == pytest.approx(
        14 - 2 * sum(math.exp(-g) for g in gammas), rel=1e-6)


def test_coral_penalty_on_tiny_matrices_by_hand() -> None:
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # mean (2, 0), covariance [[2, 0], [0, 0]]
    y = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, 2.0]])  # mean (0, 2), covariance [[0, 0], [0, 1]]
    mean_term = ((2 - 0) ** 2 + (0 - 2) ** 2) / 2
    cov_term = ((2 - 0) ** 2 + 0 + 0 + (0 - 1) ** 2) / 4
    assert coral_discrepancy(x, y).item() == pytest.approx(mean_term + cov_term)
    assert coral_discrepancy(x, x).item() == 0.0


def test_penalty_is_the_mean_over_pairs_of_environments() -> None:
    feats, e = torch.tensor([[1.0], [3.0], [5.0], [7.0], [9.0]]), torch.tensor([0, 0, 1, 2, 2])
    gap = lambda u, v: (u.mean() - v.mean()) ** 2  # noqa: E731  environment means 2, 5, 8
    zero = torch.zeros(())
    assert pairwise_mean(domain_features(feats, e), gap, zero).item() == pytest.approx((9 + 36 + 9) / 3)
    assert pairwise_mean(domain_features(feats, e, min_size=2), gap, zero).item() == pytest.approx(36)
    assert pairwise_mean(domain_features(feats, torch.zeros(5, dtype=torch.long)), gap, zero) is zero


@pytest.mark.parametrize("name, fn", [("mmd", mmd2), ("coral", coral_discrepancy)])
def test_alignment_loss_is_task_plus_gamma_times_penalty(name: str, fn: Any) -> None:
    setup, algo = _build(name, tasks=2, penalty_weight=0.5)
    batch = setup.train.batch(torch.arange(16))
    assert set(batch.e.tolist()) == {0, 1}  # the kit's two declared environments
    total, parts = algo.compute_loss(batch, None)
    pooled = algo.model(batch.x).pooled
    expected = fn(pooled[batch.e == 0], pooled[batch.e == 1])
    assert parts[f"{name}_penalty"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert total.item() == pytest.approx((parts["loss_task"] + 0.5 * expected).item(), rel=1e-5)


def test_alignment_uses_training_groups_on_a_one_task_dataset() -> None:
    setup, algo = _build("coral")
    batch = setup.train.batch(torch.arange(16))
    assert torch.equal(batch.e, setup.splits["train"].g[:16]) and set(batch.e.tolist()) == {0, 1, 2, 3}
    _, parts = algo.compute_loss(batch, None)
    pooled = algo.model(batch.x).pooled
    groups = [pooled[batch.e == k] for k in range(4)]
    expected = sum(coral_discrepancy(groups[i], groups[j]) for i in range(4) for j in range(i + 1, 4)) / 6
    assert parts["coral_penalty"].item() == pytest.approx(float(expected.detach()), rel=1e-5)


# -- CDANN -------------------------------------------------------------------------------------
def test_cdann_discriminator_input_adds_class_embeddings_by_hand() -> None:
    emb = torch.nn.ModuleDict({"a": torch.nn.Embedding(2, 2), "b": torch.nn.Embedding(2, 2)})
    with torch.no_grad():
        emb["a"].weight.copy_(torch.tensor([[10.0, 0.0], [0.0, 10.0]]))
        emb["b"].weight.copy_(torch.tensor([[100.0, 0.0], [0.0, 100.0]]))
    z = torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]])
    y = {"a": torch.tensor([0, 1, -1]), "b": torch.tensor([1, -1, -1])}  # missing labels add nothing
    got = conditional_input(z, y, emb)
    assert torch.equal(got, torch.tensor([[11.0, 101.0], [2.0, 12.0], [0.0, 0.0]]))


def test_cdann_class_balanced_weights_by_hand() -> None:
    assert class_balanced_weights(torch.tensor([0, 0, 0, 1])).tolist() == pytest.approx([1 / 6] * 3 + [1 / 2])
    keys = class_keys({"a": torch.tensor([0, 0, 1, 1]), "b": torch.tensor([0, 0, 0, 1])})
    # label combinations (0,0) twice, (1,0), (1,1): K = 3 classes
    assert class_balanced_weights(keys).tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 3, 1 / 3])


def test_cdann_reverses_the_gradient_into_z_but_not_into_the_embeddings() -> None:
    setup, algo = _build("cdann", tasks=2)
    algo.updates = 3
    c = algo.reversal()
    batch = setup.train.batch(torch.arange(16))
    z = torch.randn(16, algo.model.backbone.out_dim, requires_grad=True)
    emb = list(algo.class_embeddings.parameters())
    loss = algo.domain_loss(z, batch)
    g_z, *g_emb = torch.autograd.grad(loss, [z, *emb])
    disc_in = z.detach().clone().requires_grad_()  # the same loss without the reversal layer
    inp = conditional_input(disc_in, batch.y, algo.class_embeddings)
    ce = F.cross_entropy(algo.discriminator(inp), batch.e, reduction="none")
    plain = (class_balanced_weights(class_keys(batch.y)) * ce).sum()
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)
    g_in, *g_emb_plain = torch.autograd.grad(plain, [disc_in, *emb])
    assert torch.allclose(g_z, -c * g_in, atol=1e-7)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(g_emb, g_emb_plain))


def test_cdann_leaves_out_examples_without_an_environment() -> None:
    setup, algo = _build("cdann", tasks=2)
    batch = setup.train.batch(torch.arange(16))
    z = torch.randn(16, algo.model.backbone.out_dim)
    hidden = dataclasses.replace(batch, e=torch.cat([torch.tensor([-1]), batch.e[1:]]))
    rest = Batch(batch.x[1:], {t: v[1:] for t, v in batch.y.items()}, batch.g[1:], batch.e[1:], batch.idx[1:])
    assert algo.domain_loss(z, hidden).item() == pytest.approx(algo.domain_loss(z[1:], rest).item(), rel=1e-6)


# -- conformance on every input kind, with objectives ---------------------------------------------
@dataclass(frozen=True)
class _CutMixHParams(LISAHParams):
    mix_method: Literal["mixup", "cutmix"] = hp("cutmix", Choice(("mixup", "cutmix")), help="LISA with CutMix")


class _CutMixLISA(LISA):
    """LISA with CutMix by default (a test algorithm; docs/methods.md#lisa)."""

    HParams = _CutMixHParams


@pytest.mark.parametrize("name", NEW)
def test_conformance_with_an_auxiliary_objective(name: str) -> None:
    check_algorithm(name, aux=("recon",))


@pytest.mark.parametrize("name", ["mixup", *ALIGNMENT])
def test_conformance_with_two_tasks(name: str) -> None:
    check_algorithm(name, tasks=2)
    check_algorithm(name, aux=("mtcrl",), tasks=2)  # mtcrl's heads and its G-IRM on the unmixed pass


@pytest.mark.slow  # see test_mixup_on_text_mixes_the_pooled_representation
@pytest.mark.parametrize("name", ["mixup", "lisa"])
def test_conformance_on_text_and_images(name: str) -> None:
    _Setup(name, (), "bert_tiny", "text", TINY_BERT).run()
    _Setup(name, (), "vit_tiny", "image", TINY_VIT).run()


def test_conformance_of_lisa_with_cutmix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ALGORITHMS._items, "_lisa_cutmix", _CutMixLISA)
    _Setup("_lisa_cutmix", (), "vit_tiny", "image", TINY_VIT).run()


# -- bad inputs: one line each ----------------------------------------------------------------------
class _Tiny(Dataset):
    """One binary task, 4 groups g = 2 y + a, one declared environment (a test dataset)."""

    tasks = {"y": 2}
    group_names = ("y0_a0", "y0_a1", "y1_a0", "y1_a1")
    environment_names = ("only",)
    defaults = {"backbone.rep_dim": 4, "train.batch_size": 16, "train.epochs": 1, "train.patience": 0}

    def generate(self) -> dict[str, TensorSplit]:
        gen = torch.Generator().manual_seed(0)
        splits = {}
        for split in ("train", "val", "test"):
            y, a = torch.arange(64) % 2, torch.arange(64) // 2 % 2
            x = torch.stack([2.0 * y - 1, 2.0 * a - 1], 1) + torch.randn(64, 2, generator=gen)
            splits[split] = TensorSplit(x, self.labels(y, a), 2 * y + a, torch.zeros(64, dtype=torch.long))
        return splits

    def labels(self, y: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": y}


class _TwoTasks(_Tiny):
    """_Tiny with the attribute as a second task and two declared environments (a test dataset)."""

    tasks = {"y": 2, "a": 2}
    environment_names = ("e0", "e1")

    def generate(self) -> dict[str, TensorSplit]:
        env = torch.arange(64) // 4 % 2  # each environment holds every group
        return {k: dataclasses.replace(s, e=env) for k, s in super().generate().items()}

    def labels(self, y: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": y, "a": a}


class _LabelGroups(_Tiny):
    """_Tiny whose groups are its labels: no attribute (a test dataset)."""

    group_names = ("y0", "y1")

    def generate(self) -> dict[str, TensorSplit]:
        return {k: dataclasses.replace(s, g=s.y["y"].clone()) for k, s in super().generate().items()}


@pytest.fixture
def tiny_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, cls in (("_tiny", _Tiny), ("_two_tasks_mix", _TwoTasks), ("_label_groups", _LabelGroups)):
        monkeypatch.setitem(DATASETS._items, name, cls)


def test_lisa_on_a_multitask_dataset_is_one_line(tiny_sets: None, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        run(RunSpec("_two_tasks_mix", "lisa"), tmp_path / "r")
    assert _one_line(exc).startswith("lisa needs a one-task dataset")
    assert not (tmp_path / "r").exists()


def test_lisa_on_a_dataset_without_attribute_groups_is_one_line(tiny_sets: None) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve(RunSpec("_label_groups", "lisa"))
    assert "lisa needs training groups g = A*label + attribute with A >= 2" in _one_line(exc)


def test_lisa_refuses_groups_that_are_not_label_times_attribute() -> None:
    setup, algo = _build("lisa")
    train = setup.train
    with pytest.raises(ConfigError) as exc:
        algo.setup(dataclasses.replace(train, g=(train.g + 2) % 4))  # g // 2 is no longer the label
    assert "lisa reads the attribute as g mod 2" in _one_line(exc)
    algo.setup(train)  # the kit's groups are 2 y + a


@pytest.mark.parametrize("name", ALIGNMENT)
def test_alignment_with_one_environment_is_one_line(name: str, tiny_sets: None) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve(RunSpec("_tiny", name))
    assert f"algorithm '{name}' needs at least 2 training environments" in _one_line(exc)


def test_negative_mixup_alpha_is_one_line() -> None:
    with pytest.raises(ConfigError) as exc:
        resolve(RunSpec("synthetic", "mixup", overrides=("algorithm.alpha=-1",)))
    assert "alpha" in _one_line(exc)


# -- end to end ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mixup", *ALIGNMENT])
def test_one_epoch_multitask_run(name: str, tiny_sets: None, tmp_path: Path) -> None:
    res = run(RunSpec("_two_tasks_mix", name), tmp_path / name)
    assert json.loads((res.out_dir / "final.json").read_text())["epochs_run"] == 1
    flags = json.loads((res.out_dir / "config.json").read_text())["algorithm_flags"]
    assert flags["uses_train_groups"] is False  # declared environments: no group labels
    assert flags["environments"] == (None if name == "mixup" else "dataset")


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW)
def test_one_epoch_synthetic_run(name: str, tmp_path: Path) -> None:
    res = run(RunSpec("synthetic", name, overrides=("train.epochs=1",)), tmp_path / name)
    final = json.loads((res.out_dir / "final.json").read_text())
    assert final["epochs_run"] == 1
    flags = json.loads((res.out_dir / "config.json").read_text())["algorithm_flags"]
    assert flags["uses_train_groups"] is (name != "mixup")
    assert flags["environments"] == ("train_groups" if name in ALIGNMENT else None)
