"""The dataset contract: tasks, groups, splits held as tensors, defaults, and a generation cache."""
from __future__ import annotations

import abc
import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import Tensor

from ..hparams import NoHParams, to_dict
from ..results import atomic_torch_save
from ..types import Batch
from ._files import Inside, OutsideRoot  # noqa: F401  (public: datasets read from disk join names with it)

SPLITS = ("train", "val", "test")
# Waterbirds' groups (label x background, g = 2 * y + place); the toybirds stand-in uses the same names.
WATERBIRDS_GROUPS = ("landbird_land", "landbird_water", "waterbird_land", "waterbird_water")
Modality = Literal["tabular", "image", "text"]


Transform = Callable[[Tensor], Tensor]


@dataclass
class TensorSplit:
    """One split: inputs, labels per task, group ids and environment ids, and how inputs are viewed.

    Group ids index the dataset's `group_names`, environment ids its `environment_names` (0 where it
    declares none); -1 means hidden (the algorithm did not declare a use) or unknown.
    `x` holds the stored inputs (uint8 images are scaled to [0, 1] when read). `eval_transform` maps
    stored inputs to what the model reads (e.g. a resize from the stored side to the model's);
    `train_transform` is the end-task training augmentation (e.g. RandomResizedCrop); both run on
    the split's device, on whole batches, and are None (identity) for data stored as the model reads it.
    """

    x: Tensor
    y: dict[str, Tensor]
    g: Tensor
    e: Tensor
    train_transform: Transform | None = field(default=None, repr=False, compare=False)
    eval_transform: Transform | None = field(default=None, repr=False, compare=False)
    # Overlapping evaluation groups [N, G] bool (CivilComments: label x each identity), for datasets that
    # declare `eval_group_names`; None elsewhere. Metrics then use them instead of `g`.
    groups: Tensor | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.g.shape[0])

    def gather(self, idx: Tensor | slice) -> Tensor:
        """The stored rows at `idx`, on the split's device, unconverted (no randomness: thread-safe)."""
        return self.x[idx]

    def raw(self, idx: Tensor | slice, rows: Tensor | None = None) -> Tensor:
        """Float stored inputs at `idx` (uint8 scaled to [0, 1]), before any transform; auxiliary tasks
        take their own views of these. `rows` = an earlier `gather(idx)` (a prefetch)."""
        x = self.gather(idx) if rows is None else rows
        return x.float().div_(255) if x.dtype == torch.uint8 else x

    def inputs(self, idx: Tensor | slice) -> Tensor:
        """What the model reads for evaluation: `eval_transform` of the float inputs at `idx`."""
        x = self.raw(idx)
        return self.eval_transform(x) if self.eval_transform is not None else x

    def batch(self, idx: Tensor, rows: Tensor | None = None) -> Batch:
        """A training batch of the examples at `idx` (a LongTensor on the split's device), inputs through
        `train_transform` (else `eval_transform`)."""
        x = self.raw(idx, rows)
        transform = self.train_transform or self.eval_transform
        x = transform(x) if transform is not None else x
        return Batch(x, {k: v[idx] for k, v in self.y.items()}, self.g[idx], self.e[idx], idx)

    def to(self, device: torch.device | str) -> "TensorSplit":
        return replace(self, x=self.x.to(device), y={k: v.to(device) for k, v in self.y.items()},
                       g=self.g.to(device), e=self.e.to(device),
                       groups=None if self.groups is None else self.groups.to(device))

    def subset(self, idx: Tensor) -> "TensorSplit":
        """The examples at `idx` as a split of their own (same transforms)."""
        idx = idx.to(self.g.device)
        return replace(self, x=self.gather(idx), y={k: v[idx] for k, v in self.y.items()}, g=self.g[idx],
                       e=self.e[idx], groups=None if self.groups is None else self.groups[idx])

    def state(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "g": self.g, "e": self.e}


@dataclass(frozen=True)
class DataInfo:
    """What backbones, objectives and metrics need to know about a dataset."""

    name: str
    modality: Modality
    input_shape: tuple[int, ...]
    tasks: dict[str, int]
    group_names: tuple[str, ...]
    train_group_counts: tuple[int, ...]
    environment_names: tuple[str, ...] = ()
    train_env_counts: tuple[int, ...] = ()
    eval_group_names: tuple[str, ...] = ()  # overlapping evaluation groups, where they differ from groups
    train_eval_group_counts: tuple[int, ...] = ()
    tokenizer: str = ""  # text datasets: the directory of the tokenizer their token ids come from


