"""Post-training quantization of a trained FusedModel through torchao, and what it changed.

``int8-dynamic``: int8 weights and int8 activations quantized on the fly per row (torchao's
``Int8DynamicActivationInt8WeightConfig``); ``int8-weight-only``: int8 weights, float activations
(``Int8WeightOnlyConfig``). Both quantize every ``nn.Linear`` (in encoders, fusion head and task
heads) with symmetric per-row scales; convolutions, embeddings and norms stay float. A linear
layer whose weight is tied to another module (an LM head sharing the embedding) is left float.

A quantized model is saved as an ordinary model folder whose ``mmfuse.json`` records the method
and the quantized modules, and whose ``model.safetensors`` holds each quantized weight as its
inner tensors (``fc.weight::qdata`` int8, ``fc.weight::scale``, ...; see
:func:`mmfuse.weights.flat_state_dict`). Loading rebuilds the float model, quantizes the same
modules the same way and copies the saved tensors in, so the loaded model computes exactly what
was measured.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from mmfuse.compression import QUANTIZATION_METHODS

__all__ = [
    "METHODS",
    "QuantizationError",
    "QuantizationReport",
    "quantizable_modules",
    "quantize_model",
    "time_forward",
]

METHODS = QUANTIZATION_METHODS

#: the attribute of a quantized FusedModel that mmfuse.artifact.save records in the manifest
QUANTIZATION_ATTRIBUTE = "mmfuse_quantization"


class QuantizationError(ValueError):
    """A quantization that cannot be done: unknown method, torchao missing, nothing to quantize."""


def _torchao_quantization() -> Any:
    import logging

    # torchao registers pytree constants the way older torch wanted; torch logs a deprecation
    # warning per enum at import, which is noise for a user of `mmfuse quantize`
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        import torchao.quantization as quantization
    except ImportError as exc:
        raise QuantizationError(
            "quantization needs the torchao package: pip install 'mmfuse[compress]' (or pip install torchao)"
        ) from exc
    return quantization


def quantizable_modules(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules that quantization would convert (tied weights excluded)."""
    owners: dict[int, int] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            owners[id(weight)] = owners.get(id(weight), 0) + 1
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and owners.get(id(module.weight), 0) == 1
    ]


def quantize_model(model: nn.Module, method: str, modules: Sequence[str] | None = None) -> list[str]:
    """Quantize ``model`` in place with ``method``; return the names of the quantized modules.

    ``modules`` (default: :func:`quantizable_modules`) is what a loaded folder passes, so that the
    same layers are quantized again."""
    if method not in METHODS:
        raise QuantizationError(f"unknown quantization method '{method}'; choose one of: {', '.join(METHODS)}")
    quantization = _torchao_quantization()
    names = list(modules) if modules is not None else quantizable_modules(model)
    if not names:
        raise QuantizationError("the model has no linear layer to quantize")
    known = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    unknown = sorted(set(names) - known)
    if unknown:
        raise QuantizationError(f"no linear layer named {', '.join(unknown[:5])} in this model")
    wanted = set(names)
    config = getattr(quantization, METHODS[method])()
    quantization.quantize_(model, config, filter_fn=lambda module, fqn: isinstance(module, nn.Linear) and fqn in wanted)
    setattr(model, QUANTIZATION_ATTRIBUTE, {"method": method, "modules": sorted(wanted)})
    return sorted(wanted)


def time_forward(model: nn.Module, batches: Sequence[Any], repeats: int = 3) -> float:
    """Median wall time (milliseconds) of one forward pass over all ``batches`` (one warm-up pass)."""
    with torch.inference_mode():
        for batch in batches[:1]:
            model(batch)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for batch in batches:
                model(batch)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


@dataclass
class QuantizationReport:
    """What quantization changed, measured on one manifest in one run (written next to the folder)."""

    method: str
    modules: list[str]
    rows: int
    float_bytes: int
    quantized_bytes: int
    float_ms: float
    quantized_ms: float
    float_metrics: dict[str, float] = field(default_factory=dict)
    quantized_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def metric_changes(self) -> dict[str, float]:
        return {k: self.quantized_metrics[k] - v for k, v in self.float_metrics.items() if k in self.quantized_metrics}

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "size_ratio": self.quantized_bytes / self.float_bytes if self.float_bytes else None,
            "latency_ratio": self.quantized_ms / self.float_ms if self.float_ms else None,
            "metric_changes": self.metric_changes,
        }

    def table(self) -> str:
        rows = [
            ("weights file (bytes)", f"{self.float_bytes:,}", f"{self.quantized_bytes:,}", f"x{self.quantized_bytes / max(self.float_bytes, 1):.2f}"),
            (f"forward, {self.rows} rows (ms)", f"{self.float_ms:.1f}", f"{self.quantized_ms:.1f}", f"x{self.quantized_ms / max(self.float_ms, 1e-9):.2f}"),
        ]
        rows += [(k, f"{v:.4f}", f"{self.quantized_metrics.get(k, float('nan')):.4f}", f"{self.metric_changes.get(k, float('nan')):+.4f}") for k, v in self.float_metrics.items() if k != "rows"]
        width = max(len(r[0]) for r in rows)
        lines = [f"{'':<{width}}  {'float':>12}  {self.method:>16}  {'change':>10}"]
        lines += [f"{a:<{width}}  {b:>12}  {c:>16}  {d:>10}" for a, b, c, d in rows]
        return "\n".join(lines)

