"""What every conformance suite needs: the component's spec and config, partner components, a
FusedModel from a tiny recipe, tensor comparisons, and the save/load round trip."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import torch
from pydantic import BaseModel, ValidationError
from torch import Tensor, nn

from mmfuse.recipe import EncoderSlot, FusionSlot, Recipe, TaskSlot, parse_recipe
from mmfuse.registry import ComponentSpec, Registry
from mmfuse.testing.report import CheckFailure, ConformanceError, expect

__all__ = [
    "Subject",
    "resolve_subject",
    "partner_registry",
    "fused_recipe",
    "check_config_roundtrip",
    "assert_close",
    "assert_finite",
    "bf16_autocast",
    "in_folder",
    "expect_gradients",
    "expect_finite_gradients",
    "save_and_reload",
    "SUBJECT_SLOT",
]

T = TypeVar("T")

#: the slot name the component under test gets in the kit's recipes
SUBJECT_SLOT = "subject"
_HOST_KEYS = {
    "encoder": set(EncoderSlot.model_fields),
    "fusion": set(FusionSlot.model_fields),
    "task": set(TaskSlot.model_fields),
}
_PARTNER_PLUGINS = ("mmfuse_plugins.vector", "mmfuse_plugins.fusions", "mmfuse_plugins.tasks")


@dataclass
class Subject:
    """The component under test: its spec, its validated config, and the registry it came from."""

    spec: ComponentSpec
    config: BaseModel

    @property
    def label(self) -> str:
        return self.spec.name


def resolve_subject(
    kind: str, name_or_spec: str | ComponentSpec, config: BaseModel | Mapping[str, Any] | None, registry: Registry | None
) -> Subject:
    """Look the component up (default: the installed plugins) and validate its config."""
    if isinstance(name_or_spec, ComponentSpec):
        spec = name_or_spec
    else:
        if registry is None:
            from mmfuse.plugin_host import get_registry

            registry = get_registry()
        spec = registry.get(kind, name_or_spec)
    if spec.kind != kind:
        raise ValueError(f"'{spec.name}' is a {spec.kind}, not a {kind}")
    if isinstance(config, BaseModel):
        return Subject(spec, config)
    try:
        return Subject(spec, spec.config.model_validate(dict(config or {})))
    except ValidationError as exc:
        message = (
            f"the config {dict(config or {})!r} does not validate: {exc}. Pass config={{...}} with the "
            f"required fields (the kit names its encoders 'left' and 'right', or 'subject' for an encoder under test)"
        )
        raise ConformanceError(kind, spec.name, [CheckFailure(kind, spec.name, "config", message)], []) from exc


def partner_registry(subject: ComponentSpec) -> Registry:
    """The built-in vector encoder, fusion heads and tasks (partners of the component under test)
    plus the component itself, which replaces a built-in of the same name."""
    import importlib

    from mmfuse.plugin_host import load_registry

    builtins = load_registry(
        [(name.rsplit(".", 1)[-1], importlib.import_module(name)) for name in _PARTNER_PLUGINS], entry_points=False
    )
    registry = Registry()
    for spec in builtins.all_specs():
        if (spec.kind, spec.name) != (subject.kind, subject.name):
            registry.add(spec)
    registry.add(subject)
    return registry


def check_config_roundtrip(subject: Subject) -> None:
    """config -> JSON data -> validate gives an equal config, and fits a recipe slot unchanged."""
    dumped = subject.config.model_dump(mode="json")
    again = type(subject.config).model_validate(dumped)
    expect(
        again == subject.config,
        f"config does not survive model_dump(mode='json') -> model_validate: {subject.config!r} became {again!r}",
    )
    clash = sorted(set(dumped) & _HOST_KEYS[subject.spec.kind])
    expect(
        not clash,
        f"config fields {clash} collide with the recipe slot's host keys "
        f"{sorted(_HOST_KEYS[subject.spec.kind])}; rename them",
    )


def fused_recipe(subject: Subject, registry: Registry, **slot_keys: Any) -> Recipe:
    """A tiny recipe that puts the component under test in slot ``subject`` with small partners:
    two ``mmfuse/vector`` encoders, ``mmfuse/concat`` and ``mmfuse/regression`` where needed."""
    params = subject.config.model_dump(mode="json")
    own = {"type": subject.spec.name, **params, **slot_keys}
    encoders: dict[str, Any] = {
        "left": {"type": "mmfuse/vector", "input_dim": 4, "hidden_dim": 6, "output_dim": 6},
        "right": {"type": "mmfuse/vector", "input_dim": 3, "hidden_dim": 5, "output_dim": 5},
    }
    fusion: dict[str, Any] = {
        "type": "mmfuse/concat", "projection_dim": 6, "hidden_dims": [], "output_dim": 6, "dropout": 0.0,
    }
    tasks: dict[str, Any] = {"probe": {"type": "mmfuse/regression"}}
    if subject.spec.kind == "encoder":
        encoders = {SUBJECT_SLOT: own}
    elif subject.spec.kind == "fusion":
        fusion = own
    else:
        tasks = {SUBJECT_SLOT: own}
    raw = {"encoders": encoders, "fusion": fusion, "tasks": tasks, "optimizer": {"name": "adamw", "lr": 1e-3}}
    return parse_recipe(raw, registry)


def assert_finite(value: Tensor, what: str) -> None:
    if value.is_floating_point():
        bad = (~torch.isfinite(value)).sum().item()
        expect(bad == 0, f"{what} holds {bad} NaN/inf value(s)")


def assert_close(actual: Tensor, expected: Tensor, what: str, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    expect(
        actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    a, e = actual.detach().float(), expected.detach().float()
    if not torch.allclose(a, e, atol=atol, rtol=rtol):
        diff = (a - e).abs().max().item()
        raise_message = f"{what}: max abs difference {diff:.3g} (tolerance {atol:g} + {rtol:g}*|value|)"
        expect(False, raise_message)


def in_folder(folder: str | Path | None, run: Callable[[Path], T]) -> T:
    """Call ``run(folder)``, with a temporary folder (removed afterwards) when none is given."""
    if folder is not None:
        return run(Path(folder))
    with tempfile.TemporaryDirectory(prefix="mmfuse-conformance-") as temporary:
        return run(Path(temporary))


def expect_gradients(module: nn.Module, context: str = "") -> None:
    """Every trainable parameter got a gradient, and every gradient is finite."""
    missing = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
    expect(
        not missing,
        f"{len(missing)} trainable parameter(s) received no gradient{context}: {missing[:8]}. Remove unused "
        f"parameters or set requires_grad=False on them.",
    )
    expect_finite_gradients(module, context)


def expect_finite_gradients(module: nn.Module, context: str = "") -> None:
    broken = [name for name, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    expect(not broken, f"non-finite gradients{context} in {broken[:8]}")


def bf16_autocast() -> Any:
    """bf16 autocast on the CPU (the device every test machine has)."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


def save_and_reload(model: nn.Module, recipe: Recipe, folder: Path, registry: Registry) -> nn.Module:
    """Write the model folder with :func:`mmfuse.artifact.save` and rebuild the module from it."""
    from mmfuse import artifact

    artifact.save(model, folder, recipe, registry)
    loaded, _ = artifact.load_model(folder, registry)
    return loaded
