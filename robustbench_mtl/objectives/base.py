"""The objective contract: auxiliary tasks (own forward pass on the auxiliary batch) and penalties."""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import Tensor, nn

from ..backbones.base import Backbone
from ..data.base import DataInfo
from ..errors import ConfigError
from ..types import Batch, Outputs

if TYPE_CHECKING:
    from ..model import Model

# The paper's search grid for objective weights: e^k, k in {-1, 0, 1} (docs/methods.md#mt_l1).
PAPER_WEIGHT_GRID = (0.3679, 1.0, 2.7183)


class Objective(nn.Module, abc.ABC):
    """A weighted loss term added to the end-task loss; its HParams must have a `weight` field.

    Objectives with parameters (decoders, projection heads) are submodules of the model, so the
    optimizer trains them and checkpoints hold them.
    """

    HParams: ClassVar[type]
    role: ClassVar[Literal["auxiliary", "penalty"]]
    modalities: ClassVar[tuple[str, ...]] = ("tabular", "image", "text")
    needs_masking: ClassVar[bool] = False
    # True: `task_logits` replaces the model's linear task heads (prediction and end-task loss); at most one
    # objective of a run may provide heads.
    provides_heads: ClassVar[bool] = False

    def __init__(self, hparams: Any, backbone: Backbone, info: DataInfo) -> None:
        super().__init__()
        self.hparams = hparams

    @property
    def weight(self) -> float:
        return float(self.hparams.weight)

    @classmethod
    def check(cls, name: str, backbone_name: str, backbone_cls: type[Backbone], info: DataInfo) -> None:
        """Raise ConfigError if this objective does not fit the dataset or backbone."""
        if info.modality not in cls.modalities:
            needs = f"{'/'.join(cls.modalities)} inputs" + (" and a backbone with patch masking"
                                                          if cls.needs_masking else "")
            raise ConfigError(
                f"objective '{name}' needs {needs}, but dataset '{info.name}' is {info.modality} (backbone "
                f"'{backbone_name}'); pick another --aux (see `robustbench-mtl list objectives`)"
            )
        if cls.needs_masking and not backbone_cls.supports_masking:
            raise ConfigError(
                f"objective '{name}' needs a backbone with patch masking, and '{backbone_name}' has none; "
                f"use a ViT backbone such as --backbone vit_tiny or vit_b16"
            )

    @classmethod
    def environment_use(cls, hparams: Any) -> str | None:
        """What of this objective reads training environment ids (`batch.e`) with these hparams, in words for
        error messages, or None. Not None: the run needs >= 2 declared training environments and then every
        component sees them (labels.label_use; config.json's `algorithm_flags.uses_environments`)."""
        return None

    def task_logits(self, out: Outputs) -> dict[str, Tensor]:
        """Logits per task from the end-task pass, for objectives with `provides_heads`."""
        raise NotImplementedError(f"{type(self).__name__} does not provide task heads")

    def loss_divisor(self) -> float:
        """Divide this step's whole loss by this (an annealed penalty weight > 1, as IRM rescales); 1 = no
        change. Read in `Algorithm.step`, after this step's `objective_terms`."""
        return 1.0

    def restarts_optimizer(self) -> bool:
        """True on the step whose loss scale jumps (an anneal switch): `Algorithm.step` clears the optimizer's
        moments before stepping, as IRM does at its anneal step. Read after this step's `objective_terms`."""
        return False

    def post_step(self) -> None:
        """Called after every optimizer step (e.g. to project decoder weights)."""


class AuxiliaryTask(Objective):
    """A self-supervised task on the auxiliary batch (an independently shuffled batch of train inputs)."""

    role = "auxiliary"

    @abc.abstractmethod
    def loss(self, model: "Model", batch: Batch, outputs: Outputs) -> tuple[Tensor, list[Outputs]]:
        """(unweighted loss, the shared representations of its own forward passes).

        `batch` is the auxiliary batch; `outputs` is the end-task pass (for objectives that pair with it).
        """


class Penalty(Objective):
    """A regularizer on shared representations (the end-task pass and every auxiliary pass)."""

    role = "penalty"

    @abc.abstractmethod
    def loss(self, reps: dict[str, Outputs]) -> Tensor:
        """Unweighted penalty over the representations, keyed by pass ('end', 'simclr/0', ...)."""

    def batch_loss(self, reps: dict[str, Outputs], batch: Batch, total_steps: int) -> Tensor:
        """What the algorithms add each step: `loss(reps)`, unless a penalty also reads the end-task batch
        (labels, environment ids; hidden ids are -1) or the schedule's length `total_steps`."""
        return self.loss(reps)
