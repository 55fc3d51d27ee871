"""The `robustbench-mtl` command: a thin click + rich layer over the library functions."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click
from rich.markup import escape
from rich.table import Table

from . import __version__
from .cli_common import err, out, print_json as _print_json, split_names as _names
from .cli_common import fail_cleanly as _fail_cleanly
from .cli_progress import make_reporter as _reporter
from .cli_results import leaderboard, plot
from .cli_sweep import sweep
from .registry import CORE_DIST

# Where datasets read from disk live by default; kept here so `--help` needs no dataset import.
DEFAULT_ROOT, ROOT_ENV = "data", "ROBUSTBENCH_MTL_DATA"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="robustbench-mtl")
def main() -> None:
    """Train and compare multitask and group-robustness methods on standard splits."""


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


main.add_command(sweep)
main.add_command(leaderboard)
main.add_command(plot)


if __name__ == "__main__":
    main()
