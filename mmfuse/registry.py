"""The typed component registry: namespaced names, aliases, provenance, duplicates, did-you-mean.

Imports no torch. Builders are stored as ``"module:attr"`` strings and imported on first use.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

__all__ = [
    "KINDS",
    "Provenance",
    "ComponentSpec",
    "Registry",
    "RegistryError",
    "DuplicateComponentError",
    "UnknownComponentError",
    "ComponentLoadError",
    "EmptyConfig",
    "suggest",
]

KINDS = ("encoder", "fusion", "task", "reader", "callback")


class EmptyConfig(BaseModel):
    """Config of a component that takes no parameters."""

    model_config = ConfigDict(extra="forbid")


class RegistryError(Exception):
    """Base class of registry errors."""


class DuplicateComponentError(RegistryError):
    """Two plugins registered the same namespaced name."""


class UnknownComponentError(RegistryError, KeyError):
    """A name that no loaded plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ComponentLoadError(RegistryError):
    """A component's builder could not be imported or its plugin is broken."""


@dataclass(frozen=True)
class Provenance:
    """Who registered a component: the plugin, its distribution and version, its module."""

    plugin: str
    distribution: str | None = None
    version: str | None = None
    module: str | None = None

    def describe(self) -> str:
        dist = self.distribution or "not installed"
        version = f" {self.version}" if self.version else ""
        return f"plugin '{self.plugin}' ({dist}{version})"


