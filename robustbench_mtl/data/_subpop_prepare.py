"""`prepare` for SubpopBench's image datasets (metashift, imagenetbg): download, write metadata, verify."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from ..errors import ConfigError, DataNotFoundError
from ._files import guarded_download, removed_on_failure
from ._images import Invalid
from ._subpop import SubpopImages


def fetch_archive(key: str, url: str, data_dir: Path, filename: str, fix: str) -> None:
    """Download `url` into `data_dir` as `filename`, extract it there (members refused if they would land outside)
    and delete the archive, with torchvision's downloader (redirects followed, errors raised); whatever fails
    (network, HTTP, archive, disk) becomes one line. Progress goes to stderr: stdout holds only the directory."""
    try:
        from torchvision.datasets.utils import download_and_extract_archive
    except ImportError:
        raise ConfigError(f"prepare {key} needs torchvision's downloader: pip install torchvision") from None
    guarded_download(lambda: download_and_extract_archive(url, str(data_dir), filename=filename,
                                                          remove_finished=True), f"{key}: download from {url}", fix)


def prepare_files(cls: type[SubpopImages], root: Path, archives: Sequence[tuple[str, str, str]],
                  write_metadata: Callable[[Path], pd.DataFrame]) -> Path:
    """What both `prepare`s do: nothing if the files are complete; else download each archive (url, file name,
    the folder it extracts to) whose folder is missing, write the metadata as SubpopBench's script does (only
    when there is none: an existing file is never replaced), and verify all as a run reads them. On any failure
    what this call created is removed (nothing older) and one line raised; returns the dataset directory."""
    root = Path(root).expanduser()
    with contextlib.suppress(Invalid):  # complete and valid already: nothing to do
        return cls.inspect(root).data_dir
    data_dir = root / cls.dir_name
    meta_path = data_dir / cls.metadata_name
    kept = [str(p) for p in (meta_path, *(data_dir / folder for _, _, folder in archives)) if p.exists()]
    rerun = f"rerun: {cls.fix_hint(root)}" + (f" ({', '.join(kept)} predate this run, so they were kept: delete "
                                              "them if this repeats)" if kept else "")
    manual = "; ".join(f"extract {url} into {data_dir}" for url, _, _ in archives)
    with removed_on_failure(data_dir):
        for url, filename, folder in archives:
            if not (data_dir / folder).exists():
                fetch_archive(cls.key, url, data_dir, filename, f"check the network or download by hand: {manual}; "
                                                                f"then {rerun}")
        if not meta_path.exists():
            frame = write_metadata(data_dir)
            frame.to_csv(meta_path, index=False)
        verify(cls, data_dir, rerun)
    return data_dir


def verify(cls: type[SubpopImages], data_dir: Path, rerun: str) -> None:
    """The files read as a run reads them, and the examples per split against SubpopBench's release."""
    try:
        src = cls.inspect(data_dir.parent)
    except Invalid as exc:
        raise DataNotFoundError(f"{cls.key}: the files in {data_dir} are not usable ({exc}); {rerun}") from None
    for value, want in cls.release_sizes.items():
        got = int((src.split == cls.split_values.index(value)).sum())
        if got != want:
            raise DataNotFoundError(f"{cls.key}: {data_dir} has {got} images in split {value!r}, SubpopBench's "
                                    f"release has {want}; {rerun}")


__all__ = ["fetch_archive", "prepare_files", "verify"]
