"""Conformance checks for components (core and plugins): build, a few updates, predict, checkpoint, on tiny data."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import math
from typing import Any, Callable

import torch
from torch import Tensor

from .checkpoint import seed_everything
from .config import ModelHParams, TrainHParams
from .data.base import SPLITS, TensorSplit
from .testdata import BATCH, STEPS, tiny_data
from .errors import ConfigError, RobustbenchError
from .hparams import build, check_declaration, fields_of
from .labels import algorithm_info, label_use, train_view
from .loaders import AuxStream, epoch_batches
from .objectives.base import AuxiliaryTask, Penalty
from .presets import layers
from .registry import ALGORITHMS, BACKBONES, DATASETS, OBJECTIVES
from .trainer import assemble
from .types import Outputs

# The default image and text backbones, shrunk so a check costs well under a second on one CPU thread.
TINY_VIT = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32, "patch_size": 4}
TINY_BERT = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32, "vocab_size": 60}
TINY = {"vit_tiny": TINY_VIT, "bert_tiny": TINY_BERT}


def _contract(fn: Callable[..., None]) -> Callable[..., None]:
    """A harness error while checking (a misfit the component declared fine, a non-finite loss) is a violation."""
    @functools.wraps(fn)
    def wrapper(name: str, *args: Any, **kwargs: Any) -> None:
        try:
            fn(name, *args, **kwargs)
        except RobustbenchError as exc:
            raise AssertionError(f"{fn.__name__}('{name}'): {exc}") from exc
    return wrapper


def _check_component(kind: str, name: str, cls: Any) -> None:
    """Docstring first line (what `list` prints) and HParams: a frozen dataclass, every field defaulted and helped."""
    doc = inspect.getdoc(cls) or ""
    assert doc and doc.splitlines()[0].strip(), f"{kind} '{name}': the docstring's first line is empty"
    hp_cls = getattr(cls, "HParams", None)
    assert dataclasses.is_dataclass(hp_cls), f"{kind} '{name}': HParams must be a dataclass"
    assert hp_cls.__dataclass_params__.frozen, f"{kind} '{name}': HParams must be @dataclass(frozen=True)"
    for f in dataclasses.fields(hp_cls):
        assert f.default is not dataclasses.MISSING and f.metadata.get("help"), \
            f"{kind} '{name}': HParams.{f.name} needs a default and help text: hp(default, help=...)"
    for info in fields_of(hp_cls):  # ConfigError (an AssertionError here) names the field and its range
        check_declaration(name, info)
    hp_cls()


def _finite_losses(who: str, out: Any) -> dict[str, float]:
    assert isinstance(out, dict) and "loss" in out, f"{who}: update() must return a dict with 'loss', got {out!r}"
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values()), \
        f"{who}: update() must return finite floats, got {out!r}"
    return out


def _roundtrip(obj: Any) -> Any:
    """Save and load as the runner's checkpoints do: torch.save, then torch.load(weights_only=True)."""
    torch.save(obj, buf := io.BytesIO())
    return torch.load(io.BytesIO(buf.getvalue()), weights_only=True)


