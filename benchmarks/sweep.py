"""Sweep throughput: an 8-job `synthetic` sweep through the local launcher with 2 workers against 1 worker.

Both arms run the same 8 jobs (erm, erm_l1, mt + recon, mt_l1 + recon x seeds 0 and 1; every job trains its
full `--epochs`, by default synthetic's own 100, no early stop) into a fresh temporary runs directory, with the
dataset generated once beforehand into a shared cache. Each arm runs in a fresh Python process, so neither
finds the other's fork server warm; its clock starts once the sweep is planned and stops when the launch
returns: worker start-up (the fork server importing torch) is included, as a user pays it. The arms run
`--repeat` times, alternating; prints every time, the medians and their ratio; on a 2-core machine the
target is >= 1.8x. Other load on the machine makes the ratio meaningless.

Then the same two arms as users run them: the whole `robustbench-mtl sweep launch` command, Python start-up,
imports, planning and exit included (the CLI starts the fork server first, so its imports overlap the
planning), also `--repeat` times.

It also prints the machine's own ceiling for this work, without the launcher: two of the sweep's jobs run
as two plain `robustbench-mtl run` processes one after the other, then both at once (ratio = sequential /
concurrent wall time). On virtual CPUs that share a physical core, or share caches and memory bandwidth,
this ceiling is below 2x, and no launcher can beat it. Last, the same sweep at 1 epoch per job shows the
launch's fixed cost (worker start-up, first-job work), which more workers do not shorten.

    python benchmarks/sweep.py                  # CPU workers; taskset -c 0,1 ... to pin to 2 cores
    python benchmarks/sweep.py --epochs 50      # shorter jobs: the fixed cost weighs more
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

METHODS = ["erm", "erm_l1", "mt+recon", "mt_l1+recon"]


def sweep_once(workers: int, epochs: int, root: Path, gpus: str = "none") -> float:
    """Wall seconds of one launch of the 8-job sweep with `workers` local workers into a fresh runs dir."""
    from robustbench_mtl import sweep, sweep_spec
    from robustbench_mtl.launchers.local import Local, LocalHParams

    spec = sweep_spec.parse({
        "datasets": ["synthetic"], "methods": METHODS, "seeds": [0, 1],
        "runs_dir": str(tempfile.mkdtemp(dir=root, prefix=f"runs-{workers}w-")),
        "fixed": {"train.epochs": epochs, "train.patience": 0}})
    plan = sweep.plan(spec)
    t0 = time.perf_counter()
    lines = sweep.launch(plan, Local(LocalHParams(workers=workers, gpus=gpus)), lambda line: None)
    seconds = time.perf_counter() - t0
    bad = [line for line in lines if not line.startswith("done ")]
    if len(lines) != 8 or bad:
        raise SystemExit(f"the {workers}-worker sweep did not finish: {bad or lines}")
    return seconds


def arm(workers: int, epochs: int, root: Path, gpus: str) -> float:
    """`sweep_once` in a fresh Python process (this script with --arm): no fork server is warm there."""
    out = subprocess.run([sys.executable, __file__, "--arm", str(workers), "--epochs", str(epochs), "--root",
                          str(root), "--gpus", gpus], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the {workers}-worker arm failed:\n{out.stdout}{out.stderr}")
    return float(out.stdout.split()[-1])


def cli_once(workers: int, epochs: int, root: Path, gpus: str) -> float:
    """Wall seconds of the whole `robustbench-mtl sweep launch` command for the same sweep, until its process
    exits (when a shell prompt returns). Its output goes to a file, not a pipe: a pipe's reader would also wait
    for the fork server, which holds the launcher's stdout and takes ~1 s to exit after it."""
    runs = tempfile.mkdtemp(dir=root, prefix=f"cli-{workers}w-")
    cmd = [sys.executable, "-m", "robustbench_mtl", "sweep", "launch", "--data", "synthetic", "--methods",
           ",".join(METHODS), "--seeds", "0,1", "--set", f"train.epochs={epochs}", "--set", "train.patience=0",
           "--runs-dir", runs, "--launcher", "local", "--opt", f"workers={workers}", "--opt", f"gpus={gpus}"]
    log = Path(runs) / "launch.log"
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        code = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT).wait()
        seconds = time.perf_counter() - t0
    if code != 0 or "8 done" not in log.read_text():
        raise SystemExit(f"`sweep launch` with {workers} workers failed:\n{log.read_text()}")
    return seconds


