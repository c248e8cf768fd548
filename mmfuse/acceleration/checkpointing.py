"""``trainer.gradient_checkpointing: [encoder, ...]``: activation checkpointing of the named encoders.

Each named encoder's ``Encoder.set_grad_checkpointing(True)`` is called at the start of the fit:
the backbone then keeps fewer activations and recomputes them in the backward pass (timm's and
transformers' own checkpointing), trading compute for memory. Results are the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmfuse.engine.callbacks import Callback

if TYPE_CHECKING:
    from mmfuse.engine.trainer import Trainer

__all__ = ["GradientCheckpointing"]


class GradientCheckpointing(Callback):
    def __init__(self, encoders: list[str]) -> None:
        self.encoders = list(encoders)

    def on_fit_start(self, trainer: "Trainer") -> None:
        available = list(trainer.model.encoders)
        for name in self.encoders:
            if name not in available:
                raise ValueError(
                    f"trainer.gradient_checkpointing names encoder '{name}', but the model's encoders are {available}"
                )
            encoder = trainer.model.encoders[name]
            try:
                encoder.set_grad_checkpointing(True)
            except NotImplementedError as exc:
                raise ValueError(
                    f"trainer.gradient_checkpointing: encoder '{name}' ({type(encoder).__name__}) cannot checkpoint "
                    f"activations ({exc}); remove it from the list"
                ) from exc
        trainer.log(f"gradient checkpointing: {', '.join(self.encoders)}")