class _Setup:
    """One algorithm + objectives + backbone on tiny data, built through `runner.assemble`, as runs are."""

    def __init__(self, algorithm: str, aux: tuple[str, ...], backbone: str, modality: str,
                 backbone_hp: dict[str, Any] | None = None, tasks: int = 1) -> None:
        self.who = f"algorithm '{algorithm}' with aux {list(aux)} on backbone '{backbone}'" + (
            f" with {tasks} tasks" if tasks > 1 else "")
        self.algo_cls = ALGORITHMS.get(algorithm)
        names = list(dict.fromkeys((*aux, *getattr(self.algo_cls, "extra_objectives", ()))))
        self.obj_classes = {o: OBJECTIVES.get(o) for o in names}
        self.backbone_cls = BACKBONES.get(backbone)
        self.backbone_hp = build(self.backbone_cls.HParams, "backbone", [backbone_hp or {}])
        self.info, self.splits = tiny_data(modality, 0, self.backbone_cls, self.backbone_hp, tasks)
        self.backbone_cls.check(backbone, self.info)
        for o, c in self.obj_classes.items():
            c.check(o, backbone, self.backbone_cls, self.info)
        self.algo_cls.check(algorithm, self.info, tuple(names))
        self.train_hp = TrainHParams(epochs=1, batch_size=BATCH, lr=1e-3, patience=0)
        # As the runner: the algorithm sees only the group and environment ids it declares a use of.
        self.use = label_use(self.algo_cls, algorithm, self.info, {
            o: what for o, c in self.obj_classes.items() if (what := c.environment_use(c.HParams()))})
        self.train = train_view(self.splits["train"], self.use)

    def build(self, seed: int) -> Any:
        classes = {"backbone": self.backbone_cls, "algorithm": self.algo_cls,
                   **{f"objective:{o}": c for o, c in self.obj_classes.items()}}
        hparams = {"backbone": self.backbone_hp, "algorithm": self.algo_cls.HParams(), "train": self.train_hp,
                   "model": ModelHParams(), **{o: c.HParams() for o, c in self.obj_classes.items()}}
        return assemble(classes, hparams, list(self.obj_classes), algorithm_info(self.info, self.use), seed, STEPS)

    def train_steps(self, algo: Any, seed: int) -> tuple[list[dict[str, float]], AuxStream | None]:
        algo.train_split = self.train
        algo.setup(self.train)
        weights, repeats = algo.sampler_weights(self.train), algo.sampler_repeats(self.train)
        if weights is not None:
            ok = weights.shape == (len(self.train),) and bool((weights >= 0).all()) and float(weights.sum()) > 0
            assert ok, f"{self.who}: sampler_weights must be non-negative [N] with a positive sum"
        if repeats is not None:
            ok = repeats.shape == (len(self.train),) and not repeats.is_floating_point() and bool((repeats >= 0).all())
            assert ok and weights is None, f"{self.who}: sampler_repeats must be integer >= 0 [N], without weights"
        has_aux = any(isinstance(o, AuxiliaryTask) for o in algo.model.objectives.values())
        aux = AuxStream(self.train, BATCH, seed) if has_aux else None
        batches = list(epoch_batches(self.train, BATCH, seed, 0, weights, repeats))[:STEPS]
        return [_finite_losses(self.who, algo.update(b, aux.next() if aux else None)) for b in batches], aux

    def predict(self, algo: Any) -> dict[str, Tensor]:
        out = algo.predict(self.splits["val"].inputs(slice(0, BATCH)))
        assert set(out) == set(self.info.tasks), f"{self.who}: predict() keys {sorted(out)} != tasks"
        for t, c in self.info.tasks.items():
            assert out[t].shape == (BATCH, c) and bool(torch.isfinite(out[t]).all()), \
                f"{self.who}: predict()['{t}'] must be finite logits [B, {c}], got shape {tuple(out[t].shape)}"
        return out

    def run(self) -> None:
        """Updates, predict, determinism, checkpoint round trip, and resuming gives the same next step."""
        torch.set_num_threads(1)
        a = self.build(seed=0)
        before = {n: p.detach().clone() for n, p in a.named_parameters() if p.requires_grad}
        losses, aux = self.train_steps(a, seed=0)
        # A parameter that gets gradients but never moves is in no optimizer (e.g. a second network built
        # outside __init__); one without gradients (an unused mask token) is simply not used by this setup.
        frozen = [n for n, p in a.named_parameters() if n in before and torch.equal(before[n], p.detach())
                  and p.grad is not None and bool(p.grad.abs().sum() > 0)]
        assert not frozen, (f"{self.who}: parameters received gradients but never changed in {STEPS} updates: "
                            f"{frozen[:5]}; networks the algorithm adds must be attributes set in __init__ (the "
                            f"optimizer covers optimized_parameters()) or be stepped by its own optimizer")
        pred = self.predict(a)
        again, _ = self.train_steps(self.build(seed=0), seed=0)
        assert losses == again, f"{self.who}: the same seed gave different losses:\n{losses}\n{again}"
        b = self.build(seed=1)  # other initial weights, so equal predictions prove the state was loaded
        for p in ("", "optimizer", "scheduler"):  # what the runner's checkpoint.pt holds
            (getattr(b, p) if p else b).load_state_dict(_roundtrip((getattr(a, p) if p else a).state_dict()))
        b.load_extra_state(extra := _roundtrip(a.extra_state()))
        assert _same(_roundtrip(b.extra_state()), extra), f"{self.who}: load_extra_state(extra_state()) changed it"
        assert _same(self.predict(b), pred, 1e-5), f"{self.who}: predictions differ after a state_dict round trip"
        batch, aux_batch, nxt = self.train.batch(torch.arange(BATCH)), aux.next() if aux else None, []
        for algo in (a, b):  # the same RNG state for both, as a resumed run restores it
            seed_everything(7)
            nxt.append(_finite_losses(self.who, algo.update(batch, aux_batch)))
        assert _same(*nxt, 1e-5), f"{self.who}: a restored checkpoint took a different step: {nxt[0]} vs {nxt[1]}"


def _same(x: Any, y: Any, tol: float = 0.0) -> bool:
    """Nested equality of tensors, numbers, lists and dicts, within `tol`."""
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same(x[k], y[k], tol) for k in x)
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(_same(u, v, tol) for u, v in zip(x, y))
    if isinstance(x, (Tensor, float)) and type(x) is type(y):
        return bool(torch.allclose(torch.as_tensor(x), torch.as_tensor(y), atol=tol, rtol=tol))
    return bool(x == y)


