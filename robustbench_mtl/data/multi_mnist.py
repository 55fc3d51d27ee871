"""Multi-MNIST with label-label spurious correlation, built from the official MNIST files, with `prepare`."""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DataNotFoundError
from ..hparams import hp
from ..registry import DATASETS
from ._files import guarded_download, removed_on_failure
from ._images import DEFAULT_ROOT, ROOT_ENV, Invalid, resolve_root
from ._pairs import N_CLASSES, SIDE, PairHParams, PairsDataset, generator, stratified_pools
from .base import TensorSplit

# torchvision's layout (DATASETS.md §6): <root>/MNIST/raw holds the .gz files and what they extract to.
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # idx headers: 0x00000803 (uint8, 3 dims), 0x00000801 (uint8, 1 dim)
# Images per digit 0-9 in the official release (train 60,000, t10k 10,000); `prepare` checks them.
OFFICIAL_COUNTS = {"train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
                   "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)}
VAL_FRACTION = 1 / 6  # [RECON] of each digit of MNIST train held out as the val pool: ~10,000 images


@dataclass(frozen=True)
class MultiMNISTHParams(PairHParams):
    root: str = hp(DEFAULT_ROOT, help=f"data root holding MNIST/raw/ (torchvision's layout); ${ROOT_ENV}, when set, "
                                      f"replaces the default '{DEFAULT_ROOT}'")
    n_train: int = hp(30000, ge=1, help="training pairs per training environment (the reconstruction's 30k)")
    n_val: int = hp(10000, ge=1, help="validation pairs (in-distribution: rho_val)")
    n_test: int = hp(10000, ge=1, help="test pairs (out-of-distribution: rho_test; the reconstruction's 10k)")


def raw_dir(root: Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def fix_hint(root: Path) -> str:
    return f"robustbench-mtl prepare multi_mnist --root {root}"


def find_file(raw: Path, name: str) -> Path:
    """`name` as torchvision extracts it, else its .gz; raises Invalid when neither is there."""
    for path in (raw / name, raw / f"{name}.gz"):
        if path.is_file():
            return path
    raise Invalid(f"no MNIST file {raw / name} (nor {name}.gz beside it)", fix="get the files with")


def read_idx(path: Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """An idx file (plain or gzip) of uint8 values: header checked, shape (N, *shape), length exact."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # gzip's BadGzipFile is an OSError; a cut .gz ends in EOFError
        raise Invalid(f"{path} cannot be read ({type(exc).__name__})", fix="delete it and run") from None
    ndim = 1 + len(shape)
    header = 4 * (1 + ndim)
    got = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if got != magic:
        raise Invalid(f"{path} is not an MNIST idx file (magic number {got}, expected {magic})",
                      fix="delete it and run")
    dims = [int.from_bytes(data[4 * (i + 1):4 * (i + 2)], "big") for i in range(ndim)]
    if tuple(dims[1:]) != shape or len(data) != header + int(np.prod(dims)):
        raise Invalid(f"{path} holds {len(data) - header} bytes of data for dimensions {dims}, expected N x "
                      f"{' x '.join(map(str, shape)) or '1'}", fix="delete it and run")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_part(raw: Path, part: str) -> tuple[Tensor, Tensor]:
    """One official part ('train' or 'test'): uint8 images [N, 28, 28] and labels [N], checked against each other."""
    images_path, labels_path = (find_file(raw, name) for name in FILES[part])
    images = read_idx(images_path, IMAGES_MAGIC, (SIDE, SIDE))
    labels = read_idx(labels_path, LABELS_MAGIC, ())
    if len(images) != len(labels):
        raise Invalid(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels",
                      fix="delete them and run")
    if len(labels) and int(labels.max()) >= N_CLASSES:
        raise Invalid(f"{labels_path} has label {int(labels.max())}, not a digit 0-9", fix="delete it and run")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def read_mnist(root: Path) -> dict[str, tuple[Tensor, Tensor]]:
    """Both official parts under `root` (raises Invalid naming the first problem)."""
    return {part: read_part(raw_dir(root), part) for part in FILES}


def class_counts(parts: dict[str, tuple[Tensor, Tensor]]) -> dict[str, tuple[int, ...]]:
    return {part: tuple(torch.bincount(y, minlength=N_CLASSES).tolist()) for part, (_, y) in parts.items()}


def count_problem(parts: dict[str, tuple[Tensor, Tensor]]) -> str | None:
    """The first part and digit whose count differs from the official release's, in words; None if all agree."""
    for part, counts in class_counts(parts).items():
        for digit, (got, want) in enumerate(zip(counts, OFFICIAL_COUNTS[part])):
            if got != want:
                return f"{got} {part} images of digit {digit}, the official release has {want}"
    return None


@DATASETS.register("multi_mnist")
class MultiMNIST(PairsDataset):
    """Multidigits at full scale: pairs of real MNIST digits (1x28x56) from the official files; tasks left and right.

    Reference: the Multi-MNIST with label-label spurious correlation of MT-CRL (Hu et al., NeurIPS 2022), a
    RECONSTRUCTION [RECON] (docs/methods.md#multi_mnist); MNIST: LeCun et al. 1998. Reads
    torchvision's layout <data.root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (or their .gz);
    get them with `robustbench-mtl prepare multi_mnist --root DIR` (torchvision's downloader, MD5-checked).
    Disjoint pools: MNIST train split by digit, seeded by data.seed, into train (5/6) and val (1/6) pools
    [RECON]; the MNIST test set is the test pool. Pairs as in `multidigits`: training environments rho 0.9 and 0.8
    with 30,000 pairs each, val rho 0.85 (10,000 pairs [RECON]), test rho 0 (10,000 pairs); digits drawn without
    replacement until a class's pool is used up, then from a reshuffle; groups agree / disagree; e = -1 in
    val and test; `spurious_regions` as multidigits'. Built from the files at every load (a few seconds), never
    cached: changed files can never be served stale.
    """

    HParams = MultiMNISTHParams
    version = "1"

    @property
    def root(self) -> Path:
        return resolve_root(self.hparams.root)

    def read_pools(self) -> dict[str, tuple[Tensor, Tensor]]:
        try:
            parts = read_mnist(self.root)
        except Invalid as exc:
            raise DataNotFoundError(f"{self.name}: {exc}; {exc.fix}: {fix_hint(self.root)}") from None
        (images, labels), test = parts["train"], parts["test"]
        train_idx, val_idx = stratified_pools(labels, (1 - VAL_FRACTION,), generator(self.hparams.seed, "train", 0))
        return {"train": (images[train_idx], labels[train_idx]), "val": (images[val_idx], labels[val_idx]),
                "test": test}

    def load(self) -> dict[str, TensorSplit]:
        """The splits, generated from the files once per instance (no cache file: see the class docstring)."""
        if self._splits is None:
            self._splits = self.generate()
        return self._splits

    @classmethod
    def prepare(cls, root: Path) -> Path:
        """Download MNIST into `root`/MNIST/raw with torchvision's downloader (which checks each file's MD5),
        verify the images per digit against OFFICIAL_COUNTS; returns the raw dir. Files already there are only
        verified. On any failure it removes what it created and raises one line."""
        root = Path(root).expanduser()
        raw = raw_dir(root)
        kept = f" ({raw} predates this run, so it was kept: if this repeats, delete it)" if raw.exists() else ""
        rerun = f"rerun: {fix_hint(root)}{kept}"
        with removed_on_failure(raw):
            if not all(_present(raw, name) for names in FILES.values() for name in names):
                fetch(root, rerun)
            verify(root, rerun)
        return raw


def _present(raw: Path, name: str) -> bool:
    return (raw / name).is_file() or (raw / f"{name}.gz").is_file()


def fetch(root: Path, rerun: str) -> None:
    """torchvision's MNIST download (its mirrors in turn, MD5 per file); whatever fails becomes one line."""
    from torchvision import datasets

    mirrors = getattr(datasets.MNIST, "mirrors", [])
    names = ", ".join(f"{n}.gz" for names in FILES.values() for n in names)
    guarded_download(lambda: datasets.MNIST(str(root), train=True, download=True),  # all four files
                     "multi_mnist: MNIST download", f"check the network, or put {names} (from "
                     f"{mirrors[0] if mirrors else 'an MNIST mirror'}) in {raw_dir(root)} by hand; then {rerun}")


def verify(root: Path, rerun: str) -> None:
    """The files read as a run reads them, and their images per digit against the official release."""
    try:
        parts = read_mnist(root)
    except Invalid as exc:
        raise DataNotFoundError(f"multi_mnist: the MNIST files in {raw_dir(root)} are damaged or incomplete ({exc}); "
                                f"{rerun}") from None
    wrong = count_problem(parts)
    if wrong:
        raise DataNotFoundError(f"multi_mnist: the MNIST files in {raw_dir(root)} have {wrong}; {rerun}")
