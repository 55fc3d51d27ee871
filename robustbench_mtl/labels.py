"""Which labels an algorithm may see: group and environment ids are hidden unless it declares a use."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, Mapping

import torch

from .data.base import DataInfo, TensorSplit
from .errors import ConfigError

EnvSource = Literal["dataset", "train_groups"]


@dataclass(frozen=True)
class LabelUse:
    """What one algorithm on one dataset sees, and so which labels its results depend on.

    `train_groups` is true when the algorithm reads training group ids directly (`uses_train_groups`) or
    through environments derived from them (`environments == "train_groups"`); `val_groups` when its
    `after_training` reads validation group ids (`uses_val_groups`).
    """

    train_groups: bool
    val_groups: bool
    environments: EnvSource | None
    direct_train_groups: bool

    def flags(self) -> dict[str, Any]:
        """The `algorithm_flags` of config.json."""
        return {"uses_train_groups": self.train_groups, "uses_val_groups": self.val_groups,
                "uses_environments": self.environments is not None, "environments": self.environments}


def label_use(algo_cls: type, algo_name: str, info: DataInfo,
              env_objectives: Mapping[str, str] | None = None) -> LabelUse:
    """The labels `algo_cls` (and the run's objectives) see on this dataset; an environment method with < 2
    environments is an error.

    A dataset without declared environments gives environment methods its training groups instead
    (SubpopBench uses the spurious attribute's values), which makes them training-group-label users.
    `env_objectives` maps each objective that reads environment ids with its hparams to what reads them
    (`Objective.environment_use`): those need >= 2 declared training environments (no group fallback), and
    then the whole run sees them, as when the algorithm declares `uses_environments`.
    """
    direct = bool(getattr(algo_cls, "uses_train_groups", False))
    envs: EnvSource | None = None
    for name, what in (env_objectives or {}).items():
        present = sum(1 for c in info.train_env_counts if c > 0) if info.environment_names else 0
        if present < 2:
            raise ConfigError(f"objective '{name}' needs at least 2 training environments for {what}, but dataset "
                              f"'{info.name}' declares {present}; use a dataset that declares training environments")
        envs = "dataset"
    if getattr(algo_cls, "uses_environments", False) and envs is None:
        envs = "dataset" if info.environment_names else "train_groups"
        names = info.environment_names if envs == "dataset" else info.group_names
        counts = info.train_env_counts if envs == "dataset" else info.train_group_counts
        present = sum(1 for c in counts if c > 0)
        if present < 2:
            what = "environments" if envs == "dataset" else "environments (it declares none, so its training groups)"
            raise ConfigError(f"algorithm '{algo_name}' needs at least 2 training environments, but dataset "
                              f"'{info.name}' has {present} {what} among {len(names)}; use another dataset or "
                              f"algorithm")
    return LabelUse(direct or envs == "train_groups", bool(getattr(algo_cls, "uses_val_groups", False)), envs,
                    direct)


def _hidden(ids: torch.Tensor) -> torch.Tensor:
    return torch.full_like(ids, -1)


def train_view(split: TensorSplit, use: LabelUse) -> TensorSplit:
    """The training split as the algorithm sees it: unused group and environment ids are -1."""
    g = split.g if use.direct_train_groups else _hidden(split.g)
    e = {"dataset": split.e, "train_groups": split.g, None: _hidden(split.e)}[use.environments]
    return replace(split, g=g, e=e, groups=split.groups if use.direct_train_groups else None)


def val_view(split: TensorSplit, use: LabelUse) -> TensorSplit:
    """Validation data for `after_training`: group ids only for algorithms that declare `uses_val_groups`."""
    e = split.e if use.environments == "dataset" else _hidden(split.e)
    return replace(split, g=split.g if use.val_groups else _hidden(split.g), e=e,
                   groups=split.groups if use.val_groups else None)


def algorithm_info(info: DataInfo, use: LabelUse) -> DataInfo:
    """`info` without the training group counts unless the algorithm reads training groups directly."""
    return info if use.direct_train_groups else replace(info, train_group_counts=(), train_eval_group_counts=())
