"""Presets: named sets of dotted hparam overrides, flat or per method, from a dataset or a TOML/JSON file."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """What a preset sets for one run: dotted overrides, and the backbone when the user named none."""

    overrides: dict[str, Any] = field(default_factory=dict)
    backbone: str | None = None


def method_key(algorithm: str, aux: tuple[str, ...]) -> str:
    """How presets name a method: the algorithm, then its --aux objectives, joined by '+' (mt_l1+simclr)."""
    return "+".join([algorithm, *aux])


def is_structured(preset: Mapping[str, Any]) -> bool:
    """A structured preset has `common` and/or `methods` sections (and maybe `backbone`); else it is flat."""
    return bool(set(preset) & {"common", "methods"})


def select(preset: Mapping[str, Any], name: str, method: str) -> Preset:
    """The overrides of `preset` for `method`: flat presets apply to every method; structured ones add the
    method's section to `common`, and a method without a section is an error naming those that have one."""
    if not is_structured(preset):
        return Preset(dict(preset))
    methods = preset.get("methods", {})
    if methods and method not in methods:
        raise ConfigError(f"preset '{name}' has no settings for method '{method}'; it has: "
                          f"{', '.join(sorted(methods))} (or pass the hparams with --set)")
    return Preset({**preset.get("common", {}), **methods.get(method, {})}, preset.get("backbone"))


def read_file(path: Path) -> dict[str, Any]:
    """A TOML or JSON preset file, parsed (never executed); `[train] lr = 1` and `"train.lr" = 1` both work."""
    try:
        data = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"preset file {path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    if is_structured(data):
        return data
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            flat[k] = v
    return flat


def load_preset(name: str, presets: Mapping[str, Mapping[str, Any]], data_name: str, method: str) -> Preset:
    """A named preset of the dataset, or a .toml/.json file, resolved for `method`."""
    if name in presets:
        return select(presets[name], name, method)
    path = Path(name)
    if path.suffix in (".toml", ".json") and path.is_file():
        return select(read_file(path), str(path), method)
    known = ", ".join(sorted(presets)) or "none"
    raise ConfigError(f"unknown preset '{name}' for dataset '{data_name}' (presets: {known}); "
                      f"or pass a .toml/.json file of scope.field overrides")


def layers(preset: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(where, overrides) for every section of a preset, for checks that go over all of them."""
    if not is_structured(preset):
        yield "", preset
        return
    yield "common", preset.get("common", {})
    for method, section in preset.get("methods", {}).items():
        yield f"methods.{method}", section
