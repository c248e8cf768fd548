"""The plugin manager: entry points, provenance, load failures, allow/deny lists.

Every plugin, built-in or third-party, is found through the ``mmfuse`` entry-point group. A plugin
that fails to import (any exception, ``SystemExit`` included) is recorded as a
:class:`PluginFailure` and the others still load. One plugin cannot break or replace another:

- mmfuse's own plugins load first; a third-party entry point with the name of one of them
  (``fusions = "pkg"``) is not loaded, and the clash is reported naming both distributions;
- a component whose name is already taken (``mmfuse/concat`` again), has no namespace, or uses
  the ``mmfuse/`` namespace from another distribution is dropped, the plugin's other components
  still load, and the drop is reported naming the distribution.

Each of these is a :class:`PluginFailure` in ``registry.broken`` (commands print them as warnings);
``MMFUSE_STRICT_PLUGINS=1`` turns every one into an error; ``MMFUSE_DISABLE_PLUGINS=a,b`` skips
plugins by entry-point or distribution name. Imports no torch.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Iterable

import pluggy

from mmfuse import hookspecs
from mmfuse.registry import ComponentSpec, EmptyConfig, Provenance, Registry, RegistryError

#: the distribution whose plugins are mmfuse's own: they load first and own the ``mmfuse/`` namespace
BUILTIN_DISTRIBUTION = "mmfuse"
BUILTIN_NAMESPACE = "mmfuse"

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginFailure",
    "PluginLoadError",
    "PluginClashError",
    "PluginHost",
    "load_registry",
    "get_registry",
    "reset_default_registry",
]

ENTRY_POINT_GROUP = "mmfuse"

#: hook name -> component kind it registers
REGISTRATION_HOOKS = {
    "mmfuse_register_encoders": "encoder",
    "mmfuse_register_fusions": "fusion",
    "mmfuse_register_tasks": "task",
    "mmfuse_register_readers": "reader",
    "mmfuse_register_callbacks": "callback",
}


class PluginLoadError(RuntimeError):
    """A plugin failed to load while strict mode was on."""


@dataclass
class PluginFailure:
    """A plugin that could not be imported or whose registration hook raised; or, with
    ``dropped`` set, one component of a plugin that was refused (the rest of it loaded)."""

    entry_point: str
    distribution: str | None
    version: str | None
    value: str
    error: BaseException
    traceback: str
    dropped: str | None = None

    def describe(self) -> str:
        source = f"plugin '{self.entry_point}' from {self.distribution or '?'} {self.version or ''}".rstrip()
        if self.dropped is not None:
            return f"{source}: {self.dropped} was not registered: {self.error}"
        return f"plugin '{self.entry_point}' = {self.value} from {self.distribution or '?'} {self.version or ''} failed: {type(self.error).__name__}: {self.error}"


class PluginClashError(RegistryError):
    """A plugin tried to take a name that belongs to another plugin or component."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str) -> set[str]:
    return {item.strip() for item in os.environ.get(name, "").split(",") if item.strip()}


