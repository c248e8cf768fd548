"""FusedModel: encoders + one fusion head + task heads, assembled from a recipe.

A FusedModel is an ordinary ``nn.Module`` (constructor injection, as TorchMultimodal's LateFusion):
an app or another trainer can use it without mmfuse's engine.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from mmfuse.balance.dropout import build_modality_dropout
from mmfuse.balance.unimodal import FusedOutputs, build_unimodal_heads
from mmfuse.contracts import Encoder, EncoderOutput, FusionHead, Task
from mmfuse.present_rows import encode_present_rows, is_capturing_graph
from mmfuse.recipe import Recipe
from mmfuse.registry import Registry

__all__ = ["LossWeighting", "FusedModel", "build_fused_model", "set_trainable"]


class LossWeighting(nn.Module):
    """Total loss of several tasks: a fixed weighted sum, or learned uncertainty weighting.

    Uncertainty weighting (Kendall et al., 2018) learns ``s_i = log sigma_i^2`` per task:
    ``total = sum_i w_i * (exp(-s_i) * L_i + s_i)``.
    """

    def __init__(self, weights: Mapping[str, float], mode: str = "fixed") -> None:
        super().__init__()
        if mode not in ("fixed", "uncertainty"):
            raise ValueError(f"loss weighting must be 'fixed' or 'uncertainty', got {mode!r}")
        self.mode = mode
        self.names = list(weights)
        self.register_buffer("weights", torch.tensor([float(weights[n]) for n in self.names]), persistent=False)
        if mode == "uncertainty":
            self.log_vars = nn.Parameter(torch.zeros(len(self.names)))

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = torch.stack([losses[n].float() for n in self.names])
        if self.mode == "uncertainty":
            stacked = torch.exp(-self.log_vars) * stacked + self.log_vars
        return (self.weights.to(stacked.device) * stacked).sum()


class FusedModel(nn.Module):
    """``forward(batch) -> {task_name: outputs}``; ``compute_loss`` gives the weighted total.

    Each encoder runs only on the rows that have its modality (see :mod:`mmfuse.present_rows`);
    set ``gather_present_rows = False`` for the static path that runs every row (graph capture
    for exports selects it by itself)."""

    #: run each encoder on the rows where ``present`` is True only (False: on every row)
    gather_present_rows: bool = True
    #: run every encoder's forward in every batch, even one without a row of its modality (FSDP:
    #: each forward is a collective); those rows' features stay zero and masked
    every_encoder_forwards: bool = False

    def __init__(
        self,
        encoders: Mapping[str, Encoder],
        fusion: FusionHead,
        tasks: Mapping[str, Task],
        loss_weighting: LossWeighting | None = None,
        modality_dropout: nn.Module | None = None,
        unimodal_heads: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not encoders:
            raise ValueError("a FusedModel needs at least one encoder")
        if not tasks:
            raise ValueError("a FusedModel needs at least one task")
        self.encoders = nn.ModuleDict(dict(encoders))
        self.fusion = fusion
        self.tasks = nn.ModuleDict(dict(tasks))
        self.loss_weighting = loss_weighting or LossWeighting({name: 1.0 for name in tasks})
        # imbalance tools (mmfuse.balance): both optional, both None for a plain model
        self.modality_dropout = modality_dropout
        self.unimodal_heads = unimodal_heads

    def train(self, mode: bool = True) -> "FusedModel":
        """Like ``nn.Module.train``, but frozen parts of encoders stay in eval mode.

        A frozen block must behave as it was loaded: in train mode its BatchNorm layers would
        still update their running statistics and its dropout would still fire, so a "frozen"
        backbone would drift. A block is frozen when none of its parameters requires a gradient;
        whole encoders and their ``layer_groups()`` are checked, so ``trainable_layers`` and
        staged unfreezing keep the still-frozen blocks in eval mode."""
        super().train(mode)
        if mode:
            for encoder in self.encoders.values():
                blocks = [encoder, *(encoder.layer_groups() if isinstance(encoder, Encoder) else [])]
                for block in blocks:
                    params = list(block.parameters())
                    if params and not any(p.requires_grad for p in params):
                        block.eval()
        return self

    def encode(self, batch: Mapping[str, Any]) -> tuple[dict[str, EncoderOutput], dict[str, Tensor]]:
        """Run every encoder whose inputs are in the batch (on the rows that have its modality);
        return features and presence masks. Absent rows have zero features and a False token mask."""
        features: dict[str, EncoderOutput] = {}
        present: dict[str, Tensor] = {}
        inputs = batch["inputs"]
        masks = batch.get("present", {})
        gather = self.gather_present_rows and not is_capturing_graph()
        for name, encoder in self.encoders.items():
            if name not in inputs:
                continue
            mask = masks.get(name)
            if gather and mask is not None:
                features[name] = encode_present_rows(
                    encoder, inputs[name], mask, name, always_forward=self.every_encoder_forwards
                )
            else:
                features[name] = encoder(inputs[name])
            if mask is None:
                mask = torch.ones(features[name].pooled.shape[0], dtype=torch.bool, device=features[name].pooled.device)
            present[name] = mask.to(features[name].pooled.device)
        if not features:
            raise ValueError(
                f"batch['inputs'] has none of this model's encoders {list(self.encoders)}; "
                f"got {list(inputs)}"
            )
        return features, present

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        if self.modality_dropout is not None:
            batch = self.modality_dropout(batch)  # training only: drops modalities via the presence mask
        features, present = self.encode(batch)
        fused = self.fusion(features, present)
        outputs = FusedOutputs({name: task(fused, features, present) for name, task in self.tasks.items()})
        if self.unimodal_heads is not None:
            outputs.unimodal = self.unimodal_heads(features, present)
        return outputs

    def compute_loss(
        self, outputs: Mapping[str, Any], targets: Mapping[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(weighted total, per-task losses); no host sync."""
        losses = {name: task.loss(outputs[name], targets.get(name)) for name, task in self.tasks.items()}
        total = self.loss_weighting(losses)
        if self.unimodal_heads is not None and getattr(outputs, "unimodal", None):
            auxiliary, per_head = self.unimodal_heads.loss(outputs.unimodal, targets)  # type: ignore[attr-defined]
            total = total + auxiliary
            losses = {**losses, **per_head}  # keys "<task>/<encoder>"
        return total, losses


