"""`prepare multinli`: download the MNLI 1.0 text and group_DRO's metadata, check and count them as a run reads them."""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from ..errors import ConfigError, DataNotFoundError
from . import multinli as mnli  # through the module: its constants are the ones tests and users may set
from ._files import guarded_download, removed_on_failure
from ._images import Invalid
from .base import SPLITS


def prepare_files(root: Path) -> Path:
    """What `MultiNLI.prepare` promises: nothing if the files are complete and valid; else the missing ones
    downloaded (never overwriting one), the metadata's SHA-1 checked, and all verified; on any failure what
    this call created is removed and one line raised. Returns the dataset directory."""
    with contextlib.suppress(Invalid):  # already complete and valid: nothing to do
        layout = mnli.find_layout(root)
        mnli.read_source(layout)
        return layout.data_dir
    try:  # torchvision's downloader: redirects followed, errors raised (not printed)
        from torchvision.datasets.utils import download_and_extract_archive, download_url
    except ImportError:
        raise ConfigError("prepare multinli needs torchvision's downloader: pip install torchvision") from None
    data_dir = mnli.target_dir(root)
    text_dir, meta = data_dir / mnli.TEXT_DIR, data_dir / mnli.METADATA
    kept = [str(p) for p in (text_dir, meta) if p.exists()]
    rerun = f"rerun: {mnli.fix_hint(root)}" + (f" ({', '.join(kept)} predate this run, so they were kept: delete "
                                               "them if this repeats)" if kept else "")
    manual = (f"download by hand: unzip {mnli.MNLI_URL} into {data_dir} (giving {text_dir / mnli.TEXT_FILES[0]}) "
              f"and save {mnli.METADATA_URL} as {meta}; then {rerun}")
    had_macosx = (data_dir / "__MACOSX").exists()
    with removed_on_failure(data_dir):
        if not meta.exists():
            guarded_download(lambda: download_url(mnli.METADATA_URL, str(meta.parent), meta.name),
                             f"multinli: download from {mnli.METADATA_URL}", manual)
        if (got := mnli.git_blob_sha1(meta)) != mnli.METADATA_SHA1:
            raise DataNotFoundError(f"multinli: {meta} has git blob SHA-1 {got}, not group_DRO's "
                                    f"{mnli.METADATA_SHA1} (dataset_metadata/multinli/metadata_random.csv at "
                                    f"cbbc1c5b); {rerun}")
        if not text_dir.exists():
            guarded_download(lambda: download_and_extract_archive(mnli.MNLI_URL, str(data_dir),
                                                                  filename="multinli_1.0.zip", remove_finished=True),
                             f"multinli: download from {mnli.MNLI_URL}", manual)
        if not had_macosx:  # the zip's macOS resource forks: never read
            shutil.rmtree(data_dir / "__MACOSX", ignore_errors=True)
        verified(data_dir, rerun)
    return data_dir


def verified(data_dir: Path, rerun: str) -> None:
    """The files read and joined as a run reads them, and the group counts per split against the release's."""
    try:
        counts = mnli.group_counts(mnli.read_source(mnli.find_layout(data_dir)))
    except Invalid as exc:
        raise DataNotFoundError(f"multinli: the files in {data_dir} are not usable ({exc}); {rerun}") from None
    wrong = [(s, g, got, want) for s in SPLITS
             for g, (got, want) in enumerate(zip(counts[s], mnli.OFFICIAL_COUNTS[s])) if got != want]
    if wrong:
        s, g, got, want = wrong[0]
        raise DataNotFoundError(f"multinli: {data_dir} has {got} {s} examples in group {mnli.GROUPS[g]}, the "
                                f"official release has {want}; {rerun}")
