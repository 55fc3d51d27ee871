"""Name -> component registries, fed by built-in modules and by installed plugins' entry points."""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import ConfigError, PluginError

T = TypeVar("T")
CORE_DIST = "robustbench-mtl"


@dataclass(frozen=True)
class Provider:
    """Where a registered name comes from: a distribution (and version) and an import target."""

    name: str
    dist: str
    version: str
    target: str  # "module" for built-ins, "module:attr" for entry points


@dataclass(frozen=True)
class LoadFailure:
    """A plugin entry (or name clash) that could not be used, kept for `list` and `plugins`."""

    kind: str
    name: str
    dist: str
    error: str


def _core_version() -> str:
    try:
        return metadata.version(CORE_DIST)
    except metadata.PackageNotFoundError:
        return "0+unknown"


class Registry(Generic[T]):
    """One kind of component: built-ins are the modules of `package`, plugins the entry points of `group`.

    Names are discovered without importing anything; a component is imported on first `get`.
    A built-in registers itself with the `register` decorator when its module is imported.
    """

    def __init__(self, kind: str, package: str, singular: str) -> None:
        self.kind = kind
        self.singular = singular
        self.package = package
        self.group = f"robustbench_mtl.{kind}"
        self._items: dict[str, T] = {}
        self._providers: dict[str, Provider] | None = None
        self._failures: dict[str, LoadFailure] = {}

    # -- registration --------------------------------------------------------------
    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register `obj` under `name` (built-ins, or code registering at run time)."""

        def deco(obj: T) -> T:
            have = self._items.get(name)
            if have is not None and have is not obj:
                raise PluginError(f"{self.singular} '{name}' is registered twice in this process")
            self._items[name] = obj
            return obj

        return deco

    # -- discovery -----------------------------------------------------------------
    def _builtin_names(self) -> list[str]:
        pkg = importlib.import_module(self.package)
        return sorted(
            m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_") and m.name != "base"
        )

    def _discover(self) -> dict[str, Provider]:
        if self._providers is not None:
            return self._providers
        version = _core_version()
        providers = {n: Provider(n, CORE_DIST, version, f"{self.package}.{n}") for n in self._builtin_names()}
        claims: dict[str, list[Provider]] = {}
        for ep in metadata.entry_points(group=self.group):
            dist = ep.dist.name if ep.dist else "unknown"
            if dist == CORE_DIST and ep.name in providers:
                continue
            ver = ep.dist.version if ep.dist else "?"
            claims.setdefault(ep.name, []).append(Provider(ep.name, dist, ver, ep.value))
        for name, plist in claims.items():
            owners = ([providers[name]] if name in providers else []) + plist
            if len(owners) > 1:
                dists = " and ".join(f"'{p.dist}'" for p in owners)
                self._failures[name] = LoadFailure(
                    self.kind, name, ", ".join(p.dist for p in plist),
                    f"{self.singular} name '{name}' is provided by both {dists}; uninstall one of them",
                )
                if name in providers:  # core keeps its name; the plugin's claim is refused
                    continue
                providers.pop(name, None)
                continue
            providers[name] = plist[0]
        self._providers = providers
        return providers

    def names(self) -> list[str]:
        """Every usable name, without importing any component."""
        return sorted(set(self._discover()) | set(self._items))

    def provider(self, name: str) -> Provider:
        """The distribution that provides `name` (core for names registered at run time)."""
        prov = self._discover().get(name)
        return prov or Provider(name, CORE_DIST, _core_version(), "runtime")

    def failures(self) -> list[LoadFailure]:
        """Plugins that clashed or failed to import so far (call `load_all` to try every one)."""
        return sorted(self._failures.values(), key=lambda f: f.name)

    # -- loading -------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The component registered as `name`, importing its module on first use."""
        if name in self._items:
            return self._items[name]
        providers = self._discover()
        if name in self._failures and name not in providers:
            raise PluginError(self._failures[name].error)
        if name not in providers:
            raise ConfigError(self._unknown_message(name))
        prov = providers[name]
        try:
            obj = self._import(prov)
        except Exception as exc:  # a broken plugin must never take the rest down
            msg = f"{self.singular} '{name}' from '{prov.dist}' failed to import: {type(exc).__name__}: {exc}"
            self._failures[name] = LoadFailure(self.kind, name, prov.dist, msg)
            providers.pop(name, None)
            raise PluginError(msg) from exc
        self._items[name] = obj
        return obj

    def _import(self, prov: Provider) -> T:
        if ":" not in prov.target:  # built-in module, registers itself on import
            importlib.import_module(prov.target)
            if prov.name not in self._items:
                raise PluginError(f"module {prov.target} did not register {self.singular} '{prov.name}'")
            return self._items[prov.name]
        module, _, attr = prov.target.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def load_all(self) -> Iterator[tuple[str, T]]:
        """Yield (name, component) for every name that imports; failures are recorded, not raised."""
        for name in self.names():
            try:
                yield name, self.get(name)
            except PluginError:
                continue

    def _unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}?" if close else f"see `robustbench-mtl list {self.kind}`"
        return f"unknown {self.singular} '{name}'; {hint}"

    def __contains__(self, name: str) -> bool:
        return name in self.names()


DATASETS: Registry[Any] = Registry("datasets", "robustbench_mtl.data", "dataset")
BACKBONES: Registry[Any] = Registry("backbones", "robustbench_mtl.backbones", "backbone")
OBJECTIVES: Registry[Any] = Registry("objectives", "robustbench_mtl.objectives", "objective")
ALGORITHMS: Registry[Any] = Registry("algorithms", "robustbench_mtl.algorithms", "algorithm")
SELECTIONS: Registry[Any] = Registry("selections", "robustbench_mtl.selections", "selection protocol")
LAUNCHERS: Registry[Any] = Registry("launchers", "robustbench_mtl.launchers", "launcher")
REGISTRIES: dict[str, Registry[Any]] = {
    r.kind: r for r in (DATASETS, BACKBONES, OBJECTIVES, ALGORITHMS, SELECTIONS, LAUNCHERS)
}
