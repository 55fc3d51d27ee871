"""robustbench-mtl: a plugin-based harness for multitask learning and worst-group robustness."""
from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("robustbench-mtl")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
