"""What is registered: listings, component descriptions and the plugin report behind list/show/plugins."""
from __future__ import annotations

import inspect
import typing
from typing import Any, overload

from .errors import ConfigError, PluginError
from .hparams import fields_of
from .registry import CORE_DIST, REGISTRIES, Registry

_SCOPES = {"datasets": "data", "backbones": "backbone", "algorithms": "algorithm"}


@overload
def kinds() -> list[str]: ...
@overload
def kinds(kind: str) -> str: ...
def kinds(kind: str | None = None) -> Any:
    """All kinds, or the canonical (plural) name of `kind` (singular accepted)."""
    if kind is None:
        return list(REGISTRIES)
    for k, reg in REGISTRIES.items():
        if kind in (k, reg.singular, k.rstrip("s")):
            return k
    raise ConfigError(f"unknown kind '{kind}'; choose one of {', '.join(REGISTRIES)}")


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.splitlines()[0] if doc else ""


def _provider(reg: Registry[Any], name: str) -> str:
    p = reg.provider(name)
    return f"{p.dist} {p.version}"


def list_components(kind: str) -> list[dict[str, Any]]:
    """Every name of `kind` with its one-line summary and provider; broken plugins appear with their error."""
    reg = REGISTRIES[kinds(kind)]
    rows: list[dict[str, Any]] = []
    for name, obj in reg.load_all():
        row = {"name": name, "summary": _summary(obj), "provider": _provider(reg, name)}
        if reg.kind == "algorithms":
            row["train groups"] = bool(getattr(obj, "uses_train_groups", False))
            row["val groups"] = bool(getattr(obj, "uses_val_groups", False))
            row["environments"] = bool(getattr(obj, "uses_environments", False))
        rows.append(row)
    for f in reg.failures():
        rows.append({"name": f.name, "summary": "", "provider": f.dist, "error": f.error})
    return rows


def _type_str(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def describe(kind: str, name: str) -> dict[str, Any]:
    """Docstring, provider, facts and hyperparameters of one component."""
    k = kinds(kind)
    reg = REGISTRIES[k]
    obj = reg.get(name)
    scope = _SCOPES.get(k, name)
    hparams = _fields(getattr(obj, "HParams", None), scope)
    if k == "algorithms":
        hparams += _objective_fields(obj)
    return {"kind": reg.singular, "name": name, "provider": _provider(reg, name), "doc": inspect.getdoc(obj) or "",
            "scope": scope, "facts": _facts(k, obj), "hparams": hparams}


def _fields(hp_cls: type | None, scope: str, only: tuple[str, ...] = (), note: str = "") -> list[dict[str, Any]]:
    """The fields of an HParams class as rows (`key` = what --set takes); `only` keeps those names."""
    if hp_cls is None:
        return []
    return [{"name": f.name, "scope": scope, "key": f"{scope}.{f.name}", "type": _type_str(f.type),
             "default": list(f.default) if isinstance(f.default, tuple) else f.default,
             "space": f.space.describe() if f.space else None, "range": f.bounds.describe() or None,
             "help": f"{note}{f.help}"}
            for f in fields_of(hp_cls) if not only or f.name in only]


def _objective_fields(algo: Any) -> list[dict[str, Any]]:
    """What else tunes an algorithm: the objectives it always adds (mt_l1's l1), and the weight of each
    auxiliary objective --aux may add (w_aux)."""
    rows: list[dict[str, Any]] = []
    for name in getattr(algo, "extra_objectives", ()):
        rows += _fields(_try_get(REGISTRIES["objectives"], name), name, note=f"[{name}, always added] ")
    for name, cls in REGISTRIES["objectives"].load_all():
        if getattr(cls, "role", None) == "auxiliary" and name not in algo.extra_objectives:
            rows += _fields(getattr(cls, "HParams", None), name, ("weight",), f"[with --aux {name}] ")
    return rows


def _try_get(reg: Registry[Any], name: str) -> Any:
    try:
        return getattr(reg.get(name), "HParams", None)
    except (ConfigError, PluginError):
        return None


def _facts(kind: str, obj: Any) -> dict[str, Any]:
    if kind == "datasets":
        return {"tasks": obj.tasks, "groups": ", ".join(obj.group_names), "modality": obj.modality,
                "default backbone": obj.default_backbone, "defaults": obj.defaults or "-",
                "presets": ", ".join(obj.presets) or "-"}
    if kind == "algorithms":
        envs = ("yes: the dataset's environments, or its training groups where it declares none (then it uses "
                "training group labels)" if getattr(obj, "uses_environments", False) else False)
        return {"uses train group labels": obj.uses_train_groups, "uses validation group labels":
                obj.uses_val_groups, "uses environments": envs, "needs --aux": obj.requires_auxiliary,
                "adds objectives": ", ".join(obj.extra_objectives) or "-"}
    if kind == "objectives":
        return {"role": obj.role, "inputs": "/".join(obj.modalities), "needs patch masking": obj.needs_masking}
    if kind == "selections":
        return {"metric": obj.metric, "oracle": obj.oracle, "uses validation group labels": obj.uses_val_groups}
    if kind == "backbones":
        return {"inputs": "/".join(obj.modalities), "patch masking": obj.supports_masking}
    return {}


def plugin_report() -> list[dict[str, Any]]:
    """One entry per installed plugin distribution: version, what it provides, what failed to load."""
    dists: dict[str, dict[str, Any]] = {}
    for reg in REGISTRIES.values():
        list(reg.load_all())  # try every plugin so import errors are known
        for name in reg.names():
            p = reg.provider(name)
            if p.dist != CORE_DIST:
                d = dists.setdefault(p.dist, {"dist": p.dist, "version": p.version, "provides": [], "errors": []})
                d["provides"].append({"kind": reg.singular, "name": name})
        for f in reg.failures():
            for dist in f.dist.split(", "):
                d = dists.setdefault(dist, {"dist": dist, "version": _dist_version(dist), "provides": [],
                                            "errors": []})
                d["errors"].append({"kind": reg.singular, "name": f.name, "error": f.error})
    return sorted(dists.values(), key=lambda d: d["dist"])


def _dist_version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"
