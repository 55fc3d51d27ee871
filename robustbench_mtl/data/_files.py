"""Shared file-safety helpers: names stay inside the data directory; a failed download leaves nothing behind."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import DataNotFoundError


class OutsideRoot(ValueError):
    """A file name (from a metadata file) that is absolute or leads outside the dataset directory."""

    def __init__(self, name: str, root: Path) -> None:
        super().__init__(f"{name!r} is outside {root}")
        self.name, self.root = name, root


class Inside:
    """Joins names with one directory, refusing any that leave it by '..', an absolute path or a symlink.

    Resolved directories are cached per instance: resolving every name in full costs ~1 s per 12k files
    (pure-Python realpath), which every load would pay; this costs one lstat per name. Paths come back
    as str, since building Path objects would cost more than the check itself.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.base = os.path.realpath(self.root)
        self._prefix = os.path.join(self.base, "")  # with its separator: /data/wb must not admit /data/wb2
        self._dirs: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        """The resolved path of `name` under the directory; raises OutsideRoot if it would leave it."""
        if not isinstance(name, str):
            raise TypeError(f"file name {name!r} is not a string")
        if os.path.isabs(name) or os.path.splitdrive(name)[0]:  # absolute (or drive-relative on Windows)
            raise OutsideRoot(name, self.root)
        head, tail = os.path.split(name)
        if tail in ("", ".", ".."):  # no file component to keep apart: resolve the whole name
            real = os.path.realpath(os.path.join(self.base, name))
        else:
            if head not in self._dirs:
                self._dirs[head] = os.path.realpath(os.path.join(self.base, head))
            real = os.path.join(self._dirs[head], tail)
            if os.path.islink(real):  # the file itself may be a link out of the directory
                real = os.path.realpath(real)
        if real != self.base and not real.startswith(self._prefix):
            raise OutsideRoot(name, self.root)
        return real


def inside(root: Path, name: str) -> Path:
    """`root / name` resolved; raises OutsideRoot if it is absolute or leaves `root` ('..', symlinks)."""
    return Path(Inside(root)(name))


@contextlib.contextmanager
def removed_on_failure(target: Path) -> Iterator[None]:
    """If the block raises, remove what it created: `target` (or, if it existed, only its new entries)
    and the parent directories it had to create, those only while empty. Nothing older is touched."""
    target = Path(os.path.abspath(target))
    new_parents = [p for p in target.parents if not p.exists()]  # deepest first
    existed = os.path.lexists(target)
    before = set(os.listdir(target)) if target.is_dir() else set()
    try:
        yield
    except BaseException:  # Ctrl-C mid-download too: a partial archive must not pass for a dataset
        if not existed:
            _remove(target)
        elif target.is_dir():
            for name in set(os.listdir(target)) - before:
                _remove(target / name)
        for parent in new_parents:
            with contextlib.suppress(OSError):  # not empty: someone else put something there
                parent.rmdir()
        raise


@contextlib.contextmanager
def safe_extraction() -> Iterator[None]:
    """Make tarfile refuse archive members that would land outside the extraction directory (absolute
    names, '..', links out), for third-party downloaders that call a bare `extractall` (WILDS does).

    Uses tarfile's own 'data' filter (Python 3.11.4+, 3.12+); on older Pythons it changes nothing.
    The default is process-wide, so it is restored on exit; `prepare` runs one download at a time."""
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:
        yield
        return
    previous = tarfile.TarFile.extraction_filter
    tarfile.TarFile.extraction_filter = staticmethod(data_filter)
    try:
        yield
    finally:
        tarfile.TarFile.extraction_filter = previous


def guarded_download(download: Callable[[], Any], what: str, fix: str) -> None:
    """Run one third-party download with its progress on stderr (a `prepare`'s stdout holds only the directory)
    and tar members kept inside their folder (`safe_extraction`). Whatever it raises (network, HTTP, checksum,
    archive, disk) becomes one line: "<what> failed (<error>); <fix>"."""
    with contextlib.redirect_stdout(sys.stderr), safe_extraction():
        try:
            download()
            return
        except Exception as exc:  # whatever it is, the line names it
            cause = f"{type(exc).__name__}: {' '.join(str(exc).split())}"  # messages spanning lines, on one
    # Raised out here, not in the except: that traceback holds WILDS' progress bars, which it never closes;
    # freed now, they print their last state before our line instead of after it.
    raise DataNotFoundError(f"{what} failed ({cause}); {fix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
