"""DFR: ERM, then retrain the task heads on group-balanced validation features (last-layer retraining)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from ..data.base import TensorSplit
from ..hparams import Choice, IntRange, hp
from ..registry import ALGORITHMS
from .base import Algorithm


@dataclass(frozen=True)
class DFRHParams:
    reg: Literal["l1", "l2"] = hp("l1", help="penalty of the logistic regression (DFR: l1)")
    C: float = hp(1.0, Choice((1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)),
                  help="inverse regularization strength (sklearn's C; DFR's grid)")
    n_resamples: int = hp(10, IntRange(1, 20), help="group-balanced draws whose weights are averaged")
    split_seed: int = hp(0, help="seed of the fixed val split into retraining and held-out halves")


def split_halves(g: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """(retrain, held_out) indices: within each group a seeded permutation, the first ceil(n/2) retrain."""
    gen = torch.Generator().manual_seed(seed)
    g = g.cpu()
    retrain, held = [], []
    for group in torch.unique(g):
        idx = torch.nonzero(g == group).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cut = (len(idx) + 1) // 2
        retrain.append(idx[:cut])
        held.append(idx[cut:])
    return torch.cat(retrain).sort().values, torch.cat(held).sort().values


def balanced_resamples(g: Tensor, n_resamples: int, seed: int) -> list[Tensor]:
    """`n_resamples` index sets, each with min-group-size examples of every group (g < 0 never drawn)."""
    gen = torch.Generator().manual_seed(seed)
    g = g.cpu()
    groups = [torch.nonzero(g == v).flatten() for v in torch.unique(g[g >= 0])]
    k = min(len(idx) for idx in groups)
    return [torch.cat([idx[torch.randperm(len(idx), generator=gen)[:k]] for idx in groups]).sort().values
            for _ in range(n_resamples)]


@ALGORITHMS.register("dfr")
class DFR(Algorithm):
    """DFR (Deep Feature Reweighting): ERM, then the heads refit on group-balanced held-out features.

    Reference: Kirichenko, Izmailov & Wilson 2023, "Last Layer Re-Training is Sufficient for Robustness to
    Spurious Correlations", ICLR (DFR^Val). Training is ERM (with any --aux terms). `after_training(val)`:
    val is split per group, deterministically (`split_seed`), into a retraining half (first ceil(n/2) of
    each group's permutation) and a held-out half. On frozen backbone features of the retraining half,
    standardized, each task head is refit by logistic regression (`reg`, `C`; liblinear as DFR for two
    classes, multinomial saga for more) on `n_resamples` draws with equal counts per group, averaging the weights
    [MEM: DFR's code averages coefficients over draws]. The standardization is folded into the head.
    The runner then evaluates once more, on the HELD-OUT half as "val" (so the after-training record's
    val metrics never saw the retraining data) and on the full test split. Uses validation group labels;
    training group labels are not used. Retrains the final (last-epoch) model.
    """

    HParams = DFRHParams
    uses_val_groups = True

    @torch.no_grad()
    def features(self, split: TensorSplit, idx: Tensor) -> Tensor:
        """Pooled backbone features (eval mode, no augmentation) of split[idx], float32 on the CPU."""
        self.model.eval()
        out = []
        idx = idx.to(split.g.device)
        for start in range(0, len(idx), self.train_hp.eval_batch_size):
            with self._ctx():
                out.append(self.model(split.inputs(idx[start:start + self.train_hp.eval_batch_size]),
                                      heads=False).pooled.float().cpu())
        return torch.cat(out)

    def fit_head(self, task: str, feats: Tensor, y: Tensor, g: Tensor, seed: int) -> None:
        """Refit head `task` on standardized features over balanced draws, then fold the scaler in."""
        h, n_classes = self.hparams, self.info.tasks[task]
        mean, std = feats.mean(0), feats.std(0, unbiased=False).clamp_min(1e-6)
        z = ((feats - mean) / std).numpy().astype(np.float64)
        coef, bias = np.zeros((n_classes, feats.shape[1])), np.zeros(n_classes)
        for r, idx in enumerate(balanced_resamples(g, h.n_resamples, seed)):
            yi = y[idx].numpy()
            solver = "liblinear" if len(np.unique(yi)) == 2 else "saga"  # liblinear is binary-only in sklearn
            lr = LogisticRegression(l1_ratio=1.0 if h.reg == "l1" else 0.0, C=h.C, solver=solver,
                                    max_iter=1000, random_state=(seed + r) % 2**31).fit(z[idx.numpy()], yi)
            w, b = np.zeros((n_classes, feats.shape[1])), np.full(n_classes, -1e4)  # absent classes: never predicted
            if len(lr.classes_) == 2:  # one decision value s: logits (-s/2, s/2) give softmax = sigmoid(s)
                half = np.array([-0.5, 0.5])
                w[lr.classes_], b[lr.classes_] = half[:, None] * lr.coef_, half * lr.intercept_
            else:
                w[lr.classes_], b[lr.classes_] = lr.coef_, lr.intercept_
            coef, bias = coef + w / h.n_resamples, bias + b / h.n_resamples
        head = self.model.heads[task]
        w = torch.as_tensor(coef, dtype=torch.float32) / std  # W (x - mu) / sigma = (W / sigma) x - (W / sigma) mu
        b = torch.as_tensor(bias, dtype=torch.float32) - w @ mean
        with torch.no_grad():
            head.weight.copy_(w.to(head.weight))
            head.bias.copy_(b.to(head.bias))

    def after_training(self, val: TensorSplit) -> TensorSplit:
        retrain, held = split_halves(val.g, self.hparams.split_seed)
        feats = self.features(val, retrain)
        seed = int(torch.randint(0, 2**62, (1,)))  # the run's global generator: resamples vary with the seed
        g = val.g.cpu()[retrain]
        for task in self.info.tasks:
            y = val.y[task].cpu()[retrain]
            keep = (y >= 0) & (g >= 0)
            if len(torch.unique(y[keep])) < 2:  # nothing to separate: keep the ERM head
                continue
            self.fit_head(task, feats[keep], y[keep], g[keep], seed)
        held_dev = held.to(val.g.device)
        return TensorSplit(val.x[held_dev], {t: v[held_dev] for t, v in val.y.items()}, val.g[held_dev],
                           val.e[held_dev])
