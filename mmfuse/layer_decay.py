"""Layer-wise learning-rate decay (``optimizer.lr_layer_decay``) over encoders' layer groups.

An encoder's ``layer_groups()`` run from input to output. With decay ``d``, the last group keeps
the encoder's lr and each group below it is multiplied by ``d`` once more: group ``i`` of ``N``
trains at ``lr * d ** (N - 1 - i)`` (embeddings slowest). Parameters of the encoder outside every
group (an encoder's own projection) keep the full lr. Fusion head, tasks and single-group encoders
are unchanged. The optimizer's groups are split per layer (``encoders.text/layer3``,
``encoders.text.no_decay/layer3``), so the schedule, staged unfreezing and checkpoints need no
special case.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["layer_lr_scales", "split_by_layer_decay"]


def layer_lr_scales(encoder: nn.Module, decay: float) -> dict[int, tuple[int, float]]:
    """``id(param) -> (layer index, lr multiplier)`` for the parameters in ``encoder``'s layer groups."""
    layer_groups = getattr(encoder, "layer_groups", None)
    groups = layer_groups() if callable(layer_groups) else [encoder]
    count = len(groups)
    scales: dict[int, tuple[int, float]] = {}
    for index, group in enumerate(groups):
        for param in group.parameters():
            scales.setdefault(id(param), (index, decay ** (count - 1 - index)))
    return scales


def split_by_layer_decay(groups: list[dict[str, Any]], model: nn.Module, decay: float | None) -> list[dict[str, Any]]:
    """Split each encoder's optimizer groups by layer with the decayed lr; others pass through."""
    if decay is None or decay == 1.0:
        return groups
    encoders = getattr(model, "encoders", {})
    scales_of = {f"encoders.{name}": layer_lr_scales(encoder, decay) for name, encoder in encoders.items()}
    result: list[dict[str, Any]] = []
    for group in groups:
        owner = next((key for key in scales_of if group["name"] == key or group["name"].startswith(key + ".")), None)
        scales = scales_of.get(owner) if owner else None
        if not scales or len({layer for layer, _ in scales.values()}) < 2:
            result.append(group)
            continue
        by_layer: dict[int | None, list[Any]] = {}
        for param in group["params"]:
            layer = scales.get(id(param), (None, 1.0))[0]
            by_layer.setdefault(layer, []).append(param)
        for layer, params in sorted(by_layer.items(), key=lambda item: -1 if item[0] is None else item[0]):
            factor = 1.0 if layer is None else scales[id(params[0])][1]
            suffix = "top" if layer is None else f"layer{layer}"
            result.append({**group, "name": f"{group['name']}/{suffix}", "params": params, "lr": group["lr"] * factor})
    return result
