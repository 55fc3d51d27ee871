"""`robustbench-mtl sweep plan|launch|status|collect`: the click layer over robustbench_mtl.sweep."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import click
from rich.markup import escape
from rich.table import Table

from .cli_common import err, out
from .cli_common import fail_cleanly as _fail_cleanly
from .cli_common import split_names as _names


@click.group()
def sweep() -> None:
    """Plan, launch, watch and collect a sweep: a TOML file (docs/sweeps.md) and/or flags."""


def _sweep_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """SPEC (a .toml file) and the flags that give or replace its keys."""
    options = [
        click.argument("spec_path", metavar="[SPEC]", required=False, type=click.Path(path_type=Path)),
        click.option("--data", "datasets", multiple=True, help="dataset(s); repeat or comma-separate"),
        click.option("--methods", default=None, help="comma-separated methods, algorithm+aux (erm,mt_l1+recon)"),
        click.option("--backbones", default=None, help="comma-separated backbones; default: each dataset's"),
        click.option("--seeds", default=None, help="comma-separated seeds (default 0,1,2)"),
        click.option("--preset", default=None, help="a dataset preset (e.g. paper) for every job"),
        click.option("--random", "random_draws", type=int, default=None, help="N random hparam draws, not a grid"),
        click.option("--grid", multiple=True, metavar="SCOPE.FIELD=V1,V2", help="a grid axis (repeat)"),
        click.option("--set", "fixed", multiple=True, metavar="SCOPE.FIELD=VALUE", help="a value for every job"),
        click.option("--runs-dir", default=None, help="where the run directories go (default runs)"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load_sweep(spec_path: Path | None, datasets: tuple[str, ...], methods: str | None, backbones: str | None,
                seeds: str | None, preset: str | None, random_draws: int | None, grid: tuple[str, ...],
                fixed: tuple[str, ...], runs_dir: str | None) -> Any:
    """The sweep from SPEC and flags; `source` repeats them for the regenerating command."""
    import shlex

    from .errors import ConfigError
    from .sweep_spec import load

    def pairs(items: tuple[str, ...], flag: str) -> dict[str, str]:
        bad = [i for i in items if "=" not in i]
        if bad:
            raise ConfigError(f"{flag} expects SCOPE.FIELD=VALUE, got {bad[0]!r}")
        return dict(i.split("=", 1) for i in items)

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()] if seeds is not None else None
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers, got {seeds!r}") from None
    flags = {"datasets": list(_names(datasets)) or None, "methods": methods, "backbones": backbones, "seeds": seed_list,
             "preset": preset, "random": random_draws, "runs_dir": runs_dir,
             "grid": {k: v.split(",") for k, v in pairs(grid, "--grid").items()} or None,
             "fixed": pairs(fixed, "--set") or None}
    flags = {k: v for k, v in flags.items() if v is not None}
    if spec_path is None and not flags:
        raise ConfigError("give a sweep file (e.g. sweeps/synthetic.toml) or flags (--data ... --methods ...)")
    tokens = [str(spec_path)] if spec_path is not None else []
    for flag, value in (("--data", ",".join(_names(datasets))), ("--methods", methods), ("--backbones", backbones),
                        ("--seeds", seeds), ("--preset", preset), ("--random", random_draws), ("--runs-dir", runs_dir)):
        tokens += [flag, str(value)] if value not in (None, "") else []
    tokens += [t for g in grid for t in ("--grid", g)] + [t for f in fixed for t in ("--set", f)]
    return load(spec_path, flags, shlex.join(tokens))


def _launcher_in(spec_path: Path | None) -> str:
    """The launcher a sweep file names, read without the planner's imports; "local" when it names none or
    cannot be read (the planner then reports the bad file)."""
    if spec_path is None:
        return "local"
    try:
        import tomllib  # Python 3.11+; on 3.10 the guess stays "local"

        name = tomllib.loads(spec_path.read_text(encoding="utf-8")).get("launcher", {}).get("name", "local")
    except Exception:  # noqa: BLE001 - any unreadable file is the planner's to report, with its own message
        return "local"
    return name if isinstance(name, str) else "local"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def _print_invalid(p: Any) -> None:
    """Each invalid job with its reason; a reason many jobs share (a missing dataset) once, with its count."""
    from .sweep import invalid_label

    for spec, reason in p.invalid:
        if reason not in p.problems:
            err.print(f"[red]invalid[/] {escape(invalid_label(spec))}: {escape(reason)}", highlight=False, soft_wrap=True)
    for reason, n in p.problems.items():
        err.print(f"[red]{n} job(s) cannot run:[/] {escape(reason)}", highlight=False, soft_wrap=True)


def _not_ok(p: Any, then: str = "") -> Any:
    from .errors import ConfigError

    total = len(p.invalid) + len(p.jobs)
    return ConfigError(f"{p.blocked} of {total} jobs of sweep '{p.sweep.name}' cannot run (reasons above){then}")


@sweep.command("plan")
@_sweep_options
@click.option("--workers", type=int, default=None, help="workers for the wall-time estimate (default: the spec's)")
@click.option("--probe/--no-probe", default=True, help="time a few steps of jobs without recorded epoch times")
@_fail_cleanly
def sweep_plan(workers: int | None, probe: bool, **kw: Any) -> None:
    """List the jobs, flag invalid ones, and estimate CPU and wall time; non-zero exit if any is invalid."""
    from .sweep import plan
    from .sweep_cost import estimate

    p = plan(_load_sweep(**kw))
    spec_workers = p.sweep.launcher.get("workers", 1)  # a bad value is the launch's error to report
    workers = workers or (spec_workers if isinstance(spec_workers, int) and spec_workers > 0 else 1)
    cost = estimate(p, workers, probe=probe)
    table = Table(title=f"sweep {p.sweep.name}: {len(p.jobs)} jobs under {p.sweep.runs_dir}")
    for col in ("job", "state", "estimate", "from"):
        table.add_column(col, no_wrap=col == "job", overflow="fold")
    for j in p.jobs:
        seconds, source = cost.seconds.get(j.job.out_dir, (None, ""))
        state = "done" if j.job.out_dir not in cost.seconds else "[red]cannot run[/]" if j.problem else "to run"
        table.add_row(escape(j.job.name), state, "" if state == "done" else _duration(seconds), source)
    if p.jobs:
        out.print(table)
    _print_invalid(p)
    sources = {s: sum(src == s for _, src in cost.seconds.values()) for s in ("recorded", "probe", "unknown")}
    out.print(f"{len(cost.seconds)} to run: CPU time {_duration(cost.cpu_s)}, wall time {_duration(cost.wall_s)} "
              f"with {workers} worker(s), at most (no early stop); estimates: {sources['recorded']} recorded (time/"
              f"epoch_s of finished runs x epochs), {sources['probe']} probe (timed steps), {sources['unknown']} "
              f"unknown", highlight=False, soft_wrap=True)
    if not p.ok:
        raise _not_ok(p)


@sweep.command("launch")
@_sweep_options
@click.option("--launcher", "launcher_name", default=None, help="launcher name (default: the spec's, else local)")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="a launcher option (repeat), e.g. workers=2")
@_fail_cleanly
def sweep_launch(launcher_name: str | None, opts: tuple[str, ...], **kw: Any) -> None:
    """Run the sweep's not-done jobs (done ones are skipped, partial ones resume); refuse if any is invalid."""
    if (launcher_name or _launcher_in(kw["spec_path"])) == "local":
        from .launchers import _forkserver

        _forkserver.start()  # the workers' torch import runs while this process imports torch and plans
    from .errors import ConfigError
    from .sweep import launch, make_launcher, plan

    p = plan(_load_sweep(**kw))
    if not p.ok:
        _print_invalid(p)
        raise _not_ok(p, "; nothing was launched")
    spec_opts = {k: v for k, v in p.sweep.launcher.items() if k != "name"}
    name = launcher_name or p.sweep.launcher.get("name", "local")
    bad = [o for o in opts if "=" not in o]
    if bad:
        raise ConfigError(f"--opt expects KEY=VALUE (e.g. workers=2), got {bad[0]!r}")
    layers = [spec_opts if name == p.sweep.launcher.get("name", "local") else {}, dict(o.split("=", 1) for o in opts)]
    lines = launch(p, make_launcher(name, layers), lambda line: out.print(escape(line), highlight=False))
    counts: dict[str, int] = {}
    for line in lines:
        kind = ("already finished" if line.endswith("(already finished)") else "running elsewhere"
                if line.startswith("running elsewhere") else line.split(" ", 1)[0])
        counts[kind] = counts.get(kind, 0) + 1
    out.print(f"sweep {p.sweep.name}: " + ", ".join(f"{n} {k}" for k, n in counts.items()), highlight=False,
              soft_wrap=True)
    for line in lines:
        if line.startswith(("failed", "lost")):
            err.print(escape(line), highlight=False, soft_wrap=True)
    if counts.get("failed") or counts.get("lost") or counts.get("interrupted"):
        sys.exit(1)


