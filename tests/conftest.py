"""Shared fixtures: every test gets its own dataset cache and runs torch on one thread."""
from __future__ import annotations

import os

import pytest
import torch

# Tiny models run fastest on one thread, and test workers must not fight over cores.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # One cache per test session: embedded datasets are generated once, never in the user's home.
    monkeypatch.setenv("ROBUSTBENCH_MTL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