@dataclass(frozen=True)
class ComponentSpec:
    """One registered component."""

    kind: str
    name: str
    builder: str | Callable[..., Any]
    config: type[BaseModel]
    provenance: Provenance
    description: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def namespace(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def short_name(self) -> str:
        return self.name.split("/", 1)[1]

    def load_builder(self) -> Callable[..., Any]:
        """Import the builder (on first use); a failed import is chained into ComponentLoadError."""
        if callable(self.builder):
            return self.builder
        module_name, _, attr = self.builder.partition(":")
        try:
            module = importlib.import_module(module_name)
            return getattr(module, attr)
        except Exception as exc:
            raise ComponentLoadError(
                f"Cannot import the builder of {self.kind} '{self.name}' ({self.builder}) from "
                f"{self.provenance.describe()}: {type(exc).__name__}: {exc}. Reinstall the plugin "
                f"or check its dependencies."
            ) from exc

    def build(self, config: BaseModel, **context: Any) -> Any:
        """Import the builder and call it with the validated config and the kind's context."""
        return self.load_builder()(config, **context)


def suggest(word: str, candidates: list[str] | tuple[str, ...]) -> str | None:
    """Closest candidate to ``word`` (case-insensitive), or None."""
    lowered = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    if not hits:
        # also compare short names so 'timm_imag' finds 'mmfuse/image_timm'
        shorts = {c.split("/", 1)[-1].lower(): c for c in candidates}
        hits_short = difflib.get_close_matches(word.split("/", 1)[-1].lower(), list(shorts), n=1, cutoff=0.5)
        return shorts[hits_short[0]] if hits_short else None
    return lowered[hits[0]]


@dataclass
class Registry:
    """Components by kind and namespaced name, with unique short aliases.

    ``broken`` holds load failures of plugins (see :class:`mmfuse.plugin_host.PluginFailure`) so a
    lookup of a name that a broken plugin would have provided can chain the original error.
    """

    _specs: dict[str, dict[str, ComponentSpec]] = field(default_factory=lambda: {k: {} for k in KINDS})
    broken: list[Any] = field(default_factory=list)

    def add(self, spec: ComponentSpec) -> None:
        if spec.kind not in KINDS:
            raise RegistryError(f"Unknown component kind '{spec.kind}'; expected one of {KINDS}.")
        if "/" not in spec.name or spec.name.startswith("/") or spec.name.endswith("/"):
            raise RegistryError(
                f"{spec.provenance.describe()} registered {spec.kind} '{spec.name}' without a "
                f"namespace. Use '<namespace>/<name>', e.g. 'acme/{spec.name.strip('/')}'."
            )
        existing = self._specs[spec.kind].get(spec.name)
        if existing is not None:
            raise DuplicateComponentError(
                f"Duplicate {spec.kind} '{spec.name}': already registered by "
                f"{existing.provenance.describe()}, which is kept; the one from {spec.provenance.describe()} "
                f"is not registered. Rename it in that plugin, or disable the plugin "
                f"(MMFUSE_DISABLE_PLUGINS={spec.provenance.plugin})."
            )
        self._specs[spec.kind][spec.name] = spec

    def has(self, kind: str, name: str) -> bool:
        """Whether ``name`` is registered as a full name (aliases not considered)."""
        return name in self._specs.get(kind, {})

    def specs(self, kind: str) -> list[ComponentSpec]:
        return sorted(self._specs[kind].values(), key=lambda s: s.name)

    def all_specs(self) -> list[ComponentSpec]:
        return [s for kind in KINDS for s in self.specs(kind)]

    def aliases(self, kind: str) -> dict[str, list[str]]:
        """Short name or alias -> the full names that claim it."""
        claims: dict[str, list[str]] = {}
        for spec in self._specs[kind].values():
            for short in (spec.short_name, *spec.aliases):
                claims.setdefault(short, []).append(spec.name)
        return claims

    def unique_aliases(self, spec: ComponentSpec) -> list[str]:
        claims = self.aliases(spec.kind)
        return [a for a in (spec.short_name, *spec.aliases) if claims.get(a) == [spec.name]]

    def names(self, kind: str) -> list[str]:
        """Every name a recipe may use for ``kind``: full names and unique aliases."""
        full = list(self._specs[kind])
        short = [a for a, owners in self.aliases(kind).items() if len(owners) == 1]
        return sorted(set(full) | set(short))

    def get(self, kind: str, name: str) -> ComponentSpec:
        """Resolve a full name or unique alias; raise UnknownComponentError with a suggestion."""
        specs = self._specs[kind]
        if name in specs:
            return specs[name]
        owners = self.aliases(kind).get(name, [])
        if len(owners) == 1:
            return specs[owners[0]]
        if len(owners) > 1:
            raise UnknownComponentError(
                f"{kind.capitalize()} name '{name}' is ambiguous: it is provided by "
                + ", ".join(f"'{o}' ({specs[o].provenance.describe()})" for o in sorted(owners))
                + ". Use the full namespaced name."
            )
        raise self._unknown(kind, name)

    def _unknown(self, kind: str, name: str) -> UnknownComponentError:
        message = f"Unknown {kind} '{name}'."
        hint = suggest(name, self.names(kind))
        if hint:
            spec = self.get(kind, hint)
            version = f" {spec.provenance.version}" if spec.provenance.version else ""
            message += f" Did you mean '{hint}' ({spec.provenance.distribution or spec.provenance.plugin}{version})?"
        culprit = self._broken_provider(name)
        if culprit is not None:
            message += (
                f" Plugin '{culprit.entry_point}' ({culprit.distribution or '?'} {culprit.version or ''}) "
                f"failed to load and may provide it: {type(culprit.error).__name__}: {culprit.error}"
            )
        message += " Run `mmfuse plugins` to list components."
        error = UnknownComponentError(message)
        if culprit is not None:
            error.__cause__ = culprit.error
        return error

    def _broken_provider(self, name: str) -> Any:
        failed = [f for f in self.broken if getattr(f, "dropped", None) is None]  # not dropped components
        if not failed:
            return None
        namespace = name.split("/", 1)[0] if "/" in name else None
        for failure in failed:
            keys = {failure.entry_point, failure.distribution or ""}
            if namespace and namespace in keys:
                return failure
            if name in keys:
                return failure
        return failed[0] if len(failed) == 1 else None