@sweep.command("status")
@_sweep_options
@_fail_cleanly
def sweep_status(**kw: Any) -> None:
    """Count the sweep's jobs: done, running (lock held), failed (with reasons), interrupted, not started."""
    from .sweep import STATES, plan, status

    p = plan(_load_sweep(**kw))
    rows = status(p)
    counts = {s: sum(state == s for _, state, _ in rows) for s in STATES}
    out.print(f"sweep {p.sweep.name} ({len(rows)} jobs under {p.sweep.runs_dir}): "
              + ", ".join(f"{n} {s}" for s, n in counts.items()), highlight=False, soft_wrap=True)
    for j, state, detail in rows:
        if state == "failed":
            out.print(f"failed {escape(j.job.name)}: {escape(detail)}", highlight=False, soft_wrap=True)
    _print_invalid(p)


@sweep.command("collect")
@_sweep_options
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("leaderboards"), show_default=True,
              help="write <dataset>.md and <dataset>.json here")
@_fail_cleanly
def sweep_collect(out_dir: Path, **kw: Any) -> None:
    """Leaderboards of this sweep's finished jobs only, headed by the command that regenerates them."""
    from .sweep import collect, plan, regenerate_command, status

    p = plan(_load_sweep(**kw))
    pending = [j.job.name for j, state, _ in status(p) if state != "done"]
    if pending:
        err.print(f"[yellow]warning:[/] {len(pending)} of {len(p.jobs)} jobs are not done (e.g. {escape(pending[0])}); "
                  f"the tables hold the finished ones", highlight=False, soft_wrap=True)

    def warn(skip: Any) -> None:
        err.print(f"[yellow]warning:[/] skipped {escape(str(skip.path))}: {escape(skip.reason)}",
                  highlight=False, soft_wrap=True)

    for path in collect(p, out_dir, regenerate_command(p.sweep.source, out_dir), warn):
        out.print(f"wrote {path}")
