"""Sweep specs: datasets x methods x backbones x seeds x an hparam grid, from TOML or flags, expanded to RunSpecs."""
from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .config import ModelHParams, RunSpec, TrainHParams
from .errors import ConfigError
from .hparams import fields_of, unknown_key_message
from .presets import is_structured
from .registry import ALGORITHMS, BACKBONES, DATASETS, OBJECTIVES

KEYS = ("name", "runs_dir", "datasets", "methods", "backbones", "seeds", "preset", "preset_common", "random",
        "grid", "method_grid", "fixed", "launcher", "split_by", "metrics")
DEFAULT_SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep: what to cross, the grid (values as `--set` text), and how to launch it.

    `source` is how the user named the sweep on the command line (a file, flags): the regenerating command
    that `collect` prints repeats it."""

    name: str
    datasets: tuple[str, ...]
    methods: tuple[str, ...]
    runs_dir: Path = Path("runs")
    backbones: tuple[str, ...] = ()
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    preset: str = ""
    preset_common: tuple[str, ...] = ()
    random: int = 0
    grid: dict[str, tuple[str, ...]] = field(default_factory=dict)
    method_grid: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)
    dataset_fixed: dict[str, dict[str, str]] = field(default_factory=dict)
    launcher: dict[str, Any] = field(default_factory=dict)
    split_by: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    source: str = ""


def read_toml(path: Path) -> dict[str, Any]:
    """A sweep file, parsed (never executed)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec {path} does not exist (a .toml file; see docs/sweeps.md)")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"sweep spec {path} is not valid TOML: {exc}") from None


def load(path: Path | None, flags: Mapping[str, Any] | None = None, source: str = "") -> SweepSpec:
    """The sweep in file `path` (or none) with `flags` (same keys as the file) replacing its keys; `grid` and
    `fixed` flags are merged key by key. Every bad input is one ConfigError line."""
    raw = read_toml(path) if path is not None else {}
    where = f"sweep spec {path}" if path is not None else "sweep"
    for key, value in (flags or {}).items():
        merge = key in ("grid", "fixed") and isinstance(raw.get(key, {}), dict)
        raw[key] = {**raw.get(key, {}), **value} if merge else value
    if path is not None or isinstance(raw.get("datasets"), list):
        raw.setdefault("name", Path(path).stem if path is not None else "+".join(map(str, raw["datasets"])))
    return parse(raw, where, source)


def parse(raw: Mapping[str, Any], where: str = "sweep", source: str = "") -> SweepSpec:
    """Check every key and value of a sweep's mapping and build the SweepSpec."""
    for key in raw:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            raise ConfigError(f"{where}: unknown key '{key}'" + (f"; did you mean '{close[0]}'?" if close else
                                                                 f" (keys: {', '.join(KEYS)})"))
    datasets = _names(raw, "datasets", where, required=True)
    for d in datasets:
        DATASETS.get(d)
    methods = _names(raw, "methods", where, required=True)
    for m in methods:
        split_method(m)
    backbones = _names(raw, "backbones", where)
    for b in backbones:
        BACKBONES.get(b)
    seeds = _ints(raw, "seeds", where, DEFAULT_SEEDS)
    random = raw.get("random", 0)
    if not isinstance(random, int) or isinstance(random, bool) or random < 0:
        raise ConfigError(f"{where}: random must be an integer >= 0 (the number of random draws), got {random!r}")
    fixed, dataset_fixed = _fixed(raw.get("fixed", {}), datasets, where)
    launcher = _table(raw.get("launcher", {}), "[launcher]", where)
    if not isinstance(launcher.get("name", "local"), str):
        raise ConfigError(f"{where}: [launcher] name must be a string, e.g. \"local\"")
    preset_common = _names(raw, "preset_common", where)
    split_by, metrics = _names(raw, "split_by", where), _names(raw, "metrics", where)
    for key in split_by:
        if key.count(".") != 1 or not all(key.split(".")):
            raise ConfigError(f"{where}: split_by key {key!r} must look like scope.field (e.g. \"mtcrl.girm\")")
    _unknown_methods(preset_common, methods, "preset_common", where)
    spec = SweepSpec(
        name=_str(raw, "name", where, "sweep"), datasets=datasets, methods=methods,
        runs_dir=Path(_str(raw, "runs_dir", where, "runs")), backbones=backbones, seeds=seeds,
        preset=_str(raw, "preset", where, ""), preset_common=preset_common, random=random,
        grid=_grid(raw.get("grid", {}), "[grid]", where), method_grid=_method_grids(raw, methods, where),
        fixed=fixed, dataset_fixed=dataset_fixed, launcher=launcher, split_by=split_by,
        metrics=metrics, source=source)
    if preset_common and not spec.preset:
        raise ConfigError(f"{where}: preset_common names methods that take a preset's common section, but no "
                          f"preset is set")
    if random and any(len(v) > 1 for g in (spec.grid, *spec.method_grid.values()) for v in g.values()):
        raise ConfigError(f"{where}: random = {random} draws the hparams instead of a grid; give each grid key one "
                          f"value, or set random = 0")
    check_keys(spec, where)
    return spec


