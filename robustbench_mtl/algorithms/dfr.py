"""DFR^Val: ERM, then the task heads refit by L1 logistic regression on group-balanced validation features."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import sklearn
import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from ..data.base import DataInfo, TensorSplit
from ..hparams import hp
from ..registry import ALGORITHMS
from ._last_layer import refuse_head_objectives
from .base import Algorithm

# DFR's Waterbirds grid (dfr_evaluate_spurious.py C_OPTIONS), in its order: ties go to the first.
DFR_C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)


@dataclass(frozen=True)
class DFRHParams:
    reg: Literal["l1", "l2"] = hp("l1", help="penalty of the logistic regression (DFR: l1)")
    C: tuple[float, ...] = hp(DFR_C_GRID, gt=0, help="inverse regularization strengths tuned on half of val "
                                                     "(DFR's grid); one value = that C, no tuning")
    n_resamples: int = hp(20, ge=1, help="group-balanced draws of all of val whose fits are averaged (DFR: 20)")
    tune_resamples: int = hp(1, ge=1, help="balanced draws of the fitting half per C while tuning; the "
                                           "held-out worst-group accuracy is averaged over them (DFR: 1)")
    split_seed: int = hp(0, help="seed of the fixed split of val into fitting and held-out halves")


def sklearn_version() -> tuple[int, int]:
    major, minor = (int(x) for x in re.findall(r"\d+", sklearn.__version__)[:2])
    return major, minor


def logistic_regression(reg: str, C: float, multiclass: bool, seed: int) -> LogisticRegression:
    """An L1 or L2 logistic regression on any supported scikit-learn.

    scikit-learn < 1.8 reads the penalty from `penalty` (its `l1_ratio` is ignored without
    penalty='elasticnet', so an L1 request would silently fit L2); 1.8 deprecates `penalty` in favour of
    `l1_ratio` and 1.10 removes it. scikit-learn 1.8 needs Python >= 3.11, so both spellings are needed.
    liblinear for two classes, as DFR; saga for more (liblinear is binary-only in recent releases).
    """
    penalty = {"l1_ratio": 1.0 if reg == "l1" else 0.0} if sklearn_version() >= (1, 8) else {"penalty": reg}
    return LogisticRegression(C=C, solver="saga" if multiclass else "liblinear", max_iter=1000,
                              random_state=seed % 2**31, **penalty)


def split_halves(g: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """(fit, held_out) indices: within each group a seeded permutation, the first ceil(n/2) to fit."""
    gen = torch.Generator().manual_seed(seed)
    g = g.cpu()
    fit, held = [], []
    for group in torch.unique(g):
        idx = torch.nonzero(g == group).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cut = (len(idx) + 1) // 2
        fit.append(idx[:cut])
        held.append(idx[cut:])
    return torch.cat(fit).sort().values, torch.cat(held).sort().values


def balanced_resamples(g: Tensor, n_resamples: int, seed: int) -> list[Tensor]:
    """`n_resamples` index sets, each with min-group-size examples of every group (g < 0 never drawn)."""
    gen = torch.Generator().manual_seed(seed)
    g = g.cpu()
    groups = [torch.nonzero(g == v).flatten() for v in torch.unique(g[g >= 0])]
    k = min(len(idx) for idx in groups)
    return [torch.cat([idx[torch.randperm(len(idx), generator=gen)[:k]] for idx in groups]).sort().values
            for _ in range(n_resamples)]


def standardizer(feats: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, scale) as scikit-learn's StandardScaler: population std, 1 where a feature is constant."""
    std = feats.std(0, unbiased=False)
    return feats.mean(0), torch.where(std > 0, std, torch.ones_like(std))


