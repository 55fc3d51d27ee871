"""MetaShift (Cat vs. Dog, indoor/outdoor spurious) read from SubpopBench's metadata, with `prepare` to download it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..hparams import hp
from ..registry import DATASETS
from ._images import DEFAULT_ROOT, ROOT_ENV
from ._subpop import SubpopImages, SubpopImagesHParams, image_names, subpopbench_recipe
from ._subpop_prepare import prepare_files

DIR = "metashift"  # <data_path>/metashift, as SubpopBench's download script writes it
METADATA = "metadata_metashift.csv"
IMAGES = "MetaShift-Cat-Dog-indoor-outdoor"  # the archive's top folder (MetaShift's unmixed Cat-Dog export)
URL = "https://www.dropbox.com/s/a7k65rlj4ownyr2/metashift.tar.gz?dl=1"
# SubpopBench's folders and their (y, a): y = 1 cat, 0 dog; a = 1 indoor, 0 outdoor. MetaShift's own train/test
# folders are pooled, then split at random (TEST_PCT, VAL_PCT, numpy RandomState(SEED)).
FOLDERS = {"train/cat/cat(indoor)": (1, 1), "train/dog/dog(outdoor)": (0, 0),
           "test/cat/cat(outdoor)": (1, 0), "test/dog/dog(indoor)": (0, 1)}
TEST_PCT, VAL_PCT, SEED = 0.25, 0.1, 42
GROUPS = ("dog_outdoor", "dog_indoor", "cat_outdoor", "cat_indoor")  # g = 2*y + a
# Images per split in SubpopBench's release (3,499 in all: int(25%) test, int(10%) val, the rest train).
RELEASE_SIZES = {0: 2276, 1: 349, 2: 874}
# 5,001 steps of 108 = about 237 epochs of 2,276 training images
SUBPOPBENCH_RECIPE = subpopbench_recipe(237)


@dataclass(frozen=True)
class MetaShiftHParams(SubpopImagesHParams):
    root: str = hp(DEFAULT_ROOT, help=f"data root holding {DIR}/{METADATA} and {DIR}/{IMAGES}/ (SubpopBench's "
                                      f"--data_path); ${ROOT_ENV}, when set, replaces the default '{DEFAULT_ROOT}'")


def metadata_frame(data_dir: Path) -> pd.DataFrame:
    """SubpopBench's `generate_metadata_metashift`: every .jpg of the four folders with its y and a, names as
    `<data_dir>/MetaShift-Cat-Dog-indoor-outdoor/...`, then 25% test and 10% of the rest val drawn with
    RandomState(42). Files are listed sorted [RECON]; SubpopBench lists them in the file system's order, so its
    split (not the images or groups) differs between machines."""
    rows = [{"filename": str(path), "y": y, "a": a}
            for folder, (y, a) in FOLDERS.items() for path in image_names(data_dir / IMAGES / folder, "*.jpg")]
    frame = pd.DataFrame(rows, columns=["filename", "y", "a"])
    n = len(frame)
    rng = np.random.RandomState(SEED)
    test = rng.choice(np.arange(n), size=int(n * TEST_PCT), replace=False)
    val = rng.choice(np.setdiff1d(np.arange(n), test), size=int(n * VAL_PCT), replace=False)
    split = np.zeros(n, dtype=np.int64)
    split[val], split[test] = 1, 2
    frame["split"] = split
    return frame


@DATASETS.register("metashift")
class MetaShift(SubpopImages):
    """MetaShift Cat vs. Dog as SubpopBench defines it: y = cat, spurious attribute a = indoor (MetaShift's context).

    References: Liang & Zou, "MetaShift" (ICLR 2022); Yang et al., "Change is Hard" (ICML 2023), SubpopBench's
    `MetaShift` and `generate_metadata_metashift` (docs/methods.md#metashift). Reads SubpopBench's files under
    data.root: `metashift/metadata_metashift.csv` (columns filename, y, a, split, read by name) and the images in
    `metashift/MetaShift-Cat-Dog-indoor-outdoor/{train/cat/cat(indoor), train/dog/dog(outdoor), test/cat/cat(outdoor),
    test/dog/dog(indoor)}`. y = 1 cat, 0 dog; a = 1 indoor, 0 outdoor; groups g = 2*y + a (dog_outdoor, dog_indoor,
    cat_outdoor, cat_indoor); splits 0/1/2 = train/val/test, SubpopBench's random 65/10/25 split of all 3,499
    images. File names are read relative to `metashift/` (from after their last `metashift/`), never outside it.
    Images: SubpopBench's Resize(256) + CenterCrop(224) view at data.image_size; no training augmentation. Get
    the files with `robustbench-mtl prepare metashift --root DIR` (SubpopBench's archive and metadata step).
    Defaults are a CPU-feasible ViT-tiny at 64 px; preset `subpopbench` is SubpopBench's ResNet-50 recipe.
    """

    HParams = MetaShiftHParams
    key = "metashift"
    group_names = GROUPS
    presets = {"subpopbench": {"backbone": "resnet50", "common": SUBPOPBENCH_RECIPE}}
    dir_name = DIR
    metadata_name = METADATA
    n_attrs = 2
    split_values = (0, 1, 2)
    release_sizes = RELEASE_SIZES

    @classmethod
    def prepare(cls, root: Path) -> Path:
        """Download SubpopBench's MetaShift archive into `root`/metashift (unless its folder is there), write
        metadata_metashift.csv as SubpopBench's script does (unless one is there) and verify every listed image
        and the split sizes; returns the dataset directory. On failure what it created goes, one line is raised."""
        return prepare_files(cls, root, [(URL, "metashift.tar.gz", IMAGES)], metadata_frame)
