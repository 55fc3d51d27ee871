"""Typed hyperparameters: frozen dataclasses with defaults, search spaces, parsing and seeded draws."""
from __future__ import annotations

import abc
import dataclasses
import difflib
import hashlib
import math
import random
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

from .errors import ConfigError


class Space(abc.ABC):
    """A search space for one field; `sample(rng)` draws a value."""

    @abc.abstractmethod
    def sample(self, rng: random.Random) -> Any:
        """Draw one value."""

    def describe(self) -> str:
        return repr(self)


@dataclass(frozen=True)
class Choice(Space):
    """Uniform over a finite list of values."""

    values: tuple[Any, ...]

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(list(self.values))

    def describe(self) -> str:
        return "{" + ", ".join(map(str, self.values)) + "}"


@dataclass(frozen=True)
class Uniform(Space):
    """Uniform float on [low, high]."""

    low: float
    high: float

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def describe(self) -> str:
        return f"U({self.low}, {self.high})"


@dataclass(frozen=True)
class LogUniform(Space):
    """Log-uniform float on [low, high]."""

    low: float
    high: float

    def sample(self, rng: random.Random) -> float:
        return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))

    def describe(self) -> str:
        return f"logU({self.low}, {self.high})"


@dataclass(frozen=True)
class IntRange(Space):
    """Uniform integer on [low, high] inclusive."""

    low: int
    high: int

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)

    def describe(self) -> str:
        return f"int[{self.low}, {self.high}]"


@dataclass(frozen=True)
class Bounds:
    """The valid range of a number (or of every element of a tuple): ge/gt and le/lt, None = unbounded."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def violated(self, value: float) -> bool:
        return ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt))

    def describe(self) -> str:
        """E.g. '>= 1', '> 0', 'in (0, 1]'; '' when unbounded."""
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        if high:
            return ("<= " if high[-1] == "]" else "< ") + high[:-1]
        return ""


def hp(default: Any, space: Space | None = None, help: str = "", *, ge: float | None = None,
       gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """Declare a hyperparameter field: default, optional search space, one-line help and valid range.

    `ge`/`gt`/`le`/`lt` bound a number (every element of a tuple); values outside are refused when set.
    """
    return dataclasses.field(default=default, metadata={"space": space, "help": help,
                                                        "bounds": Bounds(ge, gt, le, lt)})


@dataclass(frozen=True)
class FieldInfo:
    name: str
    type: Any
    default: Any
    space: Space | None
    help: str
    bounds: Bounds = Bounds()


def fields_of(cls: type) -> list[FieldInfo]:
    """The declared hyperparameters of a dataclass, with resolved type hints."""
    hints = typing.get_type_hints(cls)
    return [
        FieldInfo(f.name, hints[f.name], f.default, f.metadata.get("space"), f.metadata.get("help", ""),
                  f.metadata.get("bounds") or Bounds())
        for f in dataclasses.fields(cls)
    ]


def check_bounds(key: str, value: Any, bounds: Bounds) -> Any:
    """`value` if it (every element, for a tuple) lies in `bounds`, else a ConfigError naming the range."""
    for v in value if isinstance(value, tuple) else (value,):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and bounds.violated(v):
            raise ConfigError(f"{key} must be {bounds.describe()}, got {v!r}")
    return value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if typing.get_origin(tp) is tuple:
        return f"a comma-separated list ({_type_name(typing.get_args(tp)[0])} each)"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(tp, f"a {getattr(tp, '__name__', str(tp))}")


def coerce(key: str, tp: Any, value: Any) -> Any:
    """Check (and for strings from the command line, parse) `value` as type `tp`, or raise ConfigError."""
    bad = ConfigError(f"{key} expects {_type_name(tp)}, got {value!r}")
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise bad
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise bad
        return tuple(coerce(key, inner, v) for v in items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        try:
            number = float(value)
        except ValueError:
            raise bad from None
        if not math.isfinite(number):
            raise ConfigError(f"{key} expects a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise ConfigError(f"{key} has an unsupported type {tp!r}")


def space_values(space: Space) -> tuple[Any, ...]:
    """The values that bound a search space: every choice, or the two ends of a range."""
    if isinstance(space, Choice):
        return space.values
    return (space.low, space.high) if isinstance(space, (Uniform, LogUniform, IntRange)) else ()


def check_declaration(scope: str, info: FieldInfo) -> None:
    """Raise ConfigError unless the field's default and search space lie in its declared range and type."""
    key = f"{scope}.{info.name}"
    check_bounds(key, coerce(key, info.type, info.default), info.bounds)
    if info.space is not None:
        for value in space_values(info.space):
            check_bounds(f"{key} (search space)", coerce(key, info.type, value), info.bounds)


def field_rng(seed: int, scope: str, name: str) -> random.Random:
    """A generator per (seed, scope, field): adding a field never shifts the other draws."""
    digest = hashlib.sha256(f"{seed}|{scope}|{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def draw(cls: type, scope: str, seed: int) -> dict[str, Any]:
    """Random values for every field of `cls` that has a search space (seed 0 means defaults)."""
    if seed == 0:
        return {}
    out = {}
    for f in fields_of(cls):
        if f.space is not None:
            out[f.name] = coerce(f"{scope}.{f.name}", f.type, f.space.sample(field_rng(seed, scope, f.name)))
    return out


def build(cls: type, scope: str, layers: Sequence[Mapping[str, Any]]) -> Any:
    """Instantiate `cls` from override layers, lowest precedence first; unknown keys are errors."""
    infos = {f.name: f for f in fields_of(cls)}
    values: dict[str, Any] = {}
    for layer in layers:
        for name, raw in layer.items():
            if name not in infos:
                raise ConfigError(unknown_key_message(f"{scope}.{name}", [f"{scope}.{n}" for n in infos]))
            key = f"{scope}.{name}"
            values[name] = check_bounds(key, coerce(key, infos[name].type, raw), infos[name].bounds)
    return cls(**values)


def unknown_key_message(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else "see `robustbench-mtl show KIND NAME` for the fields"
    return f"unknown hyperparameter '{key}'; {hint}"


def to_dict(hparams: Any) -> dict[str, Any]:
    """A JSON-ready dict of a hparams instance (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(hparams).items()}


def parse_assignment(text: str) -> tuple[str, str, str]:
    """Split `scope.field=value` into its parts, or raise ConfigError."""
    key, sep, value = text.partition("=")
    scope, dot, name = key.strip().partition(".")
    if not sep or not dot or not scope or not name:
        raise ConfigError(f"--set expects scope.field=value (e.g. train.lr=0.01), got {text!r}")
    return scope, name.strip(), value.strip()


@dataclass(frozen=True)
class NoHParams:
    """For components without hyperparameters."""