def fit_logits(reg: str, C: float, z: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A logistic regression on standardized features as logits (W [C, D], b [C]) of an n_classes head.

    Two classes give one decision value s, written as logits (-s/2, s/2) (softmax = sigmoid(s)); classes
    absent from `y` get bias -1e4, so they are never predicted.
    """
    lr = logistic_regression(reg, C, len(np.unique(y)) > 2, seed).fit(z, y)
    w, b = np.zeros((n_classes, z.shape[1])), np.full(n_classes, -1e4)
    if len(lr.classes_) == 2:
        half = np.array([-0.5, 0.5])
        w[lr.classes_], b[lr.classes_] = half[:, None] * lr.coef_, half * lr.intercept_
    else:
        w[lr.classes_], b[lr.classes_] = lr.coef_, lr.intercept_
    return w, b


def averaged_head(reg: str, C: float, feats: Tensor, y: Tensor, draws: list[Tensor], n_classes: int,
                  scaler: tuple[Tensor, Tensor] | None, seed: int) -> tuple[Tensor, Tensor]:
    """Fits on each draw (standardized by `scaler`, or by the draw's own statistics when None), averaged
    in standardized space as DFR averages coefficients, then folded into a head on raw features."""
    ws, bs = [], []
    for r, idx in enumerate(draws):
        mean, scale = scaler if scaler is not None else standardizer(feats[idx])
        w, b = fit_logits(reg, C, ((feats[idx] - mean) / scale).double().numpy(), y[idx].numpy(), n_classes,
                          seed + r)
        w_t = torch.as_tensor(w, dtype=torch.float64) / scale.double()  # W (x - mu) / s = (W / s) x - (W / s) mu
        ws.append(w_t)
        bs.append(torch.as_tensor(b, dtype=torch.float64) - w_t @ mean.double())
    return torch.stack(ws).mean(0).float(), torch.stack(bs).mean(0).float()


def worst_group_accuracy(w: Tensor, b: Tensor, feats: Tensor, y: Tensor, g: Tensor) -> float:
    correct = ((feats @ w.T + b).argmax(1) == y).double()
    return min(float(correct[g == v].mean()) for v in torch.unique(g))


@ALGORITHMS.register("dfr")
class DFR(Algorithm):
    """DFR^Val (Deep Feature Reweighting): ERM, then the heads refit on group-balanced validation features.

    Reference: Kirichenko, Izmailov & Wilson 2023, "Last Layer Re-Training is Sufficient for Robustness to
    Spurious Correlations", ICLR; its dfr_evaluate_spurious.py (docs/methods.md#dfr). Training is ERM (with
    any --aux terms). `after_training(val)`, on the frozen pooled features (eval mode, no augmentation):
    1. tune C: val is split per group (seeded by `split_seed`; the official code splits at random) into a
       fitting and a held-out half; for each C of the grid, logistic regressions (`reg`; liblinear for two
       classes, saga for more) are fit on `tune_resamples` group-balanced draws of the fitting half, each
       standardized on its draw, and scored by worst-group accuracy on the held-out half; the best mean wins
       (ties: the first C of the grid);
    2. refit: on `n_resamples` group-balanced draws of ALL of val, standardized with the training features'
       mean and std (as the official evaluation), at the chosen C; the coefficients are averaged and folded
       into each task head.
    The after-training record's `val/*` metrics are the held-out half scored by the tuning fit at the chosen
    C: the final heads were fit on all of val, so their val metrics would be fitted-on. `dfr/C` records the
    choice. Uses validation group labels; training group labels are not used. Retrains the last-epoch model.
    """

    HParams = DFRHParams
    uses_val_groups = True

    @classmethod
    def check(cls, name: str, info: DataInfo, objectives: tuple[str, ...]) -> None:
        # Refitting a linear head on pooled features would discard an objective's own heads (mtcrl's routing).
        refuse_head_objectives(name, objectives)

    @torch.no_grad()
    def features(self, split: TensorSplit, idx: Tensor | None = None) -> Tensor:
        """Pooled backbone features (eval mode, no augmentation) of split[idx], float32 on the CPU."""
        self.model.eval()
        idx = torch.arange(len(split)) if idx is None else idx
        idx, bs, out = idx.to(split.g.device), self.train_hp.eval_batch_size, []
        for start in range(0, len(idx), bs):
            with self._ctx():
                out.append(self.model(split.inputs(idx[start:start + bs]), heads=False).pooled.float().cpu())
        return torch.cat(out)

    def tune(self, feats: Tensor, y: Tensor, g: Tensor, fit: Tensor, held: Tensor, n_classes: int,
             seed: int) -> tuple[float, tuple[Tensor, Tensor]]:
        """(chosen C, its tuning head) by mean held-out worst-group accuracy over the tuning draws."""
        h = self.hparams
        best: tuple[float, float, tuple[Tensor, Tensor]] | None = None
        draws = [fit[i] for i in balanced_resamples(g[fit], h.tune_resamples, seed)]
        for C in h.C:
            heads = [averaged_head(h.reg, C, feats, y, [d], n_classes, None, seed) for d in draws]
            score = float(np.mean([worst_group_accuracy(*hd, feats[held], y[held], g[held]) for hd in heads]))
            if best is None or score > best[1]:
                w, b = torch.stack([hd[0] for hd in heads]).mean(0), torch.stack([hd[1] for hd in heads]).mean(0)
                best = (C, score, (w, b))
        assert best is not None
        return best[0], best[2]

    def set_head(self, task: str, w: Tensor, b: Tensor) -> None:
        head = self.model.heads[task]
        with torch.no_grad():
            head.weight.copy_(w.to(head.weight))
            head.bias.copy_(b.to(head.bias))

    def after_training(self, val: TensorSplit) -> dict[str, Any]:
        h, seed = self.hparams, int(torch.randint(0, 2**62, (1,)))  # from the run's seeded generator
        fit, held = split_halves(val.g, h.split_seed)
        feats, g = self.features(val), val.g.cpu()
        scaler = standardizer(self.features(self.train_split)) if self.train_split is not None else None
        tuning, final, chosen = {}, {}, {}
        for task, n_classes in self.info.tasks.items():
            y = val.y[task].cpu()
            keep = torch.nonzero((y >= 0) & (g >= 0)).flatten()
            if len(torch.unique(y[keep])) < 2:  # nothing to separate: keep the ERM head
                continue
            f_keep, h_keep = keep[torch.isin(keep, fit)], keep[torch.isin(keep, held)]
            chosen[task], tuning[task] = self.tune(feats, y, g, f_keep, h_keep, n_classes, seed)
            draws = [keep[i] for i in balanced_resamples(g[keep], h.n_resamples, seed + 1)]
            final[task] = averaged_head(h.reg, chosen[task], feats, y, draws, n_classes, scaler, seed)
        for task, (w, b) in tuning.items():
            self.set_head(task, w, b)
        report = self.evaluate_split(val.subset(held))
        for task, (w, b) in final.items():
            self.set_head(task, w, b)
        return {**report, **{f"dfr/C/{t}" if len(self.info.tasks) > 1 else "dfr/C": c for t, c in chosen.items()}}
