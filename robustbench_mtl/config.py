"""What a run is: the user's request (RunSpec), the runner's own hparams, and resolution to one config."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .data.base import Dataset, DataInfo
from .errors import ConfigError
from .hparams import Choice, LogUniform, build, draw, hp, parse_assignment, to_dict
from .labels import LabelUse, label_use
from .presets import Preset, load_preset, method_key
from .registry import ALGORITHMS, BACKBONES, DATASETS, OBJECTIVES, Provider


@dataclass(frozen=True)
class TrainHParams:
    """The training loop's hyperparameters (scope `train`)."""

    epochs: int = hp(20, ge=1, help="maximum number of epochs")
    batch_size: int = hp(64, Choice((16, 32, 64, 128)), ge=1, help="end-task batch size")
    aux_batch_size: int = hp(0, ge=0, help="auxiliary batch size; 0 = same as batch_size (the paper)")
    lr: float = hp(1e-3, LogUniform(1e-4, 1e-2), gt=0, help="learning rate")
    weight_decay: float = hp(0.0, ge=0, help="weight decay")
    no_decay: Literal["none", "bias_norm", "inverted"] = hp(
        "none", help="parameters exempt from weight decay: none; bias_norm = biases and LayerNorm weights (the usual "
                     "BERT recipe, the paper's stated one); inverted = the released text code's bug, where only "
                     "biases and LayerNorm weights decay")
    adam_eps: float = hp(1e-8, gt=0, help="Adam/AdamW epsilon (the paper: 1e-8)")
    optimizer: Literal["adam", "adamw", "sgd"] = hp("adam", help="optimizer")
    momentum: float = hp(0.9, ge=0, lt=1, help="SGD momentum")
    scheduler: Literal["constant", "cosine", "linear"] = hp("constant", help="learning-rate schedule")
    warmup_steps: int = hp(0, ge=0, help="linear warmup steps")
    warmup_ratio: float = hp(0.0, ge=0, le=1, help="warmup as a fraction of the schedule's total steps, when "
                                                   "warmup_steps is 0 (the paper's multitask text runs: 0.06)")
    grad_clip: float = hp(0.0, ge=0, help="clip the gradient norm to this value; 0 = off")
    patience: int = hp(10, ge=0, help="stop when both val worst-group and val average accuracy stalled this "
                                "many epochs; 0 = never stop early")
    eval_batch_size: int = hp(512, ge=1, help="batch size for evaluation")
    precision: Literal["auto", "fp32", "bf16"] = hp("auto", help="auto = bf16 autocast on CUDA, fp32 on CPU")
    deterministic: bool = hp(False, help="torch deterministic algorithms (and CUBLAS_WORKSPACE_CONFIG on CUDA): "
                                         "bit-identical CUDA reruns, at some speed; CPU runs are deterministic anyway")


@dataclass(frozen=True)
class ModelHParams:
    """How the runner assembles the model around the backbone (scope `model`)."""

    head_norm: float = hp(0.0, ge=0, help="rescale each task head's weight to this Frobenius norm after every "
                                    "step; 0 = off")


@dataclass(frozen=True)
class RunSpec:
    """What the user asked for; `resolve` turns it into a full config."""

    data: str
    algorithm: str
    aux: tuple[str, ...] = ()
    backbone: str | None = None
    seed: int = 0
    hparams_seed: int = 0
    preset: str | None = None
    overrides: tuple[str, ...] = ()
    device: str = "auto"
    threads: int = 0  # CPU threads; 0 = auto (see runner.set_threads). Not part of a run's identity.
    log: tuple[str, ...] = ()  # per-run loggers (loggers.LOGGERS). Not part of a run's identity either.

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["aux"], d["overrides"], d["log"] = list(self.aux), list(self.overrides), list(self.log)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RunSpec":
        d = dict(d)
        d["aux"], d["overrides"] = tuple(d.get("aux", ())), tuple(d.get("overrides", ()))
        d["log"] = tuple(d.get("log", ()))
        return cls(**d)


