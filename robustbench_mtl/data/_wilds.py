"""Downloads through WILDS' own downloader, with its errors reaching the user (WILDS prints and swallows them)."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from ._files import guarded_download


def wilds_release(module: str, cls: str, version: str, manual: str = "") -> tuple[str, int | None, Callable[..., Any]]:
    """The URL and size WILDS declares for a dataset (`wilds.datasets.<module>.<cls>`, release `version`),
    and WILDS' own download-and-extract function; one line if wilds is missing or does not declare it."""
    try:
        from wilds.datasets.download_utils import download_and_extract_archive

        dataset = getattr(importlib.import_module(f"wilds.datasets.{module}"), cls)
    except (ImportError, AttributeError):
        raise ConfigError("prepare needs the wilds package: pip install 'robustbench-mtl[data]'") from None
    try:
        release = dataset._versions_dict[version]  # a class attribute: no download to read it
        return release["download_url"], release.get("compressed_size"), download_and_extract_archive
    except (AttributeError, KeyError, TypeError):
        raise ConfigError(f"the installed wilds does not declare {cls} v{version}"
                          + (f"; download by hand: {manual}" if manual else "")) from None


def wilds_fetch(name: str, url: str, size: int | None, download: Callable[..., Any], data_dir: Path,
                fix: str) -> None:
    """What WILDSDataset.download_dataset does, minus its `except Exception: print(e)`: errors reach us."""
    guarded_download(lambda: download(url=url, download_root=str(data_dir), filename="archive.tar.gz",
                                      remove_finished=True, size=size), f"{name}: download from {url}", fix)
