"""The `robustbench-mtl` command: a thin click + rich layer over the library functions."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .errors import RobustbenchError
from .registry import CORE_DIST

# Where datasets read from disk live by default; kept here so `--help` needs no dataset import.
DEFAULT_ROOT, ROOT_ENV = "data", "ROBUSTBENCH_MTL_DATA"

out = Console()
err = Console(stderr=True)


def _fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors become one line on stderr and a non-zero exit (2; 130 after Ctrl-C); bugs keep their
    traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RobustbenchError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)

    return wrapper


def _print_json(obj: Any) -> None:
    from .results import dumps

    click.echo(dumps(obj))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="robustbench-mtl")
def main() -> None:
    """Train and compare multitask and group-robustness methods on standard splits."""


def _epoch_line(epoch: int, epochs: int, record: dict[str, Any]) -> str:
    def pct(key: str) -> str:
        v = record.get(key)
        return "-" if v is None else f"{100 * v:.1f}%"

    loss = record.get("train/loss")
    return (f"epoch {epoch + 1}/{epochs}: loss {'-' if loss is None else f'{loss:.4f}'}, val worst-group "
            f"{pct('val/worst_group_acc')}, val avg {pct('val/avg_acc')} ({record.get('time/epoch_s', 0):.1f} s)")


class PlainReporter:
    """One plain line per epoch on stderr, for logs that are not a terminal (batch jobs, Slurm)."""

    def start(self, epochs: int, steps: int, start_epoch: int) -> None:
        self.epochs = epochs

    def resumed(self, epoch: int, out: Path) -> None:
        click.echo(f"resuming {out} from its checkpoint after epoch {epoch + 1}", err=True)

    def step(self, epoch: int, step: int, losses: dict[str, float]) -> None: ...

    def epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        click.echo(_epoch_line(epoch, self.epochs, record), err=True)

    def close(self) -> None: ...


class RichReporter(PlainReporter):
    """A progress bar: epoch, step, loss and the last validation worst-group accuracy."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("val WG {task.fields[wg]}"),
            TimeElapsedColumn(), console=err, transient=False,
        )
        self.task: Any = None
        self.wg = "-"

    def start(self, epochs: int, steps: int, start_epoch: int) -> None:
        self.epochs, self.steps = epochs, steps
        self.progress.start()
        self.task = self.progress.add_task("train", total=epochs * steps, completed=start_epoch * steps,
                                           epoch=f"{start_epoch + 1}/{epochs}", loss="-", wg=self.wg)

    def resumed(self, epoch: int, out: Path) -> None:
        err.print(f"resuming {escape(str(out))} from its checkpoint after epoch {epoch + 1}", highlight=False)

    def step(self, epoch: int, step: int, losses: dict[str, float]) -> None:
        self.progress.update(self.task, completed=epoch * self.steps + step, epoch=f"{epoch + 1}/{self.epochs}",
                             loss=f"{losses['loss']:.4f}" if "loss" in losses else "-")

    def epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        wg = record.get("val/worst_group_acc")
        self.wg = "-" if wg is None else f"{100 * wg:.1f}%"
        self.progress.update(self.task, wg=self.wg)

    def close(self) -> None:
        self.progress.stop()


def _reporter(quiet: bool) -> Any:
    """A progress bar on a terminal, plain lines in logs, nothing with --quiet/--json."""
    if quiet:
        return None
    return RichReporter() if err.is_terminal else PlainReporter()