@_contract
def check_algorithm(name: str, aux: tuple[str, ...] = (), tasks: int | None = None) -> None:
    """Exercise algorithm `name` with `aux` (`recon` if it needs one and none is given), on `mlp`, a tiny ViT or
    a tiny BERT, whichever reads what the objectives need. `tasks`: 1, or 2 (a second task and 2 declared
    environments; not with text); by default 1, or 2 where the algorithm's `check` refuses one task."""
    cls = ALGORITHMS.get(name)
    _check_component("algorithm", name, cls)
    for flag in ("uses_train_groups", "uses_val_groups", "requires_auxiliary"):
        assert isinstance(getattr(cls, flag), bool), f"algorithm '{name}': {flag} must be a bool"
    aux = tuple(aux) or (("recon",) if cls.requires_auxiliary else ())
    if all("tabular" in OBJECTIVES.get(o).modalities for o in aux):
        args: tuple[Any, ...] = ("mlp", "tabular")
    elif all("image" in OBJECTIVES.get(o).modalities for o in aux):
        args = ("vit_tiny", "image", TINY_VIT)
    else:
        args = ("bert_tiny", "text", TINY_BERT)
    if tasks is None:
        try:
            setup = _Setup(name, aux, *args)
        except ConfigError:  # refuses a one-task dataset (e.g. gradient surgery between tasks): two tasks
            setup = _Setup(name, aux, *args, tasks=2)
    else:
        setup = _Setup(name, aux, *args, tasks=tasks)
    setup.run()


@_contract
def check_objective(name: str) -> None:
    """Exercise objective `name` with ERM: tabular with `mlp` if it reads tables, else images with a tiny ViT;
    on two tasks (and 2 declared environments) where the objective's `check` refuses one task."""
    cls = OBJECTIVES.get(name)
    _check_component("objective", name, cls)
    assert "weight" in {f.name for f in dataclasses.fields(cls.HParams)}, f"objective '{name}': HParams needs weight"
    base = {"auxiliary": AuxiliaryTask, "penalty": Penalty}.get(getattr(cls, "role", None))
    assert base is not None and issubclass(cls, base), f"objective '{name}': subclass AuxiliaryTask or Penalty"
    if "tabular" in cls.modalities and not cls.needs_masking:
        args: tuple[Any, ...] = ("mlp", "tabular")
    elif "image" in cls.modalities:
        args = ("vit_tiny", "image", TINY_VIT)
    else:
        assert "text" in cls.modalities, f"objective '{name}': only tabular, image and text objectives can be checked"
        args = ("bert_tiny", "text", TINY_BERT)
    try:
        setup = _Setup("erm", (name,), *args)
    except ConfigError:  # refuses a one-task dataset (e.g. mtcrl's routing between tasks): two tasks
        setup = _Setup("erm", (name,), *args, tasks=2)
    algo = setup.build(seed=0)
    out = algo.model(setup.train.inputs(slice(0, BATCH)))
    if base is AuxiliaryTask:
        result = algo.model.objectives[name].loss(algo.model, AuxStream(setup.train, BATCH, 0).next(), out)
        assert isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], list) and all(
            isinstance(p, Outputs) for p in result[1]), f"objective '{name}': loss() must return (loss, [Outputs])"
        loss = result[0]
    else:
        loss = algo.model.objectives[name].loss({"end": out})
    assert isinstance(loss, Tensor) and loss.dim() == 0 and loss.requires_grad, \
        f"objective '{name}': the loss must be a scalar tensor that depends on trainable parameters"
    setup.run()


@_contract
def check_backbone(name: str, **hparam_overrides: Any) -> None:
    """Shapes, masking and backward on 8 inputs, then the whole ERM cycle on tiny data of its first modality."""
    cls = BACKBONES.get(name)
    _check_component("backbone", name, cls)
    modality = next((m for m in ("tabular", "image", "text") if m in cls.modalities), "?")
    assert modality != "?", f"backbone '{name}': only tabular, image and text backbones can be checked"
    overrides = {**TINY.get(name, {}), **hparam_overrides}
    hparams = build(cls.HParams, "backbone", [overrides])
    info, splits = tiny_data(modality, 0, cls, hparams)
    torch.manual_seed(0)
    net = cls(hparams, info)
    x = splits["train"].inputs(slice(0, 8))
    out = net(x)
    assert isinstance(out, Outputs) and isinstance(getattr(net, "out_dim", None), int) \
        and out.pooled.shape == (8, net.out_dim), f"backbone '{name}': forward must return Outputs, pooled [B, out_dim]"
    if cls.has_tokens:
        assert out.tokens is not None and out.tokens.dim() == 3 and out.tokens.shape[::2] == (8, net.out_dim), \
            f"backbone '{name}': has_tokens needs tokens [B, L, out_dim]"
    if cls.supports_masking:
        assert all(isinstance(getattr(net, a, None), int) for a in ("patch_size", "grid", "num_channels")), \
            f"backbone '{name}': supports_masking needs int patch_size, grid and num_channels"
        mask = (torch.arange(net.grid ** 2) % 2 == 0).expand(8, -1)
        assert not torch.allclose(net(x, mask=mask).pooled, out.pooled), f"backbone '{name}': masking changed nothing"
    out.shared.float().pow(2).mean().backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.parameters()), \
        f"backbone '{name}': no gradient reached its parameters"
    _Setup("erm", (), name, modality, overrides).run()


