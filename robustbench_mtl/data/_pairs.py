"""Two-digit pairs with a label-label spurious correlation (MT-CRL's Multi-MNIST): multidigits and multi_mnist."""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from ..hparams import hp
from .base import SPLITS, Dataset, TensorSplit

SIDE = 28  # one MNIST digit; a pair is 1 x SIDE x 2*SIDE, the left digit in columns 0:28, the right in 28:56
N_CLASSES = 10
GROUPS = ("agree", "disagree")  # g = 0 where y_right == y_left, else 1: the same id for both tasks
_SALT = {"train": 1, "val": 2, "test": 3}  # one generator per split and stage: changing one never shifts another
# Where each task's spurious evidence lies in one input [C, H, W]: per axis a half-open (start, stop), None = the
# whole axis (JSON-ready; `region_mask` turns it into a bool mask). Task `right`'s spurious pixels are the left
# digit's, task `left`'s the right digit's (MT-CRL: "the right-digit classifier's spurious features are the
# left-digit pixels"; docs/methods.md#multidigits). Jitter keeps each digit inside its own half, so the regions
# hold for every input.
SPURIOUS_REGIONS: dict[str, tuple[tuple[int, int] | None, ...]] = {
    "left": (None, None, (SIDE, 2 * SIDE)),
    "right": (None, None, (0, SIDE)),
}


@dataclass(frozen=True)
class PairHParams:
    """What both pair datasets draw from; each dataset subclasses it with its own sizes (and data root)."""

    seed: int = hp(0, help="seed of the data draw: pools, labels, images, jitter (the run seed leaves the data as is)")
    n_train: int = hp(3000, ge=1, help="training pairs per training environment (one per rho_train value)")
    n_val: int = hp(1000, ge=1, help="validation pairs (in-distribution: rho_val)")
    n_test: int = hp(2000, ge=1, help="test pairs (out-of-distribution: rho_test)")
    rho_train: tuple[float, ...] = hp((0.9, 0.8), ge=0, le=1, help="per training environment e, the probability "
                                      "that y_right = y_left (else y_right is uniform over 0-9, so agreement is "
                                      "rho + (1 - rho) / 10)")
    rho_val: float = hp(0.85, ge=0, le=1, help="rho of the validation pairs (between the training environments')")
    rho_test: float = hp(0.0, ge=0, le=1, help="rho of the test pairs; 0 = independent labels (chance agreement 0.1)")
    jitter: int = hp(0, ge=0, le=4, help="shift each digit by up to this many pixels in each direction, inside its "
                                         "own 28x28 half (0 = none; the reconstruction's option is 2)")


@dataclass(frozen=True)
class PairPlan:
    """One split before rendering: both labels, the environment, and the pool image behind each digit."""

    y_left: Tensor
    y_right: Tensor
    e: Tensor  # training environment id; -1 in val and test (not training environments)
    left: Tensor  # indices into the split's pool
    right: Tensor


def env_names(rhos: tuple[float, ...]) -> tuple[str, ...]:
    """Environment names from their rho: (0.9, 0.8) -> ("rho0.9", "rho0.8"); repeated rhos get their index too."""
    names = tuple(f"rho{r:g}" for r in rhos)
    return names if len(set(names)) == len(names) else tuple(f"e{i}_{n}" for i, n in enumerate(names))


def region_mask(region: tuple[tuple[int, int] | None, ...], shape: tuple[int, ...]) -> Tensor:
    """A bool mask of one input's `shape` [C, H, W] that is True inside `region` (a SPURIOUS_REGIONS value)."""
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[tuple(slice(None) if b is None else slice(*b) for b in region)] = True
    return mask


def generator(seed: int, split: str, stage: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + _SALT[split] * 10 + stage)


def stratified_pools(labels: Tensor, fractions: tuple[float, ...], gen: torch.Generator) -> list[Tensor]:
    """Disjoint index sets over `labels`, each taking `fractions` of every class (the last takes the rest)."""
    parts: list[list[Tensor]] = [[] for _ in range(len(fractions) + 1)]
    for c in range(N_CLASSES):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        start = 0
        for k, f in enumerate(fractions):
            stop = start + round(f * len(idx))
            parts[k].append(idx[start:stop])
            start = stop
        parts[-1].append(idx[start:])
    return [torch.cat(p).sort().values for p in parts]