def _spec_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options `run` and `pretrain` share: what to train, on what, how, and where."""
    options = [
        click.option("--data", help="dataset name (see `robustbench-mtl list datasets`)"),
        click.option("--aux", multiple=True, help="auxiliary objective(s); repeat or comma-separate"),
        click.option("--backbone", default=None, help="backbone name; default: the dataset's"),
        click.option("--root", type=click.Path(path_type=Path), default=None,
                     help=f"data root of a dataset read from disk (= --set data.root=DIR); default: "
                          f"${ROOT_ENV}, else ./{DEFAULT_ROOT}"),
        click.option("--seed", default=0, show_default=True, type=int, help="run seed (init, shuffling, augmentation)"),
        click.option("--preset", default=None, help="a preset of the dataset, or a .toml/.json file of overrides"),
        click.option("--set", "overrides", multiple=True, metavar="SCOPE.FIELD=VALUE", help="override one hparam"),
        click.option("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu, cuda, cuda:N"),
        click.option("--threads", type=int, default=0,
                     help="torch CPU threads; 0 = auto (1 for tabular data on CPU, else all cores)"),
        click.option("--json", "as_json", is_flag=True, help="print final.json to stdout"),
        click.option("--quiet", is_flag=True, help="no progress bar or per-epoch lines"),
        click.option("--log", "log", multiple=True, metavar="LOGGER",
                     help="also log to LOGGER: tensorboard (event files in <run>/tensorboard; extra [tensorboard])"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _with_root(data: str, root: Path | None, overrides: tuple[str, ...]) -> tuple[str, ...]:
    """`--root DIR` as the `data.root` override it stands for (given once, for a dataset read from disk)."""
    if root is None:
        return overrides
    from .errors import ConfigError
    from .hparams import fields_of
    from .registry import DATASETS

    if "root" not in {f.name for f in fields_of(DATASETS.get(data).HParams)}:
        raise ConfigError(f"dataset '{data}' is embedded: it has no data root, so --root does not apply")
    if any(o.strip().startswith("data.root=") for o in overrides):
        raise ConfigError("the data root is given twice (--root and --set data.root=...); keep one")
    return (f"data.root={root}", *overrides)


def _report(result: Any, as_json: bool) -> None:
    if as_json:
        _print_json(result.final)
        return
    if result.already_finished:
        err.print(f"already finished: {result.out_dir} (nothing was retrained)")
    _print_summary(result.final)
    out.print(f"results: [bold]{result.out_dir}[/] (config.json, metrics.jsonl, final.json)")


@main.command()
@click.option("--algo", "algorithm", help="algorithm name (see `robustbench-mtl list algorithms`)")
@_spec_options
@click.option("--hparams-seed", default=0, show_default=True, type=int,
              help="0 = defaults; N > 0 = a random draw from the search spaces, seeded per field")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="run directory; default runs/<data>/<method>-<backbone>-s<seed>-<hash>")
@click.option("--resume", is_flag=True, help="continue the run in --out from its own config.json")
@_fail_cleanly
def run(algorithm: str | None, data: str | None, aux: tuple[str, ...], backbone: str | None, root: Path | None,
        seed: int, hparams_seed: int, preset: str | None, overrides: tuple[str, ...], out_dir: Path | None,
        device: str, resume: bool, threads: int, as_json: bool, quiet: bool, log: tuple[str, ...]) -> None:
    """Train and evaluate one configuration; prints where its results are."""
    from .config import RunSpec
    from .errors import ConfigError
    from .results import CONFIG, read_json
    from .runner import run as run_fn

    if resume:
        if out_dir is None or not (out_dir / CONFIG).exists():
            raise ConfigError("--resume needs --out pointing at a run directory that holds config.json")
        spec = RunSpec.from_json({**read_json(out_dir / CONFIG)["spec"], "threads": threads,
                                  **({"log": _names(log)} if log else {})})
    else:
        if not algorithm or not data:
            raise ConfigError("run needs --algo and --data (or --resume --out DIR); see `robustbench-mtl run -h`")
        spec = RunSpec(data=data, algorithm=algorithm, aux=_names(aux), backbone=backbone, seed=seed,
                       hparams_seed=hparams_seed, preset=preset, overrides=_with_root(data, root, overrides),
                       device=device, threads=threads, log=_names(log))
    _report(run_fn(spec, out_dir, _reporter(quiet or as_json)), as_json)


def _names(aux: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(a.strip() for item in aux for a in item.split(",") if a.strip())


@main.command()
@_spec_options
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="directory for the pretraining run and the saved backbone.pt")
@_fail_cleanly
def pretrain(data: str | None, aux: tuple[str, ...], backbone: str | None, root: Path | None, seed: int,
             preset: str | None, overrides: tuple[str, ...], out_dir: Path, device: str, threads: int,
             as_json: bool, quiet: bool, log: tuple[str, ...]) -> None:
    """Task-adaptive pretraining: train a backbone on DATA's training inputs with --aux objectives only (no
    labels) and save it in --out; start any run from it with --set backbone.init=OUT."""
    from .config import RunSpec
    from .errors import ConfigError
    from .runner import pretrain as pretrain_fn

    if not data or not aux:
        raise ConfigError("pretrain needs --data and --aux (e.g. --aux mim); see `robustbench-mtl pretrain -h`")
    spec = RunSpec(data=data, algorithm="tapt", aux=_names(aux), backbone=backbone, seed=seed, preset=preset,
                   overrides=_with_root(data, root, overrides), device=device, threads=threads, log=_names(log))
    path = pretrain_fn(spec, out_dir, _reporter(quiet or as_json))
    if as_json:
        _print_json({"backbone": str(path), "init": f"backbone.init={out_dir}"})
        return
    out.print(f"saved [bold]{path}[/]; start a run from it with --set backbone.init={out_dir}")


@main.command()
@click.argument("dataset")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help=f"data root to download into; default: ${ROOT_ENV}, else ./{DEFAULT_ROOT}")
@_fail_cleanly
def prepare(dataset: str, root: Path | None) -> None:
    """Download DATASET's files into --root with its maintained downloader, verify them, print the dir."""
    from .data._images import resolve_root
    from .errors import ConfigError
    from .registry import DATASETS

    prepare_fn = getattr(DATASETS.get(dataset), "prepare", None)
    if prepare_fn is None:
        raise ConfigError(f"dataset '{dataset}' is embedded: nothing to prepare")
    click.echo(str(prepare_fn(Path(resolve_root(DEFAULT_ROOT) if root is None else root))))


