"""Cost estimates of a sweep's jobs: recorded epoch times of finished runs, else a short probe."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from .config import RunSpec
from .results import FINAL, read_json
from .sweep import Plan, cores


@dataclass(frozen=True)
class Cost:
    """Estimated seconds per not-done job (None = no estimate) with the source of each, and the totals."""

    seconds: dict[Path, tuple[float | None, str]]
    cpu_s: float
    wall_s: float


def recorded_epoch_s(runs_dir: Path) -> dict[tuple[str, str, str], float]:
    """Mean time/epoch_s of the finished runs under runs_dir, per (dataset, method, backbone)."""
    from .results import CONFIG, METRICS, read_jsonl

    times: dict[tuple[str, str, str], list[float]] = {}
    for final in sorted(Path(runs_dir).glob(f"*/*/{FINAL}")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
            cfg = read_json(final.parent / CONFIG)
            key = (cfg["spec"]["data"], "+".join([cfg["spec"]["algorithm"], *cfg["spec"]["aux"]]), cfg["backbone"])
            epochs = [float(x["time/epoch_s"]) for x in read_jsonl(final.parent / METRICS) if "time/epoch_s" in x]
            times.setdefault(key, []).extend(epochs)
    return {k: sum(v) / len(v) for k, v in times.items() if v}


def probe_epoch_s(spec: RunSpec, threads: int = 0, steps: int = 3) -> float:
    """Seconds one epoch of `spec` takes here with `threads` torch threads as a local worker has them (tabular
    models keep one): a few timed update steps (after one warm-up step) times the steps per epoch, plus one
    evaluation of val and test. Nothing is written outside a temporary directory."""
    import tempfile
    import time

    import torch

    from .config import resolve
    from .loaders import epoch_batches, steps_per_epoch
    from .runner import pick_device, set_threads
    from .trainer import Reporter, Trainer, evaluate

    r, before = resolve(spec), torch.get_num_threads()
    device = pick_device(spec.device)
    if threads > 0:
        torch.set_num_threads(threads)
    set_threads(device, 0, r.info.modality)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tr = Trainer(r, Path(tmp), device, Reporter())
            batches = epoch_batches(tr.train, tr.t.batch_size, spec.seed, 0)
            aux = (lambda: tr.aux.next()) if tr.aux is not None else (lambda: None)
            tr.algo.update(next(batches), aux())
            t0 = time.perf_counter()
            done = 0
            for _, batch in zip(range(steps), batches):
                tr.algo.update(batch, aux())
                done += 1
            step_s = (time.perf_counter() - t0) / max(done, 1)
            t1 = time.perf_counter()
            evaluate(tr.algo, tr.val, "val", r), evaluate(tr.algo, tr.test, "test", r)
            return step_s * steps_per_epoch(len(tr.train), tr.t.batch_size) + time.perf_counter() - t1
    finally:
        torch.set_num_threads(before)


def makespan(seconds: list[float], workers: int) -> float:
    """Wall time of jobs placed longest first on the least loaded of `workers` (a close upper bound)."""
    loads = [0.0] * max(workers, 1)
    for s in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += s
    return max(loads)


def estimate(p: Plan, workers: int = 1, probe: bool = True) -> Cost:
    """Seconds per not-done job: recorded epoch times of finished runs with the same dataset, method and
    backbone x the job's epochs ('recorded'), else a probe per (dataset, method, backbone, batch size)
    ('probe'). Epochs are the maximum: early stopping only shortens a job."""
    recorded, probed, threads = recorded_epoch_s(p.sweep.runs_dir), {}, max(1, cores() // max(workers, 1))
    seconds: dict[Path, tuple[float | None, str]] = {}
    for j in p.jobs:
        if (j.job.out_dir / FINAL).exists():
            continue
        key = (j.job.spec.data, j.method, j.backbone)
        if key in recorded:
            seconds[j.job.out_dir] = (recorded[key] * j.epochs, "recorded")
            continue
        if probe and not j.problem and (*key, j.batch_size) not in probed:
            try:
                probed[(*key, j.batch_size)] = probe_epoch_s(j.job.spec, threads)
            except Exception:  # noqa: BLE001 - an estimate must never stop a plan; the job says 'unknown'
                probed[(*key, j.batch_size)] = None
        epoch_s = probed.get((*key, j.batch_size))
        seconds[j.job.out_dir] = (None, "unknown") if epoch_s is None else (epoch_s * j.epochs, "probe")
    known = [s for s, _ in seconds.values() if s is not None]
    return Cost(seconds, sum(known), makespan(known, workers))
