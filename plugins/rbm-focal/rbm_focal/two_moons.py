"""Two moons with a spurious coordinate: a curved core feature and a clean shortcut that agrees with y in train."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from robustbench_mtl.data.base import Dataset, TensorSplit, group_ids
from robustbench_mtl.hparams import hp


@dataclass(frozen=True)
class TwoMoonsHParams:
    n_train: int = hp(2000, ge=1, help="training points")
    n_val_per_group: int = hp(200, ge=1, help="validation points per group (balanced)")
    n_test_per_group: int = hp(500, ge=1, help="test points per group (balanced)")
    agreement: float = hp(0.9, ge=0, le=1, help="P(spurious attribute = label) in train")
    moon_noise: float = hp(0.2, ge=0, help="std of the Gaussian noise of make_moons (the core feature)")
    spur_noise: float = hp(0.1, ge=0, help="std of the noise of the spurious coordinate (mean +-1)")
    seed: int = hp(0, help="seed of the data draw (fixed splits; the run seed does not change the data)")


class TwoMoonsSpurious(Dataset):
    """Two moons (core, nonlinear) plus a spurious coordinate that agrees with the label 90% of the time in train.

    Reference: scikit-learn's make_moons for the core feature; the spurious-coordinate construction follows the
    synthetic setups of Sagawa et al. 2020 (an easy, clean shortcut). x = (moon_x, moon_y, s + 0.1 e), y the moon,
    s in {-1, +1}; groups (y, s); val and test balanced over the 4 groups. A linear shortcut vs a curved core:
    ERM takes the shortcut and fails on the minority groups (y0_s1, y1_s0).
    """

    HParams = TwoMoonsHParams
    tasks = {"y": 2}
    group_names = ("y0_s0", "y0_s1", "y1_s0", "y1_s1")  # s1 means spurious attribute +1
    modality = "tabular"
    default_backbone = "mlp"
    defaults = {
        "backbone.hidden": (64,), "backbone.rep_dim": 16,
        "train.optimizer": "adam", "train.lr": 0.01, "train.batch_size": 100, "train.epochs": 30,
        "train.patience": 0,
    }

    def _draw(self, rng: np.random.Generator, y: np.ndarray, s: np.ndarray) -> TensorSplit:
        from sklearn.datasets import make_moons  # deferred: keeps `robustbench-mtl list` fast

        h = self.hparams
        n = len(y)
        pts, labels = make_moons(2 * n + 2, noise=h.moon_noise, random_state=int(rng.integers(2**31)))
        # Pick one point of the needed moon per example, in order, so labels are exactly y.
        pools = [pts[labels == c] for c in (0, 1)]
        take = [0, 0]
        core = np.empty((n, 2))
        for i, c in enumerate(y):
            core[i], take[c] = pools[c][take[c]], take[c] + 1
        spur = (2 * s - 1) + h.spur_noise * rng.standard_normal(n)
        x = torch.tensor(np.column_stack([core, spur]), dtype=torch.float32)
        yt, st = torch.as_tensor(y, dtype=torch.long), torch.as_tensor(s, dtype=torch.long)
        return TensorSplit(x, {"y": yt}, group_ids(yt, st, 2), torch.zeros(n, dtype=torch.long))

    def _balanced(self, rng: np.random.Generator, per_group: int) -> TensorSplit:
        g = np.repeat(np.arange(4), per_group)
        return self._draw(rng, g // 2, g % 2)

    def generate(self) -> dict[str, TensorSplit]:
        h = self.hparams
        rng = np.random.default_rng(h.seed)
        y = rng.integers(0, 2, h.n_train)
        s = np.where(rng.random(h.n_train) < h.agreement, y, 1 - y)
        return {"train": self._draw(rng, y, s), "val": self._balanced(rng, h.n_val_per_group),
                "test": self._balanced(rng, h.n_test_per_group)}