def set_trainable(encoder: nn.Module, *, freeze: bool, trainable_layers: int | None = None) -> None:
    """Freeze an encoder, or train only its last ``trainable_layers`` layer groups."""
    if trainable_layers is None:
        encoder.requires_grad_(not freeze)
        return
    encoder.requires_grad_(False)
    groups = encoder.layer_groups() if isinstance(encoder, Encoder) else [encoder]
    if trainable_layers > 0:
        for group in groups[-trainable_layers:]:
            group.requires_grad_(True)


def build_fused_model(recipe: Recipe, registry: Registry | None = None) -> FusedModel:
    """Build every component the recipe names and inject them into one FusedModel."""
    if registry is None:
        from mmfuse.plugin_host import get_registry

        registry = get_registry()
    encoders: dict[str, Encoder] = {}
    for name, slot in recipe.encoders.items():
        encoder = registry.get("encoder", slot.type).build(slot.params)
        _check_component(encoder, Encoder, f"encoders.{name}", slot.type)
        set_trainable(encoder, freeze=slot.freeze, trainable_layers=slot.trainable_layers)
        if slot.gradient_checkpointing:
            from mmfuse.acceleration.checkpointing import enable_gradient_checkpointing

            enable_gradient_checkpointing(encoder, f"encoders.{name}.gradient_checkpointing")
        if slot.peft is not None:  # adapters (peft library); freezes the encoder's own weights
            from mmfuse.peft_adapters import add_adapters

            add_adapters(encoder, slot.peft, f"encoders.{name}")
        encoders[name] = encoder
    input_dims = {name: int(encoder.output_dim) for name, encoder in encoders.items()}
    fusion = registry.get("fusion", recipe.fusion.type).build(recipe.fusion.params, input_dims=input_dims)
    _check_component(fusion, FusionHead, "fusion", recipe.fusion.type)
    tasks: dict[str, Task] = {}
    for name, slot in recipe.tasks.items():
        task = registry.get("task", slot.type).build(
            slot.params, fused_dim=int(fusion.output_dim), encoder_dims=input_dims
        )
        _check_component(task, Task, f"tasks.{name}", slot.type)
        tasks[name] = task
    for task in tasks.values():
        task.bind_encoders(encoders)  # heads built from an encoder's own library (masked LM)
    weighting = LossWeighting({n: s.weight for n, s in recipe.tasks.items()}, recipe.trainer.loss_weighting)
    dropout = build_modality_dropout(recipe.fusion.modality_dropout, list(encoders))
    unimodal = build_unimodal_heads(recipe, registry, tasks, input_dims)
    return FusedModel(encoders, fusion, tasks, weighting, modality_dropout=dropout, unimodal_heads=unimodal)


def _check_component(obj: Any, expected: type, path: str, type_name: str) -> None:
    if not isinstance(obj, expected):
        raise TypeError(
            f"{path}: the builder of '{type_name}' returned {type(obj).__name__}, "
            f"not an mmfuse.contracts.{expected.__name__}"
        )