def ceiling(epochs: int, root: Path) -> tuple[float, float]:
    """(sequential, concurrent) wall seconds of two `mt_l1 + recon` runs (seeds 0, 1) as plain processes."""
    def start(seed: int, tag: str) -> subprocess.Popen:
        out = root / f"ceiling-{tag}-{seed}"
        return subprocess.Popen([sys.executable, "-m", "robustbench_mtl", "run", "--quiet", "--algo", "mt_l1",
                                 "--aux", "recon", "--data", "synthetic", "--seed", str(seed), "--threads", "1",
                                 "--set", f"train.epochs={epochs}", "--set", "train.patience=0", "--out", str(out)],
                                stdout=subprocess.DEVNULL)

    def wait(procs: list[subprocess.Popen]) -> None:
        if any(p.wait() != 0 for p in procs):
            raise SystemExit("a ceiling run failed")

    t0 = time.perf_counter()
    for seed in (0, 1):
        wait([start(seed, "seq")])
    sequential = time.perf_counter() - t0
    t0 = time.perf_counter()
    wait([start(seed, "par") for seed in (0, 1)])
    return sequential, time.perf_counter() - t0


def alternating(timed: Callable[[int], float], repeat: int) -> dict[int, list[float]]:
    """`repeat` timings of `timed(workers)` for 1 and 2 workers, alternating, so that a drift in the machine's
    speed hits both arms alike."""
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeat):
        for n in (1, 2):
            times[n].append(timed(n))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="epochs per job (each ~0.04 s on one core)")
    parser.add_argument("--repeat", type=int, default=3, help="timed launches per arm (the median is reported)")
    parser.add_argument("--gpus", default="none", help="the launcher's gpus option; none = CPU workers (default)")
    parser.add_argument("--arm", type=int, default=None, help=argparse.SUPPRESS)  # one timed launch, see arm()
    parser.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm is not None:
        print(sweep_once(args.arm, args.epochs, args.root, args.gpus))
        return
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ROBUSTBENCH_MTL_CACHE"] = str(Path(tmp) / "cache")  # every process below inherits it
        from robustbench_mtl.config import RunSpec, resolve

        resolve(RunSpec("synthetic", "erm"))  # generate the dataset once, outside the timings
        times = alternating(lambda n: arm(n, args.epochs, Path(tmp), args.gpus), args.repeat)
        one, two = statistics.median(times[1]), statistics.median(times[2])
        cli_times = alternating(lambda n: cli_once(n, args.epochs, Path(tmp), args.gpus), args.repeat)
        cli = [statistics.median(cli_times[n]) for n in (1, 2)]
        seq, par = ceiling(args.epochs, Path(tmp)) if args.gpus == "none" else (None, None)
        # What does not shrink with more workers: the same 8 jobs at 1 epoch each (start-up dominated)
        fixed = [arm(n, 1, Path(tmp), args.gpus) for n in (1, 2)]
    from robustbench_mtl.sweep import cores

    print(f"8 synthetic jobs, {args.epochs} epochs each, {cores()} cores, gpus={args.gpus}")
    for n, median in ((1, one), (2, two)):
        each = ", ".join(f"{t:.1f}" for t in times[n])
        print(f"{n} worker{'s' if n > 1 else ''}: {' ' if n == 1 else ''}{median:.1f} s (median of {each})")
    print(f"throughput ratio (2 workers / 1 worker): {one / two:.2f}x (target >= 1.8x on 2 cores)")
    print(f"the whole `sweep launch` command (medians): 1 worker {cli[0]:.1f} s, 2 workers {cli[1]:.1f} s: "
          f"{cli[0] / cli[1]:.2f}x")
    print(f"the same sweep at 1 epoch per job (launch and start-up cost): 1 worker {fixed[0]:.1f} s, "
          f"2 workers {fixed[1]:.1f} s")
    if seq is not None:
        print(f"ceiling without the launcher: 2 runs one after the other {seq:.1f} s, both at once {par:.1f} s: "
              f"{seq / par:.2f}x")


if __name__ == "__main__":
    main()