def pair_labels(n: int, rho: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """y_left uniform over 0-9; y_right = y_left with probability rho, else uniform (so it may agree anyway)."""
    y_left = torch.randint(N_CLASSES, (n,), generator=gen)
    copy = torch.rand(n, generator=gen) < rho  # drawn for every pair whatever rho, so streams never shift
    other = torch.randint(N_CLASSES, (n,), generator=gen)
    return y_left, torch.where(copy, y_left, other)


def draw_images(labels: Tensor, pool_labels: Tensor, gen: torch.Generator, where: str) -> Tensor:
    """For each requested label, a pool index of an image of that label.

    Without replacement while the class's images last, then again from a fresh shuffle of the same images
    (so reuse is spread evenly: each image is used floor or ceil of requests / images times)."""
    out = torch.empty(len(labels), dtype=torch.long)
    for c in range(N_CLASSES):
        slots = torch.nonzero(labels == c).flatten()
        cand = torch.nonzero(pool_labels == c).flatten()
        if not len(slots):
            continue
        if not len(cand):
            raise ConfigError(f"{where} has no image of digit {c}, so no pair can show it")
        slots = slots[torch.randperm(len(slots), generator=gen)]  # which slot gets which pass is random too
        passes = math.ceil(len(slots) / len(cand))
        order = torch.cat([torch.randperm(len(cand), generator=gen) for _ in range(passes)])
        out[slots] = cand[order[:len(slots)]]
    return out


def shifted(digits: Tensor, jitter: int, gen: torch.Generator) -> Tensor:
    """Each [SIDE, SIDE] digit moved by up to `jitter` px per axis, zero-filled; nothing leaves its own canvas."""
    if jitter == 0:
        return digits
    n = len(digits)
    offs = torch.randint(-jitter, jitter + 1, (n, 2), generator=gen)  # (dy, dx) per digit
    padded = torch.nn.functional.pad(digits, (jitter, jitter, jitter, jitter))
    base = torch.arange(SIDE)
    rows = (jitter - offs[:, 0]).view(n, 1, 1) + base.view(1, SIDE, 1)  # output row r reads padded row r - dy + j
    cols = (jitter - offs[:, 1]).view(n, 1, 1) + base.view(1, 1, SIDE)
    return padded[torch.arange(n).view(n, 1, 1), rows, cols]


def render(images: Tensor, left: Tensor, right: Tensor, jitter: int, gen: torch.Generator) -> Tensor:
    """uint8 pairs [N, 1, SIDE, 2*SIDE]: images[left] in columns 0:28, images[right] in columns 28:56."""
    both = shifted(images[torch.cat([left, right])], jitter, gen)
    return torch.cat([both[:len(left)], both[len(left):]], dim=-1).unsqueeze(1).contiguous()


class PairsDataset(Dataset):
    """Base of the two-digit datasets: tasks `left` and `right`, groups agree/disagree, environments by rho.

    A subclass gives the digit pools (`read_pools()`: per split, uint8 images [K, 28, 28] and labels [K],
    disjoint across splits); this class draws the pairs (`plan`) and renders them (`generate`).
    """

    tasks = {"left": N_CLASSES, "right": N_CLASSES}
    group_names = GROUPS
    environment_names: ClassVar[tuple[str, ...]] = env_names(PairHParams().rho_train)  # the defaults' names
    spurious_regions: ClassVar[dict[str, tuple[tuple[int, int] | None, ...]]] = SPURIOUS_REGIONS
    modality = "image"
    default_backbone = "lenet"
    # [RECON] Adam lr 1e-3 (docs/methods.md#multidigits); 5 epochs: LeNet's val accuracy has levelled off by then.
    defaults = {"train.optimizer": "adam", "train.lr": 1e-3, "train.batch_size": 64, "train.epochs": 5}

    def __init__(self, hparams: Any, name: str) -> None:
        super().__init__(hparams, name)
        if not hparams.rho_train:
            raise ConfigError(f"{name}: data.rho_train needs at least one value (one per training environment)")
        # Per instance: the names follow data.rho_train (the class attribute holds the defaults' names).
        self.environment_names = env_names(hparams.rho_train)  # type: ignore[misc]
        self._pools: dict[str, tuple[Tensor, Tensor]] | None = None

    @abc.abstractmethod
    def read_pools(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Per split, the images (uint8 [K, 28, 28]) and labels [K] its pairs draw from; no image in two splits."""

    def pools(self) -> dict[str, tuple[Tensor, Tensor]]:
        """`read_pools()`, read once per instance."""
        if self._pools is None:
            self._pools = self.read_pools()
        return self._pools

    def spurious_mask(self, task: str) -> Tensor:
        """Bool [1, 28, 56]: the input pixels that are spurious for `task` (the other digit's half)."""
        return region_mask(self.spurious_regions[task], (1, SIDE, 2 * SIDE))

    def plan(self, split: str) -> PairPlan:
        """Labels, environments and pool images of `split` (cheap: the tests check them without rendering)."""
        h, pool_labels = self.hparams, self.pools()[split][1]
        gen = generator(h.seed, split, 1)
        if split == "train":
            drawn = [pair_labels(h.n_train, rho, gen) for rho in h.rho_train]
            y_left, y_right = torch.cat([d[0] for d in drawn]), torch.cat([d[1] for d in drawn])
            e = torch.arange(len(drawn)).repeat_interleave(h.n_train)
            order = torch.randperm(len(e), generator=gen)  # interleave environments so no split is sorted
            y_left, y_right, e = y_left[order], y_right[order], e[order]
        else:
            n, rho = (h.n_val, h.rho_val) if split == "val" else (h.n_test, h.rho_test)
            y_left, y_right = pair_labels(n, rho, gen)
            e = torch.full((n,), -1, dtype=torch.long)
        idx = draw_images(torch.cat([y_left, y_right]), pool_labels, generator(h.seed, split, 2),
                          f"{self.name}: the {split} pool")
        return PairPlan(y_left, y_right, e, idx[:len(y_left)], idx[len(y_left):])

    def generate(self) -> dict[str, TensorSplit]:
        out = {}
        for split in SPLITS:
            images, p = self.pools()[split][0], self.plan(split)
            x = render(images, p.left, p.right, self.hparams.jitter, generator(self.hparams.seed, split, 3))
            g = (p.y_left != p.y_right).long()
            out[split] = TensorSplit(x, {"left": p.y_left, "right": p.y_right}, g, p.e)
        return out