def split_method(method: str) -> tuple[str, tuple[str, ...]]:
    """'mt_l1+simclr' -> ('mt_l1', ('simclr',)); unknown names are one error line with close matches."""
    algorithm, *aux = [p.strip() for p in method.split("+")]
    if not algorithm or not all(aux):
        raise ConfigError(f"method {method!r} must be an algorithm, then its --aux objectives, joined by '+' "
                          f"(e.g. mt_l1+simclr)")
    ALGORITHMS.get(algorithm)
    for o in aux:
        OBJECTIVES.get(o)
    return algorithm, tuple(aux)


def _names(raw: Mapping[str, Any], key: str, where: str, required: bool = False) -> tuple[str, ...]:
    value = raw.get(key, [])
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where}: {key} must be a list of names, got {value!r}")
    if required and not value:
        raise ConfigError(f"{where}: {key} is empty; give at least one (e.g. {key} = [\"...\"])")
    return tuple(dict.fromkeys(v.strip() for v in value))


def _ints(raw: Mapping[str, Any], key: str, where: str, default: tuple[int, ...]) -> tuple[int, ...]:
    value = raw.get(key, list(default))
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value):
        raise ConfigError(f"{where}: {key} must be a non-empty list of integers, got {value!r}")
    return tuple(dict.fromkeys(value))


def _str(raw: Mapping[str, Any], key: str, where: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _table(value: Any, what: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {what} must be a table of \"scope.field\" = value, got {value!r}")
    return value


def _flat(table: Mapping[str, Any], what: str, where: str, prefix: str = "") -> dict[str, Any]:
    """Dotted keys: `"train.lr" = ...` and `train.lr = ...` (a nested TOML table) are the same key."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, what, where, f"{full}."))
        elif full.count(".") != 1 or not all(full.split(".")):
            raise ConfigError(f"{where}: {what} key {full!r} must look like scope.field (e.g. \"train.lr\")")
        else:
            out[full] = value
    return out


def as_text(key: str, value: Any, where: str) -> str:
    """A TOML value as the `--set` text resolve parses and checks (so both routes give the same run)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, list) and all(not isinstance(v, (list, dict)) for v in value):
        return ",".join(as_text(key, v, where) for v in value)
    raise ConfigError(f"{where}: {key} = {value!r} is not a number, string, boolean or list of them")


def _grid(table: Any, what: str, where: str) -> dict[str, tuple[str, ...]]:
    grid = {}
    for key, values in _flat(_table(table, what, where), what, where).items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: {what} {key} must be a non-empty list of values, got {values!r}")
        grid[key] = tuple(dict.fromkeys(as_text(key, v, where) for v in values))
    return grid


def _method_grids(raw: Mapping[str, Any], methods: tuple[str, ...], where: str) -> dict[str, dict[str, tuple]]:
    tables = _table(raw.get("method_grid", {}), "[method_grid]", where)
    _unknown_methods(tables, methods, "[method_grid]", where)
    return {m: _grid(t, f"[method_grid.\"{m}\"]", where) for m, t in tables.items()}


def _unknown_methods(names: Any, methods: tuple[str, ...], what: str, where: str) -> None:
    for m in names:
        if m not in methods:
            raise ConfigError(f"{where}: {what} names {m!r}, which is not one of this sweep's methods "
                              f"({', '.join(methods)})")


