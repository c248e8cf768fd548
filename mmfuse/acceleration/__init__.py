"""Faster training steps without changing the loop: ``torch.compile`` of the fused model with a
fallback, ``channels_last`` for convolutional encoders, and the DataLoader settings reported at
start. Installed as callbacks by :func:`acceleration_callbacks`. See docs/performance.md."""

from __future__ import annotations

from typing import Any

__all__ = ["acceleration_callbacks"]


def acceleration_callbacks(trainer: Any) -> list[Any]:
    """The callbacks a ``TrainerConfig`` asks for (compile, channels_last, gradient checkpointing)
    plus the loader report."""
    from mmfuse.acceleration.compile import CompileModel
    from mmfuse.acceleration.loader_report import LoaderReport
    from mmfuse.acceleration.memory_format import ChannelsLast

    callbacks: list[Any] = [LoaderReport()]
    if getattr(trainer, "channels_last", False):
        callbacks.append(ChannelsLast())
    if getattr(trainer, "gradient_checkpointing", None):
        from mmfuse.acceleration.checkpointing import GradientCheckpointing

        callbacks.append(GradientCheckpointing(trainer.gradient_checkpointing))
    if getattr(trainer, "compile", False):
        callbacks.append(CompileModel(dict(getattr(trainer, "compile_options", {}) or {})))
    return callbacks
