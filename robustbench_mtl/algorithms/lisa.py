"""LISA: selective mixup of same-label/different-attribute or same-attribute/different-label pairs."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..data.base import DataInfo, TensorSplit
from ..errors import ConfigError
from ..hparams import Choice, LogUniform, Uniform, hp
from ..registry import ALGORITHMS
from ..types import Batch
from ._mixing import MixingAlgorithm, MixPlan, sample_beta


@dataclass(frozen=True)
class LISAHParams:
    alpha: float = hp(2.0, LogUniform(0.1, 10.0), ge=0,
                      help="per-pair lambda ~ Beta(alpha, alpha) (SubpopBench LISA_alpha: default 2, space 10^U(-1,1))")
    p_sel: float = hp(0.5, Uniform(0.0, 1.0), ge=0, le=1,
                      help="probability of an intra-label step (else intra-attribute) (SubpopBench LISA_p_sel: "
                           "default 0.5, space U(0,1))")
    mix_method: Literal["mixup", "cutmix"] = hp(
        "mixup", Choice(("mixup", "cutmix")),
        help="how a pair is mixed: mixup, or CutMix for image inputs (other inputs always use mixup) "
             "(SubpopBench LISA_mixup_method: default mixup, space {mixup, cutmix})")


def attribute_count(info: DataInfo) -> int:
    """A, the number of attribute values, when the training groups are g = A * y + a (SubpopBench's layout)."""
    classes = next(iter(info.tasks.values()))
    return len(info.group_names) // classes


def lisa_blocks(y: Tensor, a: Tensor, intra_label: bool) -> list[tuple[Tensor, Tensor]]:
    """One round of LISA's pairing, as (first, second) batch positions per block.

    Intra-label: for each label, two of the attributes present with it (a random pair), and their examples
    paired in batch order up to the smaller count. Intra-attribute: the same with the roles of label and
    attribute swapped. Examples with a label or attribute of -1 are never paired.
    """
    valid = (y >= 0) & (a >= 0)
    keys, partners = (y, a) if intra_label else (a, y)
    blocks = []
    for key in torch.unique(keys[valid]).tolist():
        members = valid & (keys == key)
        values = torch.unique(partners[members])
        if len(values) < 2:
            continue
        v1, v2 = values[torch.randperm(len(values)).to(values.device)[:2]].tolist()
        first = (members & (partners == v1)).nonzero().flatten()
        second = (members & (partners == v2)).nonzero().flatten()
        n = min(len(first), len(second))
        blocks.append((first[:n], second[:n]))
    return blocks


def cutmix_block(first: Tensor, second: Tensor, alpha: float, height: int, width: int) -> MixPlan:
    """SubpopBench's `_cut_mix_up` on one block: one lambda ~ Beta(alpha, alpha) and one box of side
    int(side * sqrt(1 - lambda)) around a uniform centre, clipped to the image; rows are first-with-second's-box
    and second-with-first's-box, and lambda becomes the share of pixels outside the box."""
    lam = float(sample_beta(alpha, 1))
    ratio = math.sqrt(1.0 - lam)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    half_h, half_w = int(height * ratio) // 2, int(width * ratio) // 2
    top, bottom = max(cy - half_h, 0), min(cy + half_h, height)
    left, right = max(cx - half_w, 0), min(cx + half_w, width)
    share = 1.0 - (bottom - top) * (right - left) / (height * width)
    rows = 2 * len(first)
    return MixPlan(torch.cat([first, second]).cpu(), torch.cat([second, first]).cpu(), torch.full((rows,), share),
                   torch.tensor([top, bottom, left, right]).expand(rows, 4))


def lisa_plan(y: Tensor, a: Tensor, intra_label: bool, alpha: float,
              image_size: tuple[int, int] | None = None) -> MixPlan | None:
    """LISA's mixed batch of len(y) rows: pairing rounds (fresh attribute or label pairs and lambdas each round)
    until there are at least len(y) rows, then a random len(y) of them; None where no pair exists (an unmixed
    step). `image_size` (H, W) selects CutMix; else each pair gets its own lambda ~ Beta(alpha, alpha)."""
    n, plans, rows = len(y), [], 0
    while rows < n:
        blocks = lisa_blocks(y, a, intra_label)
        if not blocks:
            return None
        for first, second in blocks:
            plan = (cutmix_block(first, second, alpha, *image_size) if image_size else
                    MixPlan(first.cpu(), second.cpu(), sample_beta(alpha, len(first))))
            plans.append(plan)
            rows += len(plan)
    return MixPlan.cat(plans).take(torch.randperm(rows)[:n])


@ALGORITHMS.register("lisa")
class LISA(MixingAlgorithm):
    """LISA: with probability p_sel mix same-label pairs across attributes, else same-attribute pairs across labels.

    Reference: Yao et al., "Improving Out-of-Distribution Robustness via Selective Augmentation", ICML 2022;
    SubpopBench's `LISA` (Yang et al., ICML 2023; `subpopbench/learning/algorithms.py`), whose pairing and
    mixing this follows: per step one coin (p_sel) chooses intra-label or intra-attribute pairs; pairing
    rounds (`lisa_plan`) fill a batch of B mixed rows; mixup with a lambda ~ Beta(alpha, alpha) per pair, or
    CutMix for images (`mix_method`); loss = mean over rows of lam CE(y_first) + (1 - lam) CE(y_second);
    no possible pair = an unmixed ERM step. Text mixes the pooled representation. The attribute (the
    "domain") is a = g mod A of the training group g = A y + a, so LISA uses **training group labels**
    (`uses_train_groups`); it needs a one-task dataset with that group layout. See docs/methods.md#lisa.
    """

    HParams = LISAHParams
    uses_train_groups = True

    @classmethod
    def check(cls, name: str, info: DataInfo, objectives: tuple[str, ...]) -> None:
        if len(info.tasks) != 1:
            raise ConfigError(f"{name} needs a one-task dataset (its pairs share or differ in one label); dataset "
                              f"'{info.name}' has {len(info.tasks)} ({', '.join(info.tasks)}); use mixup instead")
        classes, groups = next(iter(info.tasks.values())), len(info.group_names)
        if groups % classes or groups // classes < 2:
            raise ConfigError(f"{name} needs training groups g = A*label + attribute with A >= 2 attribute values; "
                              f"dataset '{info.name}' has {groups} groups for {classes} classes; use mixup instead")

    def setup(self, train: TensorSplit) -> None:
        (task, y), = train.y.items()
        known = (train.g >= 0) & (y >= 0)
        if not bool((train.g[known] // attribute_count(self.info) == y[known]).all()):
            raise ConfigError(f"lisa reads the attribute as g mod {attribute_count(self.info)}, but dataset "
                              f"'{self.info.name}' has training groups that are not {attribute_count(self.info)}*"
                              f"{task} + attribute; use mixup instead")

    def plan(self, batch: Batch) -> MixPlan | None:
        (y,) = batch.y.values()
        a = torch.where(batch.g >= 0, batch.g % attribute_count(self.info), -1)
        intra_label = bool(torch.rand(()) < self.hparams.p_sel)
        images = self.hparams.mix_method == "cutmix" and batch.x.is_floating_point() and batch.x.dim() == 4
        return lisa_plan(y, a, intra_label, self.hparams.alpha, tuple(batch.x.shape[-2:]) if images else None)
