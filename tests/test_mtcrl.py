"""mtcrl: the losses against hand computations, routed heads, the anneal, environments, bad inputs, a real run."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from robustbench_mtl import testing
from robustbench_mtl.cli import main
from robustbench_mtl.config import ModelHParams, RunSpec, TrainHParams, resolve
from robustbench_mtl.data.base import DataInfo, Dataset, TensorSplit
from robustbench_mtl.errors import ConfigError
from robustbench_mtl.hparams import build
from robustbench_mtl.labels import label_use
from robustbench_mtl.model import Model
from robustbench_mtl.objectives import mtcrl as m
from robustbench_mtl.registry import ALGORITHMS, BACKBONES, DATASETS
from robustbench_mtl.runner import run
from robustbench_mtl.testdata import tiny_data
from robustbench_mtl.trainer import assemble
from robustbench_mtl.types import Batch


def sig(s: float) -> float:
    return 1 / (1 + math.exp(-s))


# -- the losses by hand ---------------------------------------------------------------------------------------
def test_graph_loss_by_hand() -> None:
    a = torch.tensor([[2.0, 1.0], [1.0, 0.0]])  # column sums 3, 1 of 4: usage p = (0.75, 0.25)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(m.graph_loss(a, 0.1, 0.5)) == pytest.approx(0.1 * 4 - 0.5 * entropy)
    uniform = torch.tensor([[1.0, 0.5], [0.0, 0.5]])  # p = (0.5, 0.5): the entropy's maximum, log 2
    assert float(m.graph_loss(uniform, 1e-3, 1e-2)) == pytest.approx(1e-3 * 2 - 1e-2 * math.log(2))


def test_decorrelation_is_zero_for_orthogonal_modules_and_positive_for_duplicates() -> None:
    u, v = torch.tensor([1.0, -1, 1, -1]), torch.tensor([1.0, 1, -1, -1])  # zero mean, orthogonal
    assert float(m.decorrelation(torch.stack([u, v], 1).unsqueeze(-1))) == pytest.approx(0, abs=1e-7)
    # A duplicate: C_12 = C_21 = var / (var + EPS) = 1 / (1 + 1e-5); mean over the K(K-1) = 2 ordered pairs.
    dup = 1 / (1 + m.EPS)
    assert float(m.decorrelation(torch.stack([u, u], 1).unsqueeze(-1))) == pytest.approx(dup ** 2, rel=1e-6)
    # K = 3, module 3 duplicates module 1: pairs (1, 3) and (3, 1) of 6 count, each C = dup.
    three = torch.stack([u, v, u], 1).unsqueeze(-1)
    assert float(m.decorrelation(three)) == pytest.approx(2 * dup ** 2 / 6, rel=1e-6)
    # d = 2, module 2 = module 1 whose two dimensions are orthogonal: C_12 = dup * I, ||C_12||^2 / d^2 = 2/4.
    two_dims = torch.stack([u, v], 1)
    assert float(m.decorrelation(torch.stack([two_dims, two_dims], 1))) == pytest.approx(0.5 * dup ** 2, rel=1e-6)
    assert float(m.decorrelation(two_dims.unsqueeze(1))) == 0.0  # one module: nothing to decorrelate


def hand_objective(routing: str = "sum", girm: str = "var") -> m.MTCRL:
    """T = 2 tasks (a, b), K = 2 modules of d = 1, Phi_k(x) = x_k, head logits (0, z_t), A = 1."""
    info = DataInfo("hand", "tabular", (2,), {"a": 2, "b": 2}, ("g",), (4,))
    obj = m.MTCRL(m.MTCRLHParams(num_modules=2, module_dim=1, head_hidden=1, routing=routing, girm=girm),
                  SimpleNamespace(out_dim=2), info)
    with torch.no_grad():
        obj.encoder.weight.copy_(torch.eye(2))
        obj.encoder.bias.zero_()
        for head in obj.heads.values():
            head[0].weight.fill_(1.0), head[0].bias.zero_()
            head[2].weight.copy_(torch.tensor([[0.0], [1.0]])), head[2].bias.zero_()
    return obj


def hand_batch(y_b: list[int]) -> Batch:
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [2.0, 1.0]])
    return Batch(x, {"a": torch.tensor([1, 0, 1, 0]), "b": torch.tensor(y_b)}, torch.zeros(4, dtype=torch.long),
                 torch.tensor([0, 0, 1, 1]), torch.arange(4))


def hand_gradients(y_b: list[int]) -> dict[str, list[list[float]]]:
    """g_{t,e} = mean over env e's labelled examples of (sigmoid(s) - y) x, s = A_t . x = x1 + x2 (A = 1)."""
    xs, envs = [(1, 0), (0, 2), (1, 1), (2, 1)], [0, 0, 1, 1]
    ys = {"a": [1, 0, 1, 0], "b": y_b}
    out: dict[str, list[list[float]]] = {}
    for t, y in ys.items():
        out[t] = []
        for env in (0, 1):
            rows = [(x, yi) for x, yi, e in zip(xs, y, envs) if e == env and yi >= 0]
            if rows:
                out[t].append([sum((sig(sum(x)) - yi) * x[k] for x, yi in rows) / len(rows) for k in (0, 1)])
    return out