def _fixed(table: Any, datasets: tuple[str, ...], where: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """[fixed] for every job, and [fixed."<dataset>"] tables for one dataset's jobs."""
    table = dict(_table(table, "[fixed]", where))
    for name, value in table.items():
        if isinstance(value, dict) and name not in datasets and name in DATASETS.names():
            raise ConfigError(f"{where}: [fixed.\"{name}\"] is for a dataset this sweep does not have "
                              f"(datasets: {', '.join(datasets)})")
    per = {d: table.pop(d) for d in datasets if isinstance(table.get(d), dict)}
    text = {k: as_text(k, v, where) for k, v in _flat(table, "[fixed]", where).items()}
    return text, {d: {k: as_text(k, v, where) for k, v in _flat(t, f"[fixed.\"{d}\"]", where).items()}
                  for d, t in per.items()}


def preset_section(data: str, preset: str, common_only: bool) -> tuple[dict[str, Any], str | None]:
    """(overrides, backbone) of a dataset preset's common section, for methods listed in preset_common."""
    if not common_only:
        return {}, None
    p = DATASETS.get(data).presets.get(preset)
    if p is None or not is_structured(p):
        raise ConfigError(f"preset_common needs a preset of dataset '{data}' with a common section; '{preset}' "
                          f"is not one")
    return dict(p.get("common", {})), p.get("backbone")


def job_scopes(data: str, method: str, backbone: str | None, preset: str = "") -> dict[str, type]:
    """The hparam scopes of one (dataset, method, backbone) and their classes, as resolve builds them."""
    algorithm, aux = split_method(method)
    data_cls, algo_cls = DATASETS.get(data), ALGORITHMS.get(algorithm)
    p = data_cls.presets.get(preset) or {}
    name = backbone or (p.get("backbone") if is_structured(p) else None) or data_cls.default_backbone
    objectives = dict.fromkeys((*aux, *getattr(algo_cls, "extra_objectives", ())))
    return {"data": data_cls.HParams, "backbone": BACKBONES.get(name).HParams, "algorithm": algo_cls.HParams,
            "train": TrainHParams, "model": ModelHParams, **{o: OBJECTIVES.get(o).HParams for o in objectives}}


def _fields(spec: SweepSpec, methods: tuple[str, ...]) -> dict[str, set[str]]:
    """scope -> field names, over every job of `methods`."""
    fields: dict[str, set[str]] = {}
    for d in spec.datasets:
        for m in methods:
            for b in spec.backbones or (None,):
                for scope, cls in job_scopes(d, m, b, spec.preset).items():
                    fields.setdefault(scope, set()).update(f.name for f in fields_of(cls))
    return fields


def _check(keys: Any, fields: dict[str, set[str]], what: str, where: str) -> None:
    for key in keys:
        scope, _, name = key.partition(".")
        if scope not in fields:
            raise ConfigError(f"{where}: key '{key}': no job of {what} has the scope '{scope}' (scopes: "
                              f"{', '.join(sorted(fields))})")
        if name not in fields[scope]:
            raise ConfigError(f"{where}: {unknown_key_message(key, [f'{scope}.{n}' for n in sorted(fields[scope])])}")


def check_keys(spec: SweepSpec, where: str) -> None:
    """A grid or fixed key whose scope no job has, or whose field no job's scope has, is a typo: one line; so is
    a [method_grid] key that its method's jobs lack (it would never apply)."""
    fields = _fields(spec, spec.methods)
    _check([*spec.grid, *spec.fixed, *(k for f in spec.dataset_fixed.values() for k in f)], fields, "this sweep",
           where)
    for method, grid in spec.method_grid.items():
        _check(grid, _fields(spec, (method,)), f"method {method}", where)


def expand(spec: SweepSpec) -> list[RunSpec]:
    """Every run of the sweep, in a fixed order (dataset, method, backbone, grid point, seed, draw). A key
    applies to the jobs that have its scope (l1.weight leaves erm alone, so it does not multiply erm's runs)."""
    runs: list[RunSpec] = []
    draws = range(1, spec.random + 1) if spec.random else (0,)
    for data in spec.datasets:
        fixed = {**spec.fixed, **spec.dataset_fixed.get(data, {})}
        for method in spec.methods:
            algorithm, aux = split_method(method)
            common, preset_backbone = preset_section(data, spec.preset, method in spec.preset_common)
            preset = None if method in spec.preset_common else (spec.preset or None)
            for backbone in spec.backbones or (None,):
                scopes = job_scopes(data, method, backbone, spec.preset)
                keep = lambda key: key.partition(".")[0] in scopes  # noqa: E731
                base = [f"{k}={as_text(k, v, 'preset')}" for k, v in common.items()]
                base += [f"{k}={v}" for k, v in fixed.items() if keep(k)]
                grid = {k: v for k, v in {**spec.grid, **spec.method_grid.get(method, {})}.items() if keep(k)}
                for point in itertools.product(*grid.values()):
                    overrides = (*base, *(f"{k}={v}" for k, v in zip(grid, point)))
                    runs += [RunSpec(data, algorithm, aux, backbone or preset_backbone, seed, draw, preset,
                                     overrides) for seed in spec.seeds for draw in draws]
    return list(dict.fromkeys(runs))
