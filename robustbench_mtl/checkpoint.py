"""Checkpoints for resume: model, optimizer, schedule, algorithm extras and every RNG, saved atomically."""
from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .results import atomic_torch_save


def copy_state(module: torch.nn.Module, device: str | torch.device | None = None) -> dict[str, Any]:
    """A copy of `module.state_dict()` (on `device` when given) that later training does not change; non-tensor
    entries (an objective's extra state) are deep-copied."""
    return {k: (v.detach().to(device) if device is not None else v.detach()).clone() if isinstance(v, torch.Tensor)
            else copy.deepcopy(v) for k, v in module.state_dict().items()}


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states in weights_only-loadable form."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save(path: Path, payload: dict[str, Any]) -> None:
    """Atomic, not fsynced: written every epoch (see results._atomic; the runner syncs the run at its end)."""
    atomic_torch_save({**payload, "rng": rng_state()}, path, durable=False)


def load(path: Path, map_location: str | torch.device = "cpu", restart: Path | None = None) -> dict[str, Any]:
    """Read a checkpoint (or saved weights) with weights_only=True: loading never executes code. One that cannot
    be read (cut short: per-epoch writes are not fsynced, so a machine crash can leave one empty; or not one
    of ours) is one line saying to delete it (or `restart`, the run's checkpoint), after which the same command
    starts the run over."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # EOFError, zip, unpickling (weights_only), OSError: all mean the same here
        why = " ".join(f"{type(exc).__name__}: {exc}".split())
        why = why if len(why) <= 160 else why[:157] + "..."
        raise ConfigError(f"{path} cannot be read ({why}); delete {restart or 'it'} and run the same command "
                          f"to start this run over") from None
