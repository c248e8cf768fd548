"""``mmfuse/prototype``: classify a row by the similarity of its fused vector to one prototype per
class, the mean fused vector of that class's training rows (nearest class mean; prototypical
networks, Snell et al. 2017).

The prototypes are buffers (``prototypes [C, D]`` and ``prototype_rows [C]``, the rows behind
each; random, with no rows behind them, until the first pass), so they travel in checkpoints and the model folder and a loaded model predicts without the
training data. During a fit they are recomputed from the training split by
:class:`~mmfuse_plugins.tasks.prototype_refresh.PrototypeRefresh` (the callback this task hands
the engine): at the start of the fit and, while anything upstream trains, after the last step
before each evaluation. Logits are ``scale * cos(x, p)`` (cosine) or ``-scale * |x - p|^2``
(euclidean) with a learnable ``scale = 1 / temperature``; the loss is cross-entropy over them, so
trainable fusion or encoders learn a space where each row lies near its own class's prototype.
Gradients do not flow into the prototypes: they are recomputed from the updated model instead.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfuse.contracts import EncoderOutput
from mmfuse_plugins.tasks import PrototypeConfig
from mmfuse_plugins.tasks.classification import SingleLabelTask

__all__ = ["PrototypeTask", "build_prototype"]


class PrototypeTask(SingleLabelTask):
    def __init__(self, config: PrototypeConfig, fused_dim: int) -> None:
        super().__init__(config.labels, "prototype")
        self.config = config
        self.fused_dim = fused_dim
        # random until the first pass over the training data sets the class means (like a fresh
        # linear head), so a model trained without the engine's callback still learns something
        self.register_buffer("prototypes", torch.randn(self.num_classes, fused_dim) / math.sqrt(fused_dim))
        self.register_buffer("prototype_rows", torch.zeros(self.num_classes))
        # shape [1], not a scalar: FSDP's fully_shard cannot shard a 0-dim parameter
        self.log_scale = nn.Parameter(
            torch.full((1,), math.log(1.0 / config.temperature)), requires_grad=config.learn_temperature
        )

    # ------------------------------------------------------------------ logits

    def scale(self) -> Tensor:
        return self.log_scale.exp().clamp(max=self.config.max_scale)

    def embed(self, fused: Tensor) -> Tensor:
        """The vector compared with the prototypes: unit length for cosine, as is for euclidean."""
        fused = fused.float()
        return F.normalize(fused, dim=-1) if self.config.distance == "cosine" else fused

    def forward(self, fused: Tensor, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        rows = self.embed(fused)
        prototypes = self.prototypes.float()
        if self.config.distance == "cosine":
            similarity = rows @ F.normalize(prototypes, dim=-1).T
        else:  # -|x - p|^2, expanded so that no [B, C, D] tensor is built
            similarity = 2 * rows @ prototypes.T - (rows * rows).sum(-1, keepdim=True) - (prototypes * prototypes).sum(-1)
        logits = self.scale() * similarity
        # a class without training rows has no prototype: never predicted, unless no class has one
        # (a model that never saw data); torch.where, not an `if`, so no host sync and it exports
        empty = self.prototype_rows == 0
        unusable = empty & ~empty.all()
        return torch.where(unusable, torch.full_like(logits, -1e4), logits)

    def loss(self, outputs: Tensor, targets: Tensor | None) -> Tensor:
        if targets is None:
            raise ValueError("prototype loss needs targets")
        return F.cross_entropy(outputs.float(), targets)

    # ------------------------------------------------------------------ prototypes

    def class_sums(self, fused: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Per class, the sum of the rows' embeddings ``[C, D]`` and the row count ``[C]`` (float64,
        so that sums over many batches and ranks stay exact enough)."""
        rows = self.embed(fused.detach()).double()
        onehot = F.one_hot(targets.long(), self.num_classes).double()
        return onehot.T @ rows, onehot.sum(0)

    def set_prototypes(self, sums: Tensor, counts: Tensor) -> None:
        """Prototypes = class means (``sums / counts``); a class without rows gets none."""
        means = sums / counts.clamp_min(1).unsqueeze(-1)
        self.prototypes.copy_(torch.where(counts.unsqueeze(-1) > 0, means, torch.zeros_like(means)))
        self.prototype_rows.copy_(counts)

    def training_callbacks(self, name: str) -> list[Any]:
        from mmfuse_plugins.tasks.prototype_refresh import PrototypeRefresh

        return [PrototypeRefresh(name)]


def build_prototype(config: PrototypeConfig, fused_dim: int, encoder_dims: dict[str, int]) -> PrototypeTask:
    return PrototypeTask(config, fused_dim)
