"""Per-module forward and backward timers, attached with hooks (nothing in the model changes).

Forward: a pre- and a post-hook on each encoder, the fusion head and each task. Backward of an
encoder: from the moment a gradient reaches its output (a tensor hook on ``pooled`` / ``tokens``)
to the moment the last of its parameters' gradients is accumulated (post-accumulate-grad hooks).
The autograd engine runs one module's backward after another on the CPU, so these intervals do
not overlap much; on a GPU every hook synchronises the device, which slows the profiled steps a
little but attributes the time correctly.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Callable

import torch
from torch import nn

from mmfuse.contracts import EncoderOutput

__all__ = ["ModuleClock"]


class ModuleClock:
    """Accumulates ``forward[name]`` / ``backward[name]`` seconds for the parts of a FusedModel."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.sync: Callable[[], None] = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        self.forward: dict[str, float] = defaultdict(float)
        self.backward: dict[str, float] = defaultdict(float)
        self._started: dict[str, float] = {}
        self._grad_arrived: dict[str, float] = {}
        self._grad_done: dict[str, float] = {}
        self._handles: list[Any] = []
        parts: dict[str, nn.Module] = {f"encoder/{n}": m for n, m in model.encoders.items()}  # type: ignore[attr-defined]
        parts["fusion"] = model.fusion  # type: ignore[assignment]
        parts.update({f"task/{n}": m for n, m in model.tasks.items()})  # type: ignore[attr-defined]
        for name, module in parts.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))
            if name.startswith("encoder/"):
                for parameter in (p for p in module.parameters() if p.requires_grad):
                    self._handles.append(parameter.register_post_accumulate_grad_hook(self._accumulated(name)))

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def _pre(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            self._started[name] = self.now()

        return hook

    def _post(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.forward[name] += self.now() - self._started.pop(name)
            if isinstance(output, EncoderOutput):
                for tensor in (output.pooled, output.tokens):
                    if tensor.requires_grad:
                        tensor.register_hook(self._arrived(name))

        return hook

    def _arrived(self, name: str) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            self._grad_arrived.setdefault(name, self.now())

        return hook

    def _accumulated(self, name: str) -> Callable[[torch.Tensor], None]:
        def hook(parameter: torch.Tensor) -> None:
            self._grad_done[name] = self.now()

        return hook

    def end_backward(self) -> None:
        """Book this step's encoder backward intervals (call after ``loss.backward()``)."""
        for name, arrived in self._grad_arrived.items():
            done = self._grad_done.get(name)
            if done is not None and done >= arrived:
                self.backward[name] += done - arrived
        self._grad_arrived.clear()
        self._grad_done.clear()

    def reset(self) -> None:
        self.forward.clear()
        self.backward.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
