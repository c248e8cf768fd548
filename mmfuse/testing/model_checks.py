"""Checks that need a whole FusedModel built from a tiny recipe: save/load parity through the
model folder, and the effect of ``freeze`` / ``trainable_layers`` on the one optimizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from mmfuse.model import build_fused_model
from mmfuse.optim import build_optimizer
from mmfuse.registry import Registry
from mmfuse.testing.batches import make_batch
from mmfuse.testing.harness import SUBJECT_SLOT, Subject, assert_close, fused_recipe, save_and_reload
from mmfuse.testing.report import expect

__all__ = ["artifact_available", "output_tensors", "check_save_load", "check_frozen"]


def artifact_available() -> bool:
    """True once :mod:`mmfuse.artifact` (the model folder) is importable."""
    import importlib.util

    return importlib.util.find_spec("mmfuse.artifact") is not None


def output_tensors(value: Any, path: str = "outputs") -> list[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return [(path, value)]
    if isinstance(value, Mapping):
        return [item for key, sub in value.items() for item in output_tensors(sub, f"{path}[{key!r}]")]
    if isinstance(value, (list, tuple)):
        return [item for index, sub in enumerate(value) for item in output_tensors(sub, f"{path}[{index}]")]
    return []


def check_save_load(
    subject: Subject,
    registry: Registry,
    values: Mapping[str, Sequence[Any]],
    targets: Mapping[str, Sequence[Any]],
    folder: Path,
) -> None:
    """A model folder written by ``mmfuse.artifact.save`` loads back to a model that gives the same
    outputs from the same raw values (weights, config and preprocessing all survive)."""
    torch.manual_seed(0)
    recipe = fused_recipe(subject, registry)
    model = build_fused_model(recipe, registry).eval()
    with torch.no_grad():
        before = model(make_batch(model, values, targets))
    reloaded = save_and_reload(model, recipe, folder, registry).eval()
    with torch.no_grad():
        after = reloaded(make_batch(reloaded, values, targets))
    expected = dict(output_tensors(before))
    actual = dict(output_tensors(after))
    expect(sorted(actual) == sorted(expected), f"reloaded model returns {sorted(actual)}, saved one {sorted(expected)}")
    for path, tensor in expected.items():
        assert_close(actual[path], tensor, f"{path} after save -> load_model")
    for name, task in model.tasks.items():
        saved, loaded = task.label_names(), reloaded.tasks[name].label_names()
        expect(saved == loaded, f"task '{name}': label_names() {saved} became {loaded} after save -> load_model")


def check_frozen(
    subject: Subject, registry: Registry, values: Sequence[Any], targets: Sequence[Any]
) -> None:
    """``freeze: true`` leaves no trainable parameter, none in the optimizer, no gradient; and
    ``trainable_layers: 1`` trains exactly the last of ``layer_groups()``."""
    recipe = fused_recipe(subject, registry, freeze=True)
    model = build_fused_model(recipe, registry)
    encoder = model.encoders[SUBJECT_SLOT]
    trainable = [name for name, p in encoder.named_parameters() if p.requires_grad]
    expect(not trainable, f"freeze: true left parameters trainable: {trainable[:8]}")
    own = {id(p) for p in encoder.parameters()}
    optimizer = build_optimizer(model, recipe)
    in_optimizer = [g["name"] for g in optimizer.param_groups for p in g["params"] if id(p) in own]
    expect(not in_optimizer, f"frozen parameters were put in optimizer groups {sorted(set(in_optimizer))}")
    model.train()
    buffers = {name: b.detach().clone() for name, b in encoder.named_buffers()}
    batch = make_batch(model, {SUBJECT_SLOT: values}, {"probe": targets})
    total, _ = model.compute_loss(model(batch), batch["targets"])
    total.backward()
    with_grad = [name for name, p in encoder.named_parameters() if p.grad is not None]
    expect(not with_grad, f"frozen parameters received gradients: {with_grad[:8]}")
    # a frozen encoder is kept in eval mode: BatchNorm running statistics must not move
    moved = [name for name, b in encoder.named_buffers() if name in buffers and not torch.equal(b, buffers[name])]
    expect(not moved, f"a training step changed buffers of the frozen encoder: {moved[:8]}")

    partial = build_fused_model(fused_recipe(subject, registry, trainable_layers=1), registry)
    encoder = partial.encoders[SUBJECT_SLOT]
    groups = encoder.layer_groups()
    own = {id(p) for p in encoder.parameters()}
    foreign = [f"{i} ({type(g).__name__})" for i, g in enumerate(groups) if any(id(p) not in own for p in g.parameters())]
    expect(not foreign, f"layer_groups() holds parameters that are not part of the encoder: groups {foreign}")
    expected = {id(p) for p in groups[-1].parameters()} if groups else set()
    actual = {id(p) for p in encoder.parameters() if p.requires_grad}
    if any(True for _ in encoder.parameters()):
        expect(bool(expected), "trainable_layers: 1 trains nothing: the last of layer_groups() has no parameters")
    expect(
        actual == expected,
        f"trainable_layers: 1 should train exactly the {len(expected)} parameter tensor(s) of the last layer "
        f"group, but {len(actual)} are trainable",
    )
