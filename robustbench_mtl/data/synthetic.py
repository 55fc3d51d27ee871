"""The synthetic core/spurious task of arXiv 2312.03151 (reconstructed: docs/methods.md#synthetic)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..hparams import hp
from ..registry import DATASETS
from .base import Dataset, TensorSplit, group_ids


@dataclass(frozen=True)
class SyntheticHParams:
    n_train: int = hp(1000, ge=1, help="training points (the paper's Figure 1 shows 1000)")
    n_val_per_group: int = hp(250, ge=1, help="validation points per group (balanced)")
    n_test_per_group: int = hp(500, ge=1, help="test points per group (balanced; 4 x 500 as in the pilot)")
    agreement: float = hp(0.9, ge=0, le=1, help="P(spurious attribute = label) in train")
    sigma_core: float = hp(2.0, ge=0, help="noise of the core feature (mean +-1)")
    sigma_spur: float = hp(0.1, ge=0, help="noise of the spurious feature (mean +-1)")
    seed: int = hp(0, help="seed of the data draw (fixed splits; the run seed does not change the data)")


@DATASETS.register("synthetic")
class Synthetic(Dataset):
    """2-D synthetic task: a noisy core feature and a clean spurious one that agrees with y 90% in train.

    Reference: the synthetic experiment of Kulkarni, Dery et al. (arXiv 2312.03151, Figs. 1-5), as
    reconstructed in docs/methods.md#synthetic [RECON]. x = (y + 2 e1, s + 0.1 e2), y, s in {-1, +1};
    groups (y, s); val and test balanced over the 4 groups. Defaults are the settings measured for
    the reconstruction (docs/methods.md#synthetic).
    """

    HParams = SyntheticHParams
    tasks = {"y": 2}
    group_names = ("y0_s0", "y0_s1", "y1_s0", "y1_s1")  # s1 means spurious attribute +1
    modality = "tabular"
    default_backbone = "mlp"
    defaults = {
        "backbone.hidden": (), "backbone.rep_dim": 8, "backbone.norm": "layernorm",
        "model.head_norm": 1.0,
        "train.optimizer": "adam", "train.lr": 0.05, "train.batch_size": 50, "train.epochs": 100,
        "train.patience": 0,
        "recon.weight": round(math.e, 4), "recon.unit_decoder": True,
        "l1.weight": 30.0, "l1.target": "all_tokens", "l1.normalizer": "batch",
    }

    def _draw(self, gen: torch.Generator, y: torch.Tensor, s: torch.Tensor) -> TensorSplit:
        h = self.hparams
        core = y + h.sigma_core * torch.randn(len(y), generator=gen)
        spur = s + h.sigma_spur * torch.randn(len(y), generator=gen)
        y01, s01 = ((y + 1) / 2).long(), ((s + 1) / 2).long()
        x = torch.stack([core, spur], dim=1).float()
        return TensorSplit(x, {"y": y01}, group_ids(y01, s01, 2), torch.zeros(len(y), dtype=torch.long))

    def _balanced(self, gen: torch.Generator, per_group: int) -> TensorSplit:
        y = torch.tensor([-1.0, -1.0, 1.0, 1.0]).repeat_interleave(per_group)
        s = torch.tensor([-1.0, 1.0, -1.0, 1.0]).repeat_interleave(per_group)
        return self._draw(gen, y, s)

    def generate(self) -> dict[str, TensorSplit]:
        h = self.hparams
        gen = torch.Generator().manual_seed(h.seed)
        y = torch.randint(0, 2, (h.n_train,), generator=gen).float() * 2 - 1
        agree = torch.rand(h.n_train, generator=gen) < h.agreement
        s = torch.where(agree, y, -y)
        return {"train": self._draw(gen, y, s), "val": self._balanced(gen, h.n_val_per_group),
                "test": self._balanced(gen, h.n_test_per_group)}
