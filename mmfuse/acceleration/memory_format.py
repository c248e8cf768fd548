"""``trainer.channels_last: true``: convolutional encoders in the channels-last memory format.

Convolutions with NHWC tensors are faster on tensor-core GPUs and with oneDNN on recent CPUs.
Every encoder that contains a 2-D convolution has its 4-D parameters converted at the start of
the fit, and each training batch's 4-D float inputs of those encoders are converted before the
forward (evaluation batches are not: the layout changes speed, not results). Weights keep their
values and names, so checkpoints and model folders are unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmfuse.engine.callbacks import Callback

if TYPE_CHECKING:
    from mmfuse.engine.trainer import Trainer

__all__ = ["ChannelsLast", "conv_encoders"]


def conv_encoders(model: nn.Module) -> list[str]:
    """Names of the encoders that contain a ``Conv2d``."""
    return [
        name for name, encoder in model.encoders.items()  # type: ignore[attr-defined]
        if any(isinstance(module, nn.Conv2d) for module in encoder.modules())
    ]


class ChannelsLast(Callback):
    def __init__(self) -> None:
        self.encoders: list[str] = []

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.encoders = conv_encoders(trainer.model)
        for name in self.encoders:
            trainer.model.encoders[name].to(memory_format=torch.channels_last)
        shown = ", ".join(self.encoders) or "none (no Conv2d in any encoder)"
        trainer.log(f"channels_last: convolutional encoders {shown}")

    def on_train_batch_start(self, trainer: "Trainer", batch: dict[str, Any]) -> None:
        inputs = batch.get("inputs", {})
        for name in self.encoders:
            tensors = inputs.get(name)
            if not tensors:
                continue
            for key, value in tensors.items():
                if isinstance(value, torch.Tensor) and value.dim() == 4 and value.is_floating_point():
                    tensors[key] = value.contiguous(memory_format=torch.channels_last)
