"""Plugin tests: a private dataset cache and one torch thread."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)  # tiny models run fastest on one thread
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Embedded datasets are generated once per session, never in the user's home.
    monkeypatch.setenv("ROBUSTBENCH_MTL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