@_contract
def check_dataset(name: str, **hparam_overrides: Any) -> None:
    """load(): three consistent splits, labels and groups in range; info(), defaults and presets well-formed."""
    cls = DATASETS.get(name)
    _check_component("dataset", name, cls)
    assert cls.modality in ("tabular", "image", "text") and cls.group_names and cls.tasks, \
        f"dataset '{name}': declare tasks, group_names and a modality (tabular, image or text)"
    ds = cls(build(cls.HParams, "data", [hparam_overrides]), name)
    if cls.modality == "text":  # token ids come from the default backbone's tokenizer, as in a run
        backbone_cls = BACKBONES.get(cls.default_backbone)
        ds.use_tokenizer(backbone_cls.tokenizer_dir(build(backbone_cls.HParams, "backbone", [
            TINY.get(cls.default_backbone, {})]), ds))
    splits = ds.load()
    assert set(SPLITS) <= set(splits), f"dataset '{name}': load() must return {SPLITS}, got {sorted(splits)}"
    for split in SPLITS:
        _check_split(f"dataset '{name}' split '{split}'", splits[split], cls, -1 if split == "train" else 0)
    info = ds.info()
    train = splits["train"]  # what the model reads: images after the eval transform, token ids before trimming
    shape = tuple(train.x.shape[1:] if cls.modality == "text" else train.inputs(slice(0, 1)).shape[1:])
    assert info.input_shape == shape and info.tasks == dict(cls.tasks), \
        f"dataset '{name}': info() disagrees with the data"
    BACKBONES.get(cls.default_backbone).check(cls.default_backbone, info)
    scopes = {"data": cls.HParams, "train": TrainHParams, "model": ModelHParams,
              "backbone": BACKBONES.get(cls.default_backbone).HParams}
    _check_layer(name, "defaults", cls.defaults, scopes)
    for preset_name, preset in cls.presets.items():
        backbone = preset.get("backbone", cls.default_backbone) if hasattr(preset, "get") else cls.default_backbone
        own = {**scopes, "backbone": BACKBONES.get(backbone).HParams}
        for where, layer in layers(preset):
            method = where.removeprefix("methods.").split("+")[0] if where.startswith("methods.") else None
            with_algo = {**own, "algorithm": ALGORITHMS.get(method).HParams} if method else own
            _check_layer(name, f"preset {preset_name} {where}".strip(), layer, with_algo)


def _check_layer(name: str, what: str, layer: Any, scopes: dict[str, Any]) -> None:
    """Every key of a defaults or preset layer is scope.field of a known scope, with a valid value."""
    for key, value in layer.items():
        scope, dot, field = key.partition(".")
        assert dot and scope and field, f"dataset '{name}' {what}: key {key!r} must look like scope.field"
        hp_cls = scopes.get(scope) or (OBJECTIVES.get(scope).HParams if scope in OBJECTIVES.names() else None)
        if hp_cls is not None:  # ConfigError (an AssertionError here) on an unknown field or a wrong type
            build(hp_cls, scope, [{field: value}])


def _check_split(where: str, s: TensorSplit, cls: Any, low: int) -> None:
    """Lengths agree, labels in [-1, C) per task, group ids in [low, groups) (val/test: every group known)."""
    n = len(s)
    assert n > 0 and s.x.shape[0] == n and s.e.shape == (n,), f"{where}: x, g and e lengths differ"
    assert s.x.dtype in (torch.float32, torch.uint8, torch.int32, torch.int64), \
        f"{where}: x must be float32 or uint8 (images, tables), or int32/int64 token ids, got {s.x.dtype}"
    assert set(s.y) == set(cls.tasks), f"{where}: labels for {sorted(s.y)} but tasks are {sorted(cls.tasks)}"
    for t, c in cls.tasks.items():
        y = s.y[t]
        assert y.shape == (n,) and not y.is_floating_point() and bool(((y >= -1) & (y < c)).all()) \
            and bool((y >= 0).any()), f"{where}: y['{t}'] must be integer [N] in [-1, {c})"
    assert bool(((s.g >= low) & (s.g < len(cls.group_names))).all()), \
        f"{where}: group ids outside [{low}, {len(cls.group_names)})"
