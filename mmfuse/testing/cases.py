"""Conformance suites over sets of registered components, for pytest parametrization."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Union

from pydantic import BaseModel

from mmfuse.registry import ComponentSpec, Registry
from mmfuse.testing.report import ConformanceReport

__all__ = ["KIT_KINDS", "ConfigSource", "ConformanceCase", "check_component", "conformance_cases", "parametrize_components"]

#: the component kinds the kit has suites for
KIT_KINDS = ("encoder", "fusion", "task")

#: a component's config: its parameters, its config model, or a function of a scratch folder that
#: returns them (for configs that point at files, e.g. a tiny local model written on the fly)
ConfigSource = Union[Mapping[str, Any], BaseModel, Callable[[Path], Union[Mapping[str, Any], BaseModel]], None]


def check_component(
    kind: str,
    name_or_spec: str | ComponentSpec,
    config: BaseModel | Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    **options: Any,
) -> ConformanceReport:
    """Run the suite of ``kind`` ("encoder", "fusion" or "task") on one component."""
    if kind == "encoder":
        from mmfuse.testing.encoder_checks import check_encoder as check
    elif kind == "fusion":
        from mmfuse.testing.fusion_checks import check_fusion as check
    elif kind == "task":
        from mmfuse.testing.task_checks import check_task as check
    else:
        raise ValueError(f"the conformance kit checks {KIT_KINDS}, not '{kind}'")
    return check(name_or_spec, config, registry, **options)


@dataclass(frozen=True)
class ConformanceCase:
    """One component to check: its kind, name, config source and extra check options."""

    kind: str
    name: str
    config: ConfigSource = None
    options: Mapping[str, Any] = field(default_factory=dict)
    registry: Registry | None = field(default=None, repr=False, compare=False)

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.name}"

    def check(self, folder: str | Path | None = None) -> ConformanceReport:
        """Run the kind's suite; raise ConformanceError listing every failed check."""
        from mmfuse.testing.harness import in_folder

        def run(path: Path) -> ConformanceReport:
            config = self.config(path / "config") if callable(self.config) else self.config
            return check_component(self.kind, self.name, config, self.registry, folder=path, **self.options)

        return in_folder(folder, run)


def conformance_cases(
    kinds: Iterable[str] = KIT_KINDS,
    names: Iterable[str] | None = None,
    *,
    namespace: str | None = None,
    registry: Registry | None = None,
    configs: Mapping[str, ConfigSource] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[ConformanceCase]:
    """One case per registered component of ``kinds`` (default: the installed plugins' encoders,
    fusion heads and tasks), optionally only ``names`` or one ``namespace``. ``configs`` and
    ``options`` are keyed by full component name."""
    if registry is None:
        from mmfuse.plugin_host import load_registry

        registry = load_registry()
    wanted = set(names) if names is not None else None
    configs, options = dict(configs or {}), dict(options or {})
    cases = []
    for kind in kinds:
        if kind not in KIT_KINDS:
            raise ValueError(f"the conformance kit checks {KIT_KINDS}, not '{kind}'")
        for spec in registry.specs(kind):
            if wanted is not None and spec.name not in wanted:
                continue
            if namespace is not None and spec.namespace != namespace:
                continue
            cases.append(ConformanceCase(kind, spec.name, configs.get(spec.name), options.get(spec.name, {}), registry))
    if wanted is not None:
        found = {case.name for case in cases}
        missing = sorted(wanted - found)
        if missing:
            raise ValueError(f"no registered {'/'.join(kinds)} named {missing}; run `mmfuse plugins` to list components")
    return cases


def parametrize_components(
    kinds: str | Iterable[str] = KIT_KINDS,
    names: Iterable[str] | None = None,
    *,
    argname: str = "conformance_case",
    marks: Mapping[str, Any] | None = None,
    **selection: Any,
) -> Any:
    """A ``pytest.mark.parametrize`` over :func:`conformance_cases`, ids ``kind:name``; ``marks``
    maps a component name to pytest marks for its case (``pytest.mark.slow``)::

        @parametrize_components("encoder", namespace="acme")
        def test_conforms(conformance_case, tmp_path):
            conformance_case.check(tmp_path)
    """
    import pytest

    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    marks = dict(marks or {})
    params = [
        pytest.param(case, id=case.id, marks=marks.get(case.name, ()))
        for case in conformance_cases(kinds, names, **selection)
    ]
    return pytest.mark.parametrize(argname, params)