def var_form(grads: dict[str, list[list[float]]]) -> float:
    total = 0.0
    for gs in grads.values():
        mean = [sum(g[k] for g in gs) / len(gs) for k in (0, 1)]
        total += sum((g[k] - mean[k]) ** 2 for g in gs for k in (0, 1)) / len(gs)
    return total


def norm_form(grads: dict[str, list[list[float]]]) -> float:
    return sum(sum(v * v for g in gs for v in g) / len(gs) for gs in grads.values())


@pytest.mark.parametrize("girm, form", [("var", var_form), ("norm", norm_form)])
@pytest.mark.parametrize("y_b", [[0, 0, 1, -1], [0, 1, -1, -1]])  # the second: task b unlabelled in env 1
def test_girm_forms_against_hand_gradients(girm: str, form: Any, y_b: list[int]) -> None:
    obj, batch = hand_objective(girm=girm), hand_batch(y_b)
    feats, a = obj.module_outputs(batch.x), obj.routing_graph()
    assert torch.allclose(a, torch.ones(2, 2))  # A_hat starts at log(e - 1)
    logits = obj._logits(feats, a)
    assert torch.allclose(logits["a"], torch.stack([torch.zeros(4), batch.x.sum(1)], 1))
    losses = torch.stack([F.cross_entropy(logits[t], batch.y[t], ignore_index=-1, reduction="none")
                          for t in ("a", "b")], 1)
    risks, present = m.env_risks(losses, torch.stack([batch.y[t] >= 0 for t in ("a", "b")], 1), batch.e)
    grads = m.risk_gradients(risks, a)  # [E, T, K]
    expected = hand_gradients(y_b)
    for i, t in enumerate(("a", "b")):
        got = [v for e in range(2) if present[e, i] for v in grads[e, i].tolist()]
        assert got == pytest.approx([v for g in expected[t] for v in g], rel=1e-5)
    penalty = obj.girm(feats, a, batch)
    assert float(penalty.detach()) == pytest.approx(form(expected), rel=1e-5) and penalty.requires_grad
    penalty.backward()  # the penalty trains the routing and the modules (create_graph)
    assert obj.a_hat.grad is not None and obj.encoder.weight.grad is not None


def test_girm_var_is_zero_with_one_environment_and_needs_environment_ids() -> None:
    obj, batch = hand_objective(), hand_batch([0, 0, 1, 1])
    feats, a = obj.module_outputs(batch.x), obj.routing_graph()
    one_env = Batch(batch.x, batch.y, batch.g, torch.zeros(4, dtype=torch.long), batch.idx)
    assert float(obj.girm(feats, a, one_env).detach()) == 0.0
    hidden = Batch(batch.x, batch.y, batch.g, torch.full((4,), -1), batch.idx)
    with pytest.raises(RuntimeError, match="environment ids"):
        obj.girm(feats, a, hidden)