class Dataset(abc.ABC):
    """A dataset with named tasks (name -> number of classes), named groups and train/val/test splits.

    Subclasses set the class attributes and implement `generate` (embedded data) or override `load`.
    `defaults` are dotted overrides (e.g. {"train.lr": 0.05}) applied above class defaults.
    `environment_names` declares the training environments that `e` indexes (e.g. the confounding
    strengths of a multi-task dataset); a dataset without them leaves it empty, and environment-based
    algorithms then use its training groups as environments.
    """

    HParams: ClassVar[type] = NoHParams
    tasks: ClassVar[dict[str, int]] = {"y": 2}
    group_names: ClassVar[tuple[str, ...]] = ()
    environment_names: ClassVar[tuple[str, ...]] = ()
    eval_group_names: ClassVar[tuple[str, ...]] = ()
    modality: ClassVar[Modality] = "tabular"
    default_backbone: ClassVar[str] = "mlp"
    defaults: ClassVar[dict[str, Any]] = {}
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    version: ClassVar[str] = "1"

    def __init__(self, hparams: Any, name: str) -> None:
        self.hparams = hparams
        self.name = name
        self._splits: dict[str, TensorSplit] | None = None

    def load(self) -> dict[str, TensorSplit]:
        """The three splits, generated once and then read from the cache."""
        if self._splits is None:
            self._splits = self._load_cached()
        return self._splits

    @abc.abstractmethod
    def generate(self) -> dict[str, TensorSplit]:
        """Build the splits from scratch, deterministically (same hparams, same tensors)."""

    def info(self) -> DataInfo:
        splits = self.load()
        train = splits["train"]
        counts = torch.bincount(train.g[train.g >= 0], minlength=len(self.group_names))
        envs = tuple(self.environment_names)
        env_counts = torch.bincount(train.e[train.e >= 0], minlength=len(envs)) if envs else torch.zeros(0)
        eval_counts = () if train.groups is None else tuple(int(c) for c in train.groups.sum(0))
        return DataInfo(self.name, self.modality, self.input_shape(train), dict(self.tasks),
                        tuple(self.group_names), tuple(int(c) for c in counts), envs,
                        tuple(int(c) for c in env_counts), tuple(self.eval_group_names), eval_counts,
                        self.tokenizer_dir())

    def tokenizer_dir(self) -> str:
        """Text datasets: the tokenizer their token ids come from ('' for other modalities)."""
        return ""

    def input_shape(self, train: TensorSplit) -> tuple[int, ...]:
        """The shape of one input as the model reads it: the stored shape, unless the dataset's
        `eval_transform` changes it (images stored above the model's side)."""
        return tuple(train.x.shape[1:])

    def fingerprint(self) -> str:
        """A short hash of the split tensors, recorded in every run's provenance."""
        h = hashlib.sha256()
        for split in SPLITS:
            s = self.load()[split]
            for t in (s.x, *s.y.values(), s.g, s.e):
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    # -- cache -----------------------------------------------------------------------
    def _cache_path(self) -> Path:
        key = hashlib.sha256(repr((self.name, self.version, sorted(to_dict(self.hparams).items()))).encode())
        return cache_dir() / f"{self.name}-v{self.version}-{key.hexdigest()[:12]}.pt"

    def _load_cached(self) -> dict[str, TensorSplit]:
        path = self._cache_path()
        if path.exists():
            try:
                state = torch.load(path, weights_only=True)
                return {k: TensorSplit(**state[k]) for k in SPLITS}
            except Exception:  # a damaged cache file is rebuilt, never trusted
                path.unlink(missing_ok=True)
        splits = self.generate()
        try:
            atomic_torch_save({k: splits[k].state() for k in SPLITS}, path)
        except OSError:  # a read-only cache only costs regeneration time
            pass
        return splits


def cache_dir() -> Path:
    """Where embedded datasets are cached: $ROBUSTBENCH_MTL_CACHE, else ~/.cache/robustbench_mtl."""
    env = os.environ.get("ROBUSTBENCH_MTL_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "robustbench_mtl"
    return base


def group_ids(labels: Tensor, attrs: Tensor, n_attrs: int) -> Tensor:
    """Group id = label * n_attrs + attribute (the convention of Waterbirds and the MTL code)."""
    return labels.long() * n_attrs + attrs.long()