class PluginHost:
    """A fresh pluggy manager plus the provenance of each registered plugin."""

    def __init__(self, *, strict: bool | None = None, disabled: Iterable[str] | None = None) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.strict = _env_flag("MMFUSE_STRICT_PLUGINS") if strict is None else strict
        self.disabled = _env_list("MMFUSE_DISABLE_PLUGINS") if disabled is None else set(disabled)
        self.failures: list[PluginFailure] = []
        self._provenance: dict[str, Provenance] = {}

    def register(self, plugin: Any, name: str, provenance: Provenance | None = None) -> None:
        """Register a module or object as a plugin under ``name``."""
        if name in self.disabled:
            return
        self.pm.register(plugin, name=name)
        self._provenance[name] = provenance or Provenance(plugin=name, module=getattr(plugin, "__name__", None))

    def load_entry_points(self, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
        """Import and register every entry point of the ``mmfuse`` group (or those given)."""
        if entry_points is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep, dist_name, version in sorted(map(_with_distribution, entry_points), key=_builtins_first):
            if ep.name in self.disabled or (dist_name and dist_name in self.disabled):
                continue
            if self.pm.has_plugin(ep.name):
                holder = self._provenance[ep.name]
                if holder.distribution != dist_name:
                    clash = PluginClashError(
                        f"its entry point name '{ep.name}' is already the plugin of {holder.distribution or '?'} "
                        f"{holder.version or ''} ({holder.module}), which is kept. Rename the entry point in "
                        f"{dist_name or '?'}'s package metadata (e.g. '{(dist_name or 'acme').replace('-', '_')}')."
                    )
                    self._fail(ep.name, dist_name, version, ep.value, clash, dropped=f"entry point '{ep.name}' = {ep.value}")
                # else: the same distribution seen twice on sys.path (editable + site)
                continue
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() must not end mmfuse
                self._fail(ep.name, dist_name, version, ep.value, exc)
                continue
            self.register(plugin, ep.name, Provenance(ep.name, dist_name, version, ep.value))

    def _fail(
        self, name: str, dist: str | None, version: str | None, value: str, exc: BaseException, dropped: str | None = None
    ) -> None:
        failure = PluginFailure(name, dist, version, value, exc, traceback.format_exc(), dropped)
        if self.strict:
            raise PluginLoadError(f"{failure.describe()} (MMFUSE_STRICT_PLUGINS is on)") from exc
        self.failures.append(failure)

    def build_registry(self) -> Registry:
        """Call every registration hook, one plugin at a time, recording who registered what."""
        registry = Registry()
        registry.broken = self.failures
        plugins = sorted(
            self.pm.list_name_plugin(),
            key=lambda p: (self._provenance[p[0]].distribution != BUILTIN_DISTRIBUTION, p[0]),
        )
        for plugin_name, plugin in plugins:
            provenance = self._provenance[plugin_name]
            try:
                for hook_name, kind in REGISTRATION_HOOKS.items():
                    function = getattr(plugin, hook_name, None)
                    if function is None or not self._is_hookimpl(plugin_name, hook_name):
                        continue
                    function(register=self._registrar(registry, kind, provenance))
            except PluginLoadError:
                raise
            except (Exception, SystemExit) as exc:
                self._fail(plugin_name, provenance.distribution, provenance.version, provenance.module or "", exc)
        return registry

    def _is_hookimpl(self, plugin_name: str, hook_name: str) -> bool:
        caller = getattr(self.pm.hook, hook_name)
        return any(impl.plugin_name == plugin_name for impl in caller.get_hookimpls())

    def _registrar(self, registry: Registry, kind: str, provenance: Provenance):
        def register(
            name: str,
            *,
            builder: Any,
            config: type | None = None,
            description: str = "",
            aliases: tuple[str, ...] = (),
        ) -> None:
            spec = ComponentSpec(
                kind=kind,
                name=name,
                builder=builder,
                config=config or EmptyConfig,
                provenance=provenance,
                description=description,
                aliases=tuple(aliases),
            )
            try:
                if not registry.has(kind, name):  # a duplicate says more than "reserved namespace"
                    _check_namespace(spec)
                registry.add(spec)
            except RegistryError as exc:
                # drop this component only: the plugin's others, and every other plugin, still load
                self._fail(
                    provenance.plugin, provenance.distribution, provenance.version, provenance.module or "", exc,
                    dropped=f"{kind} '{name}'",
                )

        return register


def _with_distribution(ep: metadata.EntryPoint) -> tuple[metadata.EntryPoint, str | None, str | None]:
    dist = getattr(ep, "dist", None)
    return ep, (dist.metadata["Name"] if dist is not None else None), (dist.version if dist is not None else None)


def _builtins_first(item: tuple[metadata.EntryPoint, str | None, str | None]) -> tuple[bool, str, str]:
    ep, dist_name, _ = item
    return (dist_name != BUILTIN_DISTRIBUTION, ep.name, dist_name or "")


def _check_namespace(spec: ComponentSpec) -> None:
    """Only mmfuse's own distribution registers ``mmfuse/...`` names (plugins registered in-process
    without a distribution, as tests do, are not checked)."""
    dist = spec.provenance.distribution
    if dist is not None and dist != BUILTIN_DISTRIBUTION and spec.name.split("/", 1)[0] == BUILTIN_NAMESPACE:
        raise PluginClashError(
            f"the namespace '{BUILTIN_NAMESPACE}/' belongs to mmfuse's built-in components; register it as "
            f"'<your namespace>/{spec.name.split('/', 1)[-1]}'"
        )


def load_registry(
    plugins: Iterable[tuple[str, Any]] = (),
    *,
    entry_points: bool = True,
    strict: bool | None = None,
    disabled: Iterable[str] | None = None,
) -> Registry:
    """Build a fresh registry from the installed entry points plus ``plugins`` (name, module)."""
    host = PluginHost(strict=strict, disabled=disabled)
    if entry_points:
        host.load_entry_points()
    for name, plugin in plugins:
        host.register(plugin, name)
    return host.build_registry()


_default_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry of installed plugins, built on first use."""
    global _default_registry
    if _default_registry is None:
        _default_registry = load_registry()
    return _default_registry


def reset_default_registry() -> None:
    """Forget the process-wide registry (tests, or after installing a plugin at run time)."""
    global _default_registry
    _default_registry = None
