"""Activation checkpointing of an encoder: ``encoders.<name>.gradient_checkpointing: true``.

The encoder's ``Encoder.set_grad_checkpointing(True)`` is called when the fused model is built
(:func:`mmfuse.model.build_fused_model`): the backbone then keeps fewer activations and recomputes
them in the backward pass (timm's and transformers' own checkpointing), trading compute for
memory. Gradients are the same. An encoder that cannot checkpoint is an error naming the key.

``trainer.gradient_checkpointing: [names]`` is the older, deprecated form: a recipe's list is read
as the encoders' key (:mod:`mmfuse.recipe`); a ``TrainerConfig`` given to the ``Trainer`` without a
recipe still applies it at the start of the fit, through :class:`GradientCheckpointing`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from mmfuse.engine.callbacks import Callback

if TYPE_CHECKING:
    from mmfuse.engine.trainer import Trainer

__all__ = ["enable_gradient_checkpointing", "GradientCheckpointing"]


def enable_gradient_checkpointing(encoder: Any, key: str) -> None:
    """Turn on ``encoder``'s activation checkpointing; ``key`` (the recipe key) names it in the error."""
    try:
        encoder.set_grad_checkpointing(True)
    except (NotImplementedError, AttributeError) as exc:
        raise ValueError(
            f"{key}: {type(encoder).__name__} cannot checkpoint activations ({exc}); set it to false "
            "(or implement Encoder.set_grad_checkpointing in the encoder's plugin)"
        ) from exc


class GradientCheckpointing(Callback):
    """The deprecated ``trainer.gradient_checkpointing`` list of a ``TrainerConfig`` used without a recipe."""

    def __init__(self, encoders: list[str]) -> None:
        self.encoders = list(encoders)

    def on_fit_start(self, trainer: "Trainer") -> None:
        warnings.warn(
            "trainer.gradient_checkpointing is deprecated; set encoders.<name>.gradient_checkpointing: true "
            "in the recipe, or call encoder.set_grad_checkpointing(True) on a model built without one",
            FutureWarning,
            stacklevel=2,
        )
        available = list(trainer.model.encoders)
        for name in self.encoders:
            if name not in available:
                raise ValueError(
                    f"trainer.gradient_checkpointing names encoder '{name}', but the model's encoders are {available}"
                )
            enable_gradient_checkpointing(trainer.model.encoders[name], f"trainer.gradient_checkpointing ({name})")
        trainer.log(f"gradient checkpointing: {', '.join(self.encoders)}")
