"""``mmfuse/regression``: MSE or Huber regression of one or more values."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from mmfuse.contracts import EncoderOutput, SampleError, Task
from mmfuse.mlp import build_task_head
from mmfuse_plugins.tasks import RegressionConfig

__all__ = ["RegressionTask", "build_regression"]


class RegressionTask(Task):
    def __init__(self, config: RegressionConfig, fused_dim: int) -> None:
        super().__init__()
        self.config = config
        self.head = build_task_head(fused_dim, config.output_dim, config.hidden_dim, config.dropout)

    def forward(self, fused: Tensor, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        return self.head(fused)

    def encode_target(self, value: Any) -> Tensor:
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, bool) for v in values):  # float(True) is 1.0: a boolean is not a measurement
            raise SampleError(f"regression target must be a number (or list of numbers), got {value!r}")
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise SampleError(f"regression target must be a number (or list of numbers), got {value!r}") from exc
        if len(numbers) != self.config.output_dim or not all(math.isfinite(n) for n in numbers):
            raise SampleError(f"expected {self.config.output_dim} finite number(s), got {value!r}")
        return torch.tensor(numbers, dtype=torch.float32)

    def loss(self, outputs: Tensor, targets: Tensor | None) -> Tensor:
        if targets is None:
            raise ValueError("regression loss needs targets")
        if self.config.loss == "huber":
            return F.huber_loss(outputs.float(), targets, delta=self.config.huber_delta)
        return F.mse_loss(outputs.float(), targets)

    def build_metrics(self) -> torchmetrics.MetricCollection:
        return torchmetrics.MetricCollection(
            {
                "mae": torchmetrics.MeanAbsoluteError(),
                "rmse": torchmetrics.MeanSquaredError(squared=False),
                "r2": torchmetrics.R2Score(),
            }
        )

    def update_metrics(self, metrics: Any, outputs: Tensor, targets: Tensor | None) -> None:
        out = outputs.detach().float()
        if self.config.output_dim == 1:
            out, targets = out.squeeze(-1), targets.squeeze(-1)  # type: ignore[union-attr]
        metrics.update(out, targets)

    def predict(self, outputs: Tensor) -> list[Any]:
        values = outputs.detach().float().cpu()
        if self.config.output_dim == 1:
            return values.squeeze(-1).tolist()
        return values.tolist()


def build_regression(config: RegressionConfig, fused_dim: int, encoder_dims: dict[str, int]) -> RegressionTask:
    return RegressionTask(config, fused_dim)