@dataclass
class Resolved:
    """A validated run: components, objectives in order, hparams per scope, the loaded dataset, and the
    labels the algorithm may see (`use`)."""

    spec: RunSpec
    backbone: str
    objectives: list[str]
    hparams: dict[str, Any]
    dataset: Dataset
    info: DataInfo
    use: LabelUse
    classes: dict[str, type] = field(repr=False, default_factory=dict)

    def hparams_json(self) -> dict[str, dict[str, Any]]:
        return {scope: to_dict(h) for scope, h in self.hparams.items()}

    def providers(self) -> dict[str, Provider]:
        provs = {
            "dataset": DATASETS.provider(self.spec.data),
            "backbone": BACKBONES.provider(self.backbone),
            "algorithm": ALGORITHMS.provider(self.spec.algorithm),
        }
        provs.update({f"objective:{o}": OBJECTIVES.provider(o) for o in self.objectives})
        return provs

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same run: components, seed and resolved hparams, however they were asked
        for (a preset and the same values given with --set are one configuration)."""
        return {"data": self.spec.data, "algorithm": self.spec.algorithm, "aux": list(self.spec.aux),
                "backbone": self.backbone, "seed": self.spec.seed, "hparams": self.hparams_json()}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]


def _dotted_layer(source: dict[str, Any], what: str) -> dict[str, dict[str, Any]]:
    layer: dict[str, dict[str, Any]] = {}
    for key, value in source.items():
        scope, dot, name = key.partition(".")
        if not dot:
            raise ConfigError(f"{what}: key {key!r} must look like scope.field")
        layer.setdefault(scope, {})[name] = value
    return layer


def _objective_list(spec: RunSpec, algo_cls: type) -> list[str]:
    names: list[str] = []
    for n in (*spec.aux, *getattr(algo_cls, "extra_objectives", ())):
        if n not in names:
            names.append(n)
    return names


def resolve(spec: RunSpec) -> Resolved:
    """Look up every component, apply hparam layers, load the data and check that everything fits."""
    data_cls = DATASETS.get(spec.data)
    algo_cls = ALGORITHMS.get(spec.algorithm)
    chosen = (load_preset(spec.preset, data_cls.presets, spec.data, method_key(spec.algorithm, spec.aux))
              if spec.preset else Preset())
    backbone = spec.backbone or chosen.backbone or data_cls.default_backbone
    backbone_cls = BACKBONES.get(backbone)
    objectives = _objective_list(spec, algo_cls)
    obj_classes = {o: OBJECTIVES.get(o) for o in objectives}
    scopes: dict[str, type] = {
        "data": data_cls.HParams, "backbone": backbone_cls.HParams, "algorithm": algo_cls.HParams,
        "train": TrainHParams, "model": ModelHParams, **{o: c.HParams for o, c in obj_classes.items()},
    }
    defaults = _dotted_layer(dict(data_cls.defaults), f"defaults of dataset '{spec.data}'")
    if backbone != data_cls.default_backbone:  # the dataset's backbone settings are for its own backbone
        defaults.pop("backbone", None)
    preset = _dotted_layer(chosen.overrides, "preset")
    explicit: dict[str, dict[str, Any]] = {}
    for text in spec.overrides:
        scope, name, value = parse_assignment(text)
        if scope not in scopes:
            raise ConfigError(f"--set {text}: scope '{scope}' is not part of this run "
                              f"(scopes: {', '.join(sorted(scopes))})")
        explicit.setdefault(scope, {})[name] = value
    for scope in preset:
        if scope not in scopes:
            raise ConfigError(f"preset '{spec.preset}': scope '{scope}' is not part of this run")
    hparams = {
        scope: build(cls, scope, [defaults.get(scope, {}), draw(cls, scope, spec.hparams_seed),
                                  preset.get(scope, {}), explicit.get(scope, {})])
        for scope, cls in scopes.items()
    }
    dataset = data_cls(hparams["data"], spec.data)
    if data_cls.modality == "text":  # token ids depend on the backbone's tokenizer: it is chosen first
        backbone_cls.check_modality(backbone, data_cls.modality, spec.data)
        dataset.use_tokenizer(backbone_cls.tokenizer_dir(hparams["backbone"], dataset))
    info = dataset.info()
    backbone_cls.check(backbone, info)
    for name, cls in obj_classes.items():
        cls.check(name, backbone, backbone_cls, info)
    if getattr(algo_cls, "requires_auxiliary", False) and not any(
        c.role == "auxiliary" for c in obj_classes.values()
    ):
        raise ConfigError(f"algorithm '{spec.algorithm}' needs an auxiliary objective: pass --aux with one of "
                          f"{', '.join(auxiliary_choices(backbone, backbone_cls, info))}")
    algo_cls.check(spec.algorithm, info, tuple(objectives))
    heads = [o for o, c in obj_classes.items() if c.provides_heads]
    if heads and hparams["model"].head_norm > 0:
        raise ConfigError(f"model.head_norm rescales the linear task heads, which objective '{heads[0]}' replaces "
                          f"with its own; leave model.head_norm at 0")
    env_objectives = {o: what for o, c in obj_classes.items() if (what := c.environment_use(hparams[o]))}
    use = label_use(algo_cls, spec.algorithm, info, env_objectives)
    classes = {"dataset": data_cls, "backbone": backbone_cls, "algorithm": algo_cls,
               **{f"objective:{o}": c for o, c in obj_classes.items()}}
    return Resolved(spec, backbone, objectives, hparams, dataset, info, use, classes)


def auxiliary_choices(backbone: str, backbone_cls: type, info: DataInfo) -> list[str]:
    """Auxiliary objectives that fit this dataset and backbone."""
    fits = []
    for name, cls in OBJECTIVES.load_all():
        if getattr(cls, "role", None) != "auxiliary":
            continue
        try:
            cls.check(name, backbone, backbone_cls, info)
        except ConfigError:
            continue
        fits.append(name)
    return fits