def test_concat_routing_gates_each_module() -> None:
    feats = torch.arange(12.0).view(2, 3, 2)  # B = 2, K = 3, d = 2
    a = torch.tensor([1.0, 0.0, 2.0])
    assert m.route(feats, a, "concat").tolist() == [[0, 1, 0, 0, 8, 10], [6, 7, 0, 0, 20, 22]]
    assert m.route(feats, a, "sum").tolist() == [[8, 11], [26, 29]]


# -- routed heads, the anneal -----------------------------------------------------------------------------
def tiny_algorithm(algo: str = "erm", total_steps: int = 10, train: TrainHParams | None = None,
                   **hparams: Any) -> tuple[Any, dict[str, TensorSplit]]:
    info, splits = tiny_data("tabular", 0, tasks=2)
    backbone = BACKBONES.get("mlp")
    algo_cls = ALGORITHMS.get(algo)
    classes = {"backbone": backbone, "algorithm": algo_cls, "objective:mtcrl": m.MTCRL}
    hp = {"backbone": build(backbone.HParams, "backbone", [{}]), "algorithm": algo_cls.HParams(),
          "train": train or TrainHParams(epochs=1, batch_size=16, patience=0), "model": ModelHParams(),
          "mtcrl": m.MTCRLHParams(**hparams)}
    return assemble(classes, hp, ["mtcrl"], info, 0, total_steps), splits


def test_routed_heads_replace_the_linear_heads() -> None:
    algo, splits = tiny_algorithm()
    model, obj = algo.model, algo.model.objectives["mtcrl"]
    assert len(model.heads) == 0 and model.head_source == "mtcrl"
    x = splits["val"].inputs(slice(0, 8))
    pred = algo.predict(x)
    routed = obj.task_logits(model(x, heads=False))
    assert set(pred) == {"y", "a"} and all(torch.allclose(pred[t], routed[t]) for t in pred)
    with torch.no_grad():
        obj.heads["a"][2].bias.add_(torch.tensor([5.0, -5.0]))  # the routed head decides the prediction
    assert bool((algo.predict(x)["a"].argmax(1) == 0).all())
    batch = splits["train"].batch(torch.arange(16))  # the end-task loss reads the routed logits too
    algo.model.eval()
    _, parts = algo.compute_loss(batch, None)
    with torch.no_grad():
        logits = obj.task_logits(model(batch.x, heads=False))
    expected = sum(F.cross_entropy(logits[t], batch.y[t]) for t in ("y", "a"))
    assert float(parts["loss_task"].detach()) == pytest.approx(float(expected), rel=1e-5)


def test_two_objectives_with_heads_are_refused() -> None:
    info, _ = tiny_data("tabular", 0, tasks=2)
    net = BACKBONES.get("mlp")(BACKBONES.get("mlp").HParams(), info)
    objs = {n: m.MTCRL(m.MTCRLHParams(), net, info) for n in ("one", "two")}
    with pytest.raises(ConfigError, match="both replace the task heads"):
        Model(net, info.tasks, objs)


def test_anneal_steps_and_weights() -> None:
    cases = [(0.1, 470), (0.1, 30), (0.1, 3), (0.0, 100), (1.0, 7)]
    assert [m.anneal_steps(f, n) for f, n in cases] == [47, 3, 1, 0, 7]
    assert [m.girm_weight(s, 3, 10.0) for s in range(5)] == [0.0, 0.0, 0.0, 10.0, 10.0]


