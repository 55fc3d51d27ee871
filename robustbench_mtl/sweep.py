"""Sweep jobs: one run each, in a directory named by its resolved config's hash, locked while it trains."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .config import RunSpec
from .locks import is_locked, job_lock
from .errors import ConfigError, Interrupted, RobustbenchError
from .results import CHECKPOINT, FINAL, atomic_write_json, read_json
from .sweep_spec import SweepSpec, expand

FAILED = "failed.json"
STATES = ("done", "running", "failed", "interrupted", "not started")


@dataclass(frozen=True)
class Job:
    """One run of a sweep: the spec (threads and device are set by the launcher) and its run directory."""

    spec: RunSpec
    out_dir: Path

    @property
    def name(self) -> str:
        return f"{self.spec.data}/{self.out_dir.name}"


def cores() -> int:
    """CPUs this process may run on (a cgroup or taskset limit included, where the OS says so)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_job(job: Job, threads: int = 0, device: str | None = None) -> str:
    """Train `job` unless it is done or locked by another process; resume from its checkpoint if it has one.

    Returns one line: 'done <name>' (trained now), 'done <name> (already finished)', 'running elsewhere
    <name>', 'interrupted <name>' (Ctrl-C; its checkpoint stays for the next launch) or 'failed <name>:
    <reason>' (also written to failed.json in the run directory, removed on success). Never raises for a
    failing run, so one bad job does not stop a sweep."""
    from .runner import run  # deferred: launchers import this module without torch

    spec = replace(job.spec, threads=threads or job.spec.threads, device=device or job.spec.device)
    if (job.out_dir / FINAL).exists():
        return f"done {job.name} (already finished)"
    with job_lock(job.out_dir) as mine:
        if not mine:
            return f"running elsewhere {job.name}"
        try:
            result = run(spec, job.out_dir, locked=True)
        except Interrupted:
            return f"interrupted {job.name}"
        except RobustbenchError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - any crash is recorded as the job's failure, not the sweep's
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        else:
            with contextlib.suppress(FileNotFoundError):
                (job.out_dir / FAILED).unlink()
            # Another launch may have finished it between the check above and taking the lock.
            return f"done {job.name}" + (" (already finished)" if result.already_finished else "")
        atomic_write_json(job.out_dir / FAILED, {"status": "failed", "error": reason})
        return f"failed {job.name}: {reason}"


def job_state(out_dir: Path) -> tuple[str, str]:
    """(state, detail): done (final.json), running (lock held), failed (failed.json; detail = its reason),
    interrupted (a checkpoint, nobody training it) or not started."""
    if (out_dir / FINAL).exists():
        return "done", ""
    if is_locked(out_dir):
        return "running", ""
    if (out_dir / FAILED).exists():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            return "failed", str(read_json(out_dir / FAILED).get("error", ""))
        return "failed", "failed.json is unreadable"
    if (out_dir / CHECKPOINT).exists():
        return "interrupted", ""
    return "not started", ""


@dataclass(frozen=True)
class Planned:
    """A valid job with what cost estimates need from its resolved config."""

    job: Job
    method: str
    backbone: str
    epochs: int
    batch_size: int
    problem: str = ""  # set when it resolves but cannot start yet (a missing pretrained backbone)


@dataclass
class Plan:
    """A sweep's jobs: `jobs` resolve (their directories are known), `invalid` are (spec, one-line reason);
    `problems` counts the jobs behind each reason that many jobs share (a missing dataset, a model not
    downloaded, a pretrained backbone not made yet): one line each, not one per job."""

    sweep: SweepSpec
    jobs: list[Planned] = field(default_factory=list)
    invalid: list[tuple[RunSpec, str]] = field(default_factory=list)
    problems: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.invalid and not any(p.problem for p in self.jobs)

    @property
    def blocked(self) -> int:
        """How many jobs cannot run now."""
        return len(self.invalid) + sum(bool(p.problem) for p in self.jobs)

    def dirs(self) -> list[Path]:
        return [p.job.out_dir for p in self.jobs]


def out_dir_under(runs_dir: Path, default: Path) -> Path:
    """runner.default_out_dir (runs/<data>/<name>) re-rooted under the sweep's runs_dir."""
    return Path(runs_dir) / default.relative_to("runs")


def data_checks(spec: RunSpec) -> tuple[RunSpec, RunSpec] | None:
    """Two erm runs: with `spec`'s dataset and backbone and their hparams (preset ones included), and with its
    dataset alone (the dataset's default backbone). Loading the data and the backbone's tokenizer depends on
    nothing else, so `plan` resolves them once per distinct one: a missing dataset (with its prepare command)
    or a model not downloaded is found once, not once per job. None if the preset has no settings for the
    method (resolving the job itself says so at once)."""
    from .presets import load_preset, method_key
    from .registry import DATASETS
    from .sweep_spec import as_text

    data_cls = DATASETS.get(spec.data)
    try:
        chosen = (load_preset(spec.preset, data_cls.presets, spec.data, method_key(spec.algorithm, spec.aux))
                  if spec.preset else None)
        items = [f"{k}={as_text(k, v, 'preset')}" for k, v in (chosen.overrides if chosen else {}).items()]
    except ConfigError:
        return None
    backbone = spec.backbone or (chosen.backbone if chosen else None) or data_cls.default_backbone
    only = lambda *scopes: tuple(o for o in (*items, *spec.overrides) if o.strip().startswith(scopes))  # noqa: E731
    return (RunSpec(spec.data, "erm", (), backbone, 0, spec.hparams_seed, None, only("data.", "backbone.")),
            RunSpec(spec.data, "erm", (), None, 0, spec.hparams_seed, None, only("data.")))


