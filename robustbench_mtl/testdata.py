"""Tiny in-memory datasets (tabular, image, text) that `robustbench_mtl.testing` checks components on."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .data._text import TextDataset, TextSource
from .data.base import SPLITS, DataInfo, TensorSplit
from .errors import ConfigError

N, GROUPS, CLASSES, STEPS, BATCH = 64, 4, 2, 3, 16


@dataclass(frozen=True)
class TinyTextHParams:
    max_length: int = 16


class TinyText(TextDataset):
    """64 sentences per split: the label is the word 'good' vs 'bad', the attribute 'cats' vs 'dogs'."""

    tasks = {"y": CLASSES}
    group_names = tuple(f"g{i}" for i in range(GROUPS))

    def __init__(self) -> None:
        super().__init__(TinyTextHParams(), "tiny_text")

    def text_source(self) -> TextSource:
        g = np.tile(np.arange(N) % GROUPS, len(SPLITS))
        y, a = g // 2, g % 2
        rng = np.random.default_rng(0)
        fillers = ["today", "again", "really", "here", "now", "still"]
        texts = [f"{rng.choice(fillers)} the {'dogs' if ai else 'cats'} are {'good' if yi else 'bad'} {rng.choice(fillers)}"
                 for yi, ai in zip(y, a)]
        split = np.repeat(np.arange(len(SPLITS)), N)
        return TextSource(texts, y, g, split, hashlib.sha256("\n".join(texts).encode()).hexdigest())


def tiny_data(modality: str, seed: int = 0, backbone_cls: Any = None,
              backbone_hp: Any = None, tasks: int = 1) -> tuple[DataInfo, dict[str, TensorSplit]]:
    """64 examples per split, 4 groups (label x attribute), 2 classes: 2 features, 3x16x16 uint8 images, or
    short sentences tokenised with `backbone_cls`'s tokenizer (text backbones only).

    `tasks=2` (tabular and image): a second task `a`, the attribute, and 2 declared training environments
    (alternate examples of each group), as a multi-task dataset with environments has."""
    if tasks not in (1, 2) or (tasks == 2 and modality == "text"):
        raise ConfigError(f"the tiny test data has 1 task, or 2 for tabular and image inputs; not {tasks} "
                          f"for {modality}")
    if modality == "text":
        ds = TinyText()
        ds.use_tokenizer(backbone_cls.tokenizer_dir(backbone_hp, ds))
        return ds.info(), ds.load()
    gen = torch.Generator().manual_seed(seed)
    splits = {}
    for split in SPLITS:
        g = torch.arange(N) % GROUPS
        y, a = g // 2, g % 2  # group = 2 * label + attribute, every group 16 times
        if modality == "tabular":
            x = torch.stack([2.0 * y - 1, 2.0 * a - 1], 1) + torch.randn(N, 2, generator=gen) * torch.tensor([1, 0.1])
        else:  # label: a bright square in the centre; attribute: the background's green level
            x = torch.randint(0, 60, (N, 3, 16, 16), generator=gen, dtype=torch.uint8)
            x[:, 1] += (150 * a).to(torch.uint8).view(N, 1, 1)
            x[y == 1, :, 5:11, 5:11] = 250
        labels = {"y": y} if tasks == 1 else {"y": y, "a": a}
        # Two tasks: environments alternate every GROUPS rows, so each environment holds every group.
        e = torch.arange(N) // GROUPS % 2 if tasks == 2 else torch.zeros(N, dtype=torch.long)
        splits[split] = TensorSplit(x, labels, g, e)
    envs = () if tasks == 1 else ("e0", "e1")
    return DataInfo(f"tiny_{modality}" + ("_mt" if tasks == 2 else ""), modality,
                    tuple(splits["train"].x.shape[1:]), {t: CLASSES for t in splits["train"].y},
                    tuple(f"g{i}" for i in range(GROUPS)), (N // GROUPS,) * GROUPS,
                    envs, (N // 2,) * len(envs)), splits