def _print_summary(final: dict[str, Any]) -> None:
    table = Table(title="test accuracy at the epoch each protocol selects")
    for col in ("selection", "epoch", "val WG", "test WG", "test avg"):
        table.add_column(col, justify="right" if col != "selection" else "left")
    for name, s in final["selections"].items():
        label = f"{name} ({s['label']})" + (" [ORACLE]" if s["oracle"] else "")
        table.add_row(label, str(s["epoch"]), _pct(s["val"].get("worst_group_acc")),
                      _pct(s["test"].get("worst_group_acc")), _pct(s["test"].get("avg_acc")))
    out.print(table)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


@main.command("list")
@click.argument("kind", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@_fail_cleanly
def list_cmd(kind: str | None, as_json: bool) -> None:
    """Registered components of KIND (datasets, backbones, objectives, algorithms, selections, launchers)."""
    from .catalog import kinds, list_components

    rows = {k: list_components(k) for k in ([kinds(kind)] if kind else kinds())}
    if as_json:
        _print_json(rows)
        return
    for k, entries in rows.items():
        table = Table(title=k)
        groups = k == "algorithms"
        table.add_column("name", no_wrap=True)  # names must stay copyable, whatever the terminal width
        table.add_column("summary", ratio=1, min_width=22)
        if groups:
            table.add_column("groups", no_wrap=True)
        table.add_column("provider", max_width=14, overflow="fold")
        for e in entries:
            summary = e["summary"] if "error" not in e else f"[red]failed to load:[/] {escape(e['error'])}"
            provider = "core" if e["provider"].startswith(f"{CORE_DIST} ") else e["provider"]
            table.add_row(e["name"], summary, *([_groups(e)] if groups else []), provider)
        out.print(table)
    out.print(f"[dim]core = {CORE_DIST} {__version__}; groups: the group labels an algorithm trains with "
              f"(train) or uses after training (val), or the environments it trains with (env: the dataset's, "
              f"or its training groups where it declares none)[/]")


def _groups(e: dict[str, Any]) -> str:
    used = [s for s, key in (("train", "train groups"), ("val", "val groups"), ("env", "environments"))
            if e.get(key)]
    return "+".join(used) or "-"


@main.command()
@click.argument("kind")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@_fail_cleanly
def show(kind: str, name: str, as_json: bool) -> None:
    """A component's documentation and hyperparameters (default and search space)."""
    from .catalog import describe

    info = describe(kind, name)
    if as_json:
        _print_json(info)
        return
    out.print(f"[bold]{info['kind']} {info['name']}[/]  ({info['provider']})\n")
    out.print(info["doc"], highlight=False)
    for key, value in info.get("facts", {}).items():
        out.print(f"[bold]{key}:[/] {value}", highlight=False)
    if info["hparams"]:
        table = Table(title="hyperparameters (--set KEY=VALUE)")
        for col in ("key", "type", "default", "range", "search space", "help"):
            table.add_column(col, no_wrap=col == "key")
        for h in info["hparams"]:
            table.add_row(h["key"], h["type"], json.dumps(h["default"]), h.get("range") or "-", h["space"] or "-",
                          escape(h["help"]))
        out.print(table)


def _warn_skipped(skip: Any) -> None:
    """A damaged run directory, on stderr, so that JSON output stays pure JSON on stdout."""
    err.print(f"[yellow]warning:[/] skipped {escape(str(skip.path))}: {escape(skip.reason)}",
              highlight=False, soft_wrap=True)


@main.command()
@click.argument("runs_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="write <dataset>.<format> files (and comparisons) here instead of printing")
@click.option("--json", "as_json", is_flag=True, help="print the rows (or the comparison) as JSON")
@click.option("--format", "fmt", default=None, metavar="md,json,csv,tex",
              help="formats to write with --out (default md,json), or the one format to print")
@click.option("--reported", is_flag=True, help="add the papers' reported numbers as labelled rows")
@click.option("--compare", nargs=2, default=None, metavar="METHOD_A METHOD_B",
              help='paired comparison A - B over shared seeds, e.g. --compare "mt_l1 + simclr" erm')
@click.option("--protocol", default=None, help="with --compare: only this selection protocol (name or label)")
@click.option("--dataset", default=None, help="with --compare: only this dataset")
@click.option("--split-by", "split_by", multiple=True, metavar="SCOPE.FIELD",
              help="runs that differ in this hparam are separate rows (e.g. mtcrl.girm); repeatable")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="an extra test metric column (e.g. macro_f1, auroc, ece); repeatable")
@_fail_cleanly
def leaderboard(runs_dir: Path, out_dir: Path | None, as_json: bool, fmt: str | None, reported: bool,
                compare: tuple[str, str] | None, protocol: str | None, dataset: str | None,
                split_by: tuple[str, ...], metrics: tuple[str, ...]) -> None:
    """Leaderboards (mean ± std over seeds) from the finished runs under RUNS_DIR.

    A damaged run directory (unreadable config.json or final.json) is skipped with a warning on stderr."""
    from . import leaderboard as lb
    from .errors import ConfigError

    if compare:
        result = lb.compare_methods(runs_dir, *compare, protocol=protocol, dataset=dataset, warn=_warn_skipped,
                                    split_by=split_by)
        if as_json:
            _print_json(result)
        else:
            click.echo(lb.comparison_markdown(result))
        for path in lb.write_comparison(result, out_dir) if out_dir else []:
            err.print(f"wrote {escape(str(path))}", highlight=False)  # stderr: --json keeps stdout pure JSON
        return
    if protocol or dataset:
        raise ConfigError("--protocol and --dataset select what --compare compares; add --compare A B")
    if out_dir is None:
        click.echo(lb.leaderboard_text(runs_dir, fmt or ("json" if as_json else "md"), _warn_skipped,
                                       reported=reported, split_by=split_by, metrics=metrics))
        return
    for path in lb.write_leaderboards(runs_dir, out_dir, _warn_skipped, formats=fmt or lb.DEFAULT_FORMATS,
                                      reported=reported, split_by=split_by, metrics=metrics):
        out.print(f"wrote {path}")


@main.command()
@click.argument("runs_dir", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="directory for the PNG and SVG files")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="also plot this one run's per-epoch curves (metrics.jsonl)")
@click.option("--protocol", default="val_worst_group", show_default=True,
              help="selection protocol whose chosen epochs the hparam plots use")
