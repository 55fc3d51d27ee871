"""Where a run's numbers come from: versions, git commit, component providers, device."""
from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from . import __version__


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit(path: Path = Path(__file__).resolve().parent) -> dict[str, Any] | None:
    """The commit (and dirty flag) of the checkout this package runs from, if it is one."""
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(dirty)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def provenance(device: torch.device) -> dict[str, Any]:
    versions = {"python": sys.version.split()[0], "robustbench-mtl": __version__, "torch": torch.__version__}
    for dist in ("numpy", "transformers", "kornia"):
        v = _version(dist)
        if v:
            versions[dist] = v
    return {
        "versions": versions,
        "git": git_commit(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
    }
