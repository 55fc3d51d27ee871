"""Where local workers start from: a fork server that imported torch once (spawn where there is none)."""
from __future__ import annotations

import multiprocessing
from typing import Any

# What every worker needs before its first job: torch (~1.6 s to import on the 2-core CI machine), torch._dynamo
# (~1.3 s more; torch.optim imports it when the first optimizer is built) and the runner. The server imports them
# once and each worker forks from it in milliseconds, so N workers start in the time of one import. The server
# only imports: it never runs a thread pool, so each fork starts one clean (forking a process that has run an
# OpenMP parallel region hangs the child's first one). The CLI too: multiprocessing re-runs the
# launcher's main module in each worker, and under `robustbench-mtl` that is the console script importing it.
PRELOAD = ["torch", "torch._dynamo", "robustbench_mtl.sweep", "robustbench_mtl.runner", "robustbench_mtl.cli"]


def context(cuda: bool = False) -> Any:
    """The multiprocessing context local workers start from: the preloaded fork server for CPU workers, else
    spawn. GPU workers are spawned: a process may not use CUDA if the one it forked from had initialised the
    driver, and the server cannot vouch for every library that torch's imports load (its CUDA bindings among
    them); a GPU job is long enough that its worker's own import does not matter. Spawn also where Python
    has no fork server (Windows)."""
    if cuda or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start() -> None:
    """Start the server now and return at once: its imports run while the caller goes on (plans the sweep).

    One server serves every later launch of this process; it exits when this process does."""
    if context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()
