"""ImageNetBG (ImageNet-9 backgrounds challenge) read from SubpopBench's metadata, with `prepare` to download it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from ..hparams import hp
from ..registry import DATASETS
from ._images import DEFAULT_ROOT, ROOT_ENV
from ._subpop import SubpopImages, SubpopImagesHParams, image_names, subpopbench_recipe
from ._subpop_prepare import prepare_files

DIR = "backgrounds_challenge"  # <data_path>/backgrounds_challenge, as SubpopBench's download script writes it
METADATA = "metadata.csv"
# SubpopBench's split column values and the folders they list: IN-9L train/val, then the backgrounds challenge's
# test sets (Original, Mixed-Rand, Only-FG, No-FG), in the order its script writes them.
SPLIT_DIRS = {"train": "in9l/train", "val": "in9l/val", "test": "bg_challenge/original/val",
              "mixed_rand": "bg_challenge/mixed_rand/val", "only_fg": "bg_challenge/only_fg/val",
              "no_fg": "bg_challenge/no_fg/val"}
TEST_SPLITS = ("test", "mixed_rand", "only_fg", "no_fg")  # SubpopBench's EVAL_SPLITS (te, mixed_rand, no_fg, only_fg)
# The nine IN-9 classes; folder `0{y}_{name}` (e.g. `02_wheeled vehicle`) under each split folder.
CLASSES = ("dog", "bird", "wheeled vehicle", "reptile", "carnivore", "insect", "musical instrument", "primate", "fish")
GROUPS = tuple(c.replace(" ", "_") for c in CLASSES)  # a = 0 for every image: one group per class
# The three archives SubpopBench's script downloads (url, file name, folder it extracts to). original.tar.gz is
# downloaded as the script does, though no metadata row reads it.
ARCHIVES = (
    ("https://github.com/MadryLab/backgrounds_challenge/releases/download/data/backgrounds_challenge_data.tar.gz",
     "backgrounds_challenge_data.tar.gz", "bg_challenge"),
    ("https://www.dropbox.com/s/0vv2qsc4ywb4z5v/original.tar.gz?dl=1", "original.tar.gz", "original"),
    ("https://www.dropbox.com/s/8w29bg9niya19rn/in9l.tar.gz?dl=1", "in9l.tar.gz", "in9l"),
)
# Each backgrounds-challenge test set: 450 images of each of the 9 classes (Xiao et al.). IN-9L's train and val
# sizes are not checked (SubpopBench's paper reports 183,006 and 7,200; unconfirmed here).
RELEASE_SIZES = {split: 4050 for split in TEST_SPLITS}
# 10,001 steps of 108 = about 6 epochs of IN-9L train
SUBPOPBENCH_RECIPE = subpopbench_recipe(6)


@dataclass(frozen=True)
class ImageNetBGHParams(SubpopImagesHParams):
    root: str = hp(DEFAULT_ROOT, help=f"data root holding {DIR}/{METADATA}, {DIR}/in9l/ and {DIR}/bg_challenge/ "
                                      f"(SubpopBench's --data_path); ${ROOT_ENV}, when set, replaces the default "
                                      f"'{DEFAULT_ROOT}'")
    test_split: Literal["test", "mixed_rand", "only_fg", "no_fg"] = hp(
        "test", help="which of SubpopBench's evaluation splits is read as test: test = Original (its `te`), "
                     "mixed_rand, only_fg or no_fg (the backgrounds challenge's variants of the same 4,050 images)")


def metadata_frame(data_dir: Path) -> pd.DataFrame:
    """SubpopBench's `generate_metadata_imagenetbg`: every .JPEG of each split folder's nine class folders, with
    split, name `<data_dir>/<folder>/0<y>_<class>/<file>`, y and a = 0. Files are listed sorted [RECON] (SubpopBench:
    the file system's order; only the row order differs)."""
    rows = [{"split": split, "filename": str(path), "y": y, "a": 0}
            for split, folder in SPLIT_DIRS.items() for y, name in enumerate(CLASSES)
            for path in image_names(data_dir / folder / f"0{y}_{name}", "*.JPEG")]
    return pd.DataFrame(rows, columns=["split", "filename", "y", "a"])


@DATASETS.register("imagenetbg")
class ImageNetBG(SubpopImages):
    """ImageNetBG as SubpopBench defines it: the 9 ImageNet-9 classes, trained on IN-9L, tested on backgrounds tests.

    References: Xiao et al., "Noise or Signal: The Role of Image Backgrounds in Object Recognition" (ICLR 2021);
    Yang et al., "Change is Hard" (ICML 2023), SubpopBench's `ImagenetBG` and `generate_metadata_imagenetbg`
    (docs/methods.md#imagenetbg). Reads SubpopBench's files under data.root: `backgrounds_challenge/metadata.csv`
    (columns split, filename, y, a, read by name) and the images it lists: train = `in9l/train`, val = `in9l/val`,
    test = the backgrounds challenge's `bg_challenge/original/val` (data.test_split picks SubpopBench's other
    evaluation splits instead: mixed_rand, only_fg, no_fg), class folders `00_dog` ... `08_fish`. y = the class
    (0-8); SubpopBench sets a = 0 for every image, so the groups are the 9 classes (worst-group = worst-class
    accuracy). File names are read relative to `backgrounds_challenge/` (from after their last such component),
    never outside it. Images: SubpopBench's Resize(256) + CenterCrop(224) view at data.image_size; no training
    augmentation. Get the files with `robustbench-mtl prepare imagenetbg --root DIR` (SubpopBench's three archives
    and metadata step). Defaults are a CPU-feasible ViT-tiny at 64 px; preset `subpopbench` is SubpopBench's
    ResNet-50 recipe.
    """

    HParams = ImageNetBGHParams
    key = "imagenetbg"
    tasks = {"y": len(CLASSES)}
    group_names = GROUPS
    presets = {"subpopbench": {"backbone": "resnet50", "common": SUBPOPBENCH_RECIPE}}
    dir_name = DIR
    metadata_name = METADATA
    n_attrs = 1
    split_values = tuple(SPLIT_DIRS)
    release_sizes = RELEASE_SIZES

    def test_code(self) -> int:
        return self.split_values.index(self.hparams.test_split)

    @classmethod
    def prepare(cls, root: Path) -> Path:
        """Download SubpopBench's three ImageNetBG archives into `root`/backgrounds_challenge (each unless its
        folder is there), write metadata.csv as SubpopBench's script does (unless one is there) and verify every
        listed image and the test sets' sizes; returns the dataset directory. On failure what it created goes,
        and one line is raised."""
        return prepare_files(cls, root, ARCHIVES, metadata_frame)