def test_anneal_schedule_rescale_and_optimizer_reset_in_training() -> None:
    algo, splits = tiny_algorithm(total_steps=10, anneal_fraction=0.3, lambda_girm=10.0)
    model, obj = algo.model, algo.model.objectives["mtcrl"]
    batch, seen = splits["train"].batch(torch.arange(16)), []
    for _ in range(5):
        algo.compute_loss(batch, None)
        seen.append((obj._lam, model.loss_divisor(), model.restarts_optimizer()))
        algo.update(batch)
    assert seen == [(0.0, 1, False)] * 3 + [(10.0, 10.0, True), (10.0, 10.0, False)]
    # the optimizer was cleared at step 3 (0-based): Adam has taken 2 steps since, not 5
    assert {int(s["step"]) for s in algo.optimizer.state.values()} == {2}
    assert int(obj.steps) == 5


def test_rescale_divides_the_whole_step_by_lambda() -> None:
    """SGD without momentum: from the switch on, the step with `rescale` is the step without it / lambda."""
    sgd = TrainHParams(epochs=1, batch_size=16, patience=0, optimizer="sgd", momentum=0.0, lr=0.1)
    deltas = []
    for rescale in (True, False):
        algo, splits = tiny_algorithm(total_steps=10, train=sgd, anneal_fraction=0.1, lambda_girm=10.0,
                                      rescale=rescale, reset_optimizer=False)
        batch = splits["train"].batch(torch.arange(16))
        algo.update(batch)  # step 0: lambda = 0
        before = algo.model.objectives["mtcrl"].encoder.weight.detach().clone()
        algo.update(batch)  # step 1: lambda = 10
        deltas.append(algo.model.objectives["mtcrl"].encoder.weight.detach() - before)
    assert torch.allclose(deltas[0] * 10, deltas[1], rtol=1e-4, atol=1e-7)


def test_no_girm_without_heads_in_the_end_pass() -> None:
    """tapt's end pass skips the heads: mtcrl then reads no labels (decorrelation and graph terms only)."""
    algo, splits = tiny_algorithm(total_steps=10, anneal_fraction=0.0)
    obj, batch = algo.model.objectives["mtcrl"], splits["train"].batch(torch.arange(16))
    out = algo.model(batch.x, heads=False)
    assert torch.equal(obj.batch_loss({"end": out}, batch, 10), obj.loss({"end": out})) and obj._lam == 0.0
    obj.batch_loss({"end": algo.model(batch.x)}, batch, 10)
    assert obj._lam == 10.0


# -- environments and bad inputs ------------------------------------------------------------------------
class _TwoTasks(Dataset):
    """Two tabular tasks from the tiny test data, with `environment_names` set by the test (a test dataset)."""

    tasks = {"y": 2, "a": 2}
    group_names = ("g0", "g1", "g2", "g3")

    def generate(self) -> dict[str, TensorSplit]:
        splits = tiny_data("tabular", 0, tasks=2)[1]
        if len(self.environment_names) == 1:
            splits["train"] = splits["train"].subset(torch.nonzero(splits["train"].e == 0).flatten())
        return splits


@pytest.fixture
def two_tasks(monkeypatch: pytest.MonkeyPatch) -> Any:
    def register(name: str, envs: tuple[str, ...]) -> str:
        cls = type(name, (_TwoTasks,), {"environment_names": envs, "__doc__": _TwoTasks.__doc__})
        monkeypatch.setitem(DATASETS._items, name, cls)
        return name
    return register


@pytest.mark.parametrize("envs, declares", [((), 0), (("only",), 1)])
def test_girm_needs_two_declared_environments(two_tasks: Any, tmp_path: Path, envs: tuple[str, ...],
                                              declares: int) -> None:
    name = two_tasks(f"_mt_envs{len(envs)}", envs)
    for algo in ("erm", "irm"):  # irm would fall back to training groups; G-IRM never does
        with pytest.raises(ConfigError) as err:
            run(RunSpec(name, algo, aux=("mtcrl",)), tmp_path / "r")
        msg = str(err.value)
        assert "\n" not in msg and f"objective 'mtcrl' needs at least 2 training environments for G-IRM " \
            f"(mtcrl.girm=var; mtcrl.girm=none runs without it), but dataset '{name}' declares {declares}" in msg
    assert not (tmp_path / "r").exists()
    use = resolve(RunSpec(name, "erm", aux=("mtcrl",), overrides=("mtcrl.girm=none",))).use
    assert use.flags()["uses_environments"] is False  # without G-IRM mtcrl reads no environments