def _resolved(spec: RunSpec) -> tuple[Any, str]:
    """(the resolved config, '') or (None, the error's one line)."""
    from .config import resolve

    try:
        return resolve(spec), ""
    except RobustbenchError as exc:
        return None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _count(problems: dict[str, int], reason: str) -> None:
    problems[reason] = problems.get(reason, 0) + 1


def plan(sweep: SweepSpec) -> Plan:
    """Resolve every run of the sweep (as `run` would), de-duplicated by run directory."""
    from .backbones.base import BACKBONE_FILE
    from .runner import default_out_dir

    result, seen, checked = Plan(sweep), set(), {}

    def check(c: RunSpec) -> str:
        if c not in checked:
            checked[c] = _resolved(c)[1]
        return checked[c]

    for spec in expand(sweep):
        checks, reasons = data_checks(spec), []
        # The dataset alone is checked only when the pair fails: whether its files are missing too (the
        # prepare command) is then worth a line, and it costs nothing more when they are.
        if checks and check(checks[0]):
            reasons = list(dict.fromkeys(filter(None, (check(checks[1]), check(checks[0])))))
        r, reason = (None, "") if reasons else _resolved(spec)
        if reasons or reason:
            result.invalid.append((spec, (reasons or [reason])[0]))
            for shared in reasons:
                _count(result.problems, shared)
            continue
        out = out_dir_under(sweep.runs_dir, default_out_dir(r))
        if out in seen:
            continue
        seen.add(out)
        init, problem = getattr(r.hparams["backbone"], "init", ""), ""
        if init and not (Path(init) / BACKBONE_FILE).is_file():
            problem = (f"backbone.init={init}: no {BACKBONE_FILE} there yet; create it first with `robustbench-mtl "
                       f"pretrain --aux ... --data {spec.data} --out {init}` (a sweep file's comment gives it)")
            _count(result.problems, problem)
        t = r.hparams["train"]
        result.jobs.append(Planned(Job(spec, out), "+".join([spec.algorithm, *spec.aux]), r.backbone, t.epochs,
                                   t.batch_size, problem))
    return result


def invalid_label(spec: RunSpec) -> str:
    """How plan names a job that has no directory (its config does not resolve)."""
    method = "+".join([spec.algorithm, *spec.aux])
    draw = f" draw {spec.hparams_seed}" if spec.hparams_seed else ""
    sets = f" [{' '.join(spec.overrides)}]" if spec.overrides else ""
    return f"{spec.data}/{method}{'-' + spec.backbone if spec.backbone else ''}-s{spec.seed}{draw}{sets}"


def status(p: Plan) -> list[tuple[Planned, str, str]]:
    """(job, state, detail) for every valid job, in plan order."""
    return [(job, *job_state(job.job.out_dir)) for job in p.jobs]


def make_launcher(name: str, layers: list[Mapping[str, Any]]) -> Any:
    """The registered launcher `name` with its HParams built from `layers` (spec options, then --opt)."""
    from .hparams import build
    from .registry import LAUNCHERS

    cls = LAUNCHERS.get(name)
    return cls(build(cls.HParams, "launcher", layers))


def launch(p: Plan, launcher: Any, log: Callable[[str], None]) -> list[str]:
    """Place the not-done jobs of a valid plan on `launcher`; one outcome line per job, done ones included."""
    if not p.ok:
        first = next(iter(p.problems), None) or p.invalid[0][1]
        raise ConfigError(f"{p.blocked} job(s) of sweep '{p.sweep.name}' cannot run ({first}); nothing was "
                          f"launched; see `robustbench-mtl sweep plan`")
    done = [f"done {j.job.name} (already finished)" for j in p.jobs if (j.job.out_dir / FINAL).exists()]
    todo = [j.job for j in p.jobs if not (j.job.out_dir / FINAL).exists()]
    return done + (launcher.launch(todo, log) if todo else [])


def collect(p: Plan, out_dir: Path, command: str | None = None, warn: Any = None) -> list[Path]:
    """Leaderboards of this sweep's finished jobs only (not of everything else under its runs_dir)."""
    from .leaderboard import write_leaderboards

    return write_leaderboards(p.sweep.runs_dir, out_dir, warn, only=p.dirs(), command=command,
                              split_by=p.sweep.split_by, metrics=p.sweep.metrics)


def regenerate_command(source: str, out_dir: Path) -> str:
    """The command that rebuilds a sweep's leaderboards from nothing (done jobs are skipped)."""
    return (f"robustbench-mtl sweep launch {source} && robustbench-mtl sweep collect {source} "
            f"--out {out_dir}")