@click.option("--reported", is_flag=True, help="add the papers' reported numbers to the avg-vs-worst plots")
@_fail_cleanly
def plot(runs_dir: Path | None, out_dir: Path, run_dir: Path | None, protocol: str, reported: bool) -> None:
    """Plots (PNG and SVG) from the finished runs under RUNS_DIR and/or one run directory (--run).

    Average vs worst-group accuracy per method; worst-group accuracy against w_reg (l1.weight) and w_ssl
    (the aux objective's weight); with --run, that run's per-epoch curves."""
    from .leaderboard.plots import make_plots

    paths, notes = make_plots(runs_dir, out_dir, run_dir=run_dir, protocol=protocol, reported=reported,
                              warn=_warn_skipped)
    for note in notes:
        err.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    for path in paths:
        out.print(f"wrote {escape(str(path))}", highlight=False)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@_fail_cleanly
def plugins(as_json: bool) -> None:
    """Installed plugin distributions: versions, what each provides, and load errors."""
    from .catalog import plugin_report

    report = plugin_report()
    if as_json:
        _print_json(report)
        return
    if not report:
        out.print("no plugins installed (packages declaring robustbench_mtl.* entry points)")
    for dist in report:
        out.print(f"[bold]{dist['dist']}[/] {dist['version']}")
        for p in dist["provides"]:
            out.print(f"  {p['kind']}: {p['name']}")
        for e in dist["errors"]:
            out.print(f"  [red]error[/] {e['kind']} {e['name']}: {e['error']}", highlight=False)


@main.group()
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


if __name__ == "__main__":
    main()