def test_environments_reach_the_run_when_girm_is_on() -> None:
    info, _ = tiny_data("tabular", 0, tasks=2)
    erm = ALGORITHMS.get("erm")
    why = m.MTCRL.environment_use(m.MTCRLHParams())
    assert label_use(erm, "erm", info, {"mtcrl": why}).flags() == {
        "uses_train_groups": False, "uses_val_groups": False, "uses_environments": True, "environments": "dataset"}
    assert m.MTCRL.environment_use(m.MTCRLHParams(girm="none")) is None
    assert m.MTCRL.environment_use(m.MTCRLHParams(lambda_girm=0.0)) is None
    assert label_use(erm, "erm", info, {}).environments is None


@pytest.mark.parametrize("spec, message", [
    (RunSpec("synthetic", "erm", aux=("mtcrl",)),
     "objective 'mtcrl' routes modules between tasks and needs at least 2, but dataset 'synthetic' has 1"),
    (RunSpec("_mt_envs2", "dfr", aux=("mtcrl",)),
     "dfr retrains the linear task heads on the pooled features, but objective 'mtcrl' replaces those heads"),
    (RunSpec("_mt_envs2", "erm", aux=("mtcrl",), overrides=("model.head_norm=1",)),
     "model.head_norm rescales the linear task heads, which objective 'mtcrl' replaces"),
    (RunSpec("_mt_envs2", "mt", aux=("mtcrl",)), "algorithm 'mt' needs an auxiliary objective"),
    (RunSpec("_mt_envs2", "stl", aux=("mtcrl",)), "stl trains one model per task and takes no objectives"),
])
def test_bad_combinations_are_one_line_and_write_nothing(two_tasks: Any, tmp_path: Path, spec: RunSpec,
                                                         message: str) -> None:
    two_tasks("_mt_envs2", ("e0", "e1"))
    with pytest.raises(ConfigError) as err:
        run(spec, tmp_path / "r")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "r").exists()


# -- conformance --------------------------------------------------------------------------------------------
def test_conformance_objective() -> None:
    testing.check_objective("mtcrl")  # on two tasks and two environments: it refuses one task


@pytest.mark.parametrize("algo", ["erm", "irm", "vrex", "group_dro", "jtt", "pcgrad", "dann", "erm_l1"])
def test_conformance_with_algorithms(algo: str) -> None:
    testing.check_algorithm(algo, aux=("mtcrl",))


def test_conformance_mt_with_an_auxiliary_task_and_mtcrl() -> None:
    testing.check_algorithm("mt", aux=("recon", "mtcrl"))


# -- a real run ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_erm_mtcrl_run_on_multidigits(tmp_path: Path) -> None:
    """The acceptance run at the dataset's defaults (5 epochs): under 3 minutes on 2 CPU cores when unloaded."""
    out = tmp_path / "run"
    start, cpu = time.perf_counter(), time.process_time()
    res = CliRunner().invoke(main, ["run", "--algo", "erm", "--aux", "mtcrl", "--data", "multidigits",
                                    "--device", "cpu", "--quiet", "--out", str(out)])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["algorithm_flags"]["uses_environments"] is True
    assert config["algorithm_flags"]["environments"] == "dataset"
    notes = config["notes"]["objective:mtcrl"]
    assert notes["K"] == 8 and notes["d"] == 16 and notes["routing"].startswith("concat")
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "train/loss_mtcrl" in record and record["val/avg_acc"] > 0.5  # it learns (chance: 0.1)
    print(f"erm+mtcrl on multidigits: {wall:.0f} s wall, {cpu:.0f} s CPU of this process")
