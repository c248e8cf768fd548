"""Running an encoder on the rows of a batch that have its modality, and scattering its output back.

A row whose sample lacks a modality (``present`` False) used to be encoded anyway and masked after:
wasted compute, and wrong in train mode for encoders that mix rows (BatchNorm normalises with the
statistics of the whole batch, so blank rows shifted the present rows' outputs). Here the encoder
sees only the present rows:

* every input tensor (``Tensor[B, ...]`` by the contract) is indexed down to the present rows, the
  encoder runs on those, and ``tokens`` / ``mask`` / ``pooled`` are scattered back into full-batch
  tensors. Absent rows get zeros and an all-False token mask, so they stay masked for every head;
* a batch in which no row has the modality skips the encoder. Its output is all zeros, but while
  autograd records and the encoder has trainable parameters, the zeros are tied to those
  parameters by a zero-valued term (as ``mmfuse.engine.step.zero_loss`` does for an empty batch):
  the backward gives them zero gradients, exactly what running the encoder on masked rows gave.
  Under DistributedDataParallel this is required: every rank must produce gradients for the same
  parameters, and one rank skipping an encoder that another rank runs would break the reduction;
* a sub-batch of one row runs the encoder's BatchNorm layers with their running statistics: one
  sample's batch statistics are meaningless, and raise on ``1x1`` feature maps.

The static path (every row through the encoder, as before) remains for graph capture: exports
(``torch.export``, ONNX, ``torch.jit.trace``) cannot take data-dependent row counts, so tracing
uses it automatically; ``FusedModel.gather_present_rows = False`` selects it explicitly.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Mapping

import torch
from torch import Tensor, nn

from mmfuse.contracts import Encoder, EncoderOutput

__all__ = ["encode_present_rows", "is_capturing_graph", "skipped_output"]


def is_capturing_graph() -> bool:
    """True while torch.export, the ONNX exporter or ``torch.jit.trace`` records the model: those
    graphs need shapes that do not depend on the data."""
    return bool(
        torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
    )


def encode_present_rows(
    encoder: Encoder, inputs: Mapping[str, Tensor], present: Tensor, name: str, *, always_forward: bool = False
) -> EncoderOutput:
    """``encoder`` run on the rows where ``present`` is True, scattered back to ``present``'s batch.

    ``name`` (the encoder's slot) only names it in the warning given when its inputs do not all
    have the batch as first dimension (then every row runs, as the static path does).

    ``always_forward``: the encoder's forward (and backward) must run even when no row has its
    modality, as under FSDP, where each forward all-gathers the encoder's parameters with the
    other processes. It then runs on the first row in eval mode (no BatchNorm statistics
    change, no dropout draw) and its output enters the result only multiplied by zero, which
    keeps the backward's gradient collectives in step with the other processes."""
    size = int(present.shape[0])
    if any(not isinstance(t, Tensor) or t.ndim == 0 or t.shape[0] != size for t in inputs.values()):
        _warn_not_batch_first(name, inputs, size)
        return encoder(dict(inputs))
    # one host sync: how many rows run decides the shapes (and whether anything runs at all)
    rows = present.to(torch.bool).nonzero().squeeze(1)
    count = int(rows.numel())
    if count == size:
        return _run(encoder, dict(inputs), count)
    if count == 0:
        if always_forward:
            return _forward_without_rows(encoder, inputs, size, _device(inputs, present))
        return skipped_output(encoder, size, _device(inputs, present))
    rows = rows.to(_device(inputs, present))
    output = _run(encoder, {key: tensor.index_select(0, rows) for key, tensor in inputs.items()}, count)
    return _scatter(output, rows, size)


def skipped_output(encoder: Encoder, size: int, device: torch.device, *, anchored: bool = True) -> EncoderOutput:
    """The output of an encoder that no row of a batch of ``size`` needs: zeros, one token each,
    all masked; tied to the encoder's trainable parameters by a zero while autograd records
    (``anchored``)."""
    dim = int(encoder.output_dim)
    dtype = _floating_dtype(encoder, device)
    tokens = torch.zeros(size, 1, dim, dtype=dtype, device=device)
    pooled = torch.zeros(size, dim, dtype=dtype, device=device)
    trainable = [p for p in encoder.parameters() if p.requires_grad] if anchored and torch.is_grad_enabled() else []
    if trainable:
        anchor = torch.stack([p.sum().to(dtype) for p in trainable]).sum() * 0.0
        tokens, pooled = tokens + anchor, pooled + anchor
    return EncoderOutput(tokens=tokens, mask=torch.zeros(size, 1, dtype=torch.bool, device=device), pooled=pooled)


def _forward_without_rows(encoder: Encoder, inputs: Mapping[str, Tensor], size: int, device: torch.device) -> EncoderOutput:
    """:func:`skipped_output`'s zeros, tied by a zero to a real forward of the first row (eval mode)."""
    training = encoder.training
    encoder.eval()
    try:
        output = encoder({key: tensor[:1] for key, tensor in inputs.items()})
    finally:
        encoder.train(training)
    skipped = skipped_output(encoder, size, device, anchored=False)
    anchor = (output.pooled.float().sum() + output.tokens.float().sum()) * 0.0
    return EncoderOutput(
        tokens=skipped.tokens + anchor.to(skipped.tokens.dtype),
        mask=skipped.mask,
        pooled=skipped.pooled + anchor.to(skipped.pooled.dtype),
    )


def _run(encoder: Encoder, inputs: dict[str, Tensor], rows: int) -> EncoderOutput:
    if rows == 1 and encoder.training:
        with _batchnorm_uses_running_statistics(encoder):
            return encoder(inputs)
    return encoder(inputs)


@contextlib.contextmanager
def _batchnorm_uses_running_statistics(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers in training mode that track running statistics switch to eval mode."""
    switched = [
        layer
        for layer in module.modules()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.training and layer.track_running_stats
    ]
    for layer in switched:
        layer.eval()
    try:
        yield
    finally:
        for layer in switched:
            layer.train()


def _scatter(output: EncoderOutput, rows: Tensor, size: int) -> EncoderOutput:
    """Full-batch tensors with the encoded rows at ``rows`` and zeros (mask False) elsewhere."""

    def full(values: Tensor) -> Tensor:
        blank = values.new_zeros((size, *values.shape[1:]))
        return blank.index_copy(0, rows.to(values.device), values)

    extras = {key: full(value) for key, value in output.extras.items()}  # offsets, word ids (text_windows)
    return EncoderOutput(tokens=full(output.tokens), mask=full(output.mask), pooled=full(output.pooled), extras=extras)


def _device(inputs: Mapping[str, Tensor], present: Tensor) -> torch.device:
    return next((t.device for t in inputs.values() if isinstance(t, Tensor)), present.device)


def _floating_dtype(module: nn.Module, device: torch.device) -> torch.dtype:
    """What the encoder would have returned: the autocast dtype, else its parameters' dtype."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.get_default_dtype())


_warned: set[str] = set()


def _warn_not_batch_first(name: str, inputs: Mapping[str, Tensor], size: int) -> None:
    if name in _warned:
        return
    _warned.add(name)
    shapes = {key: tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for key, t in inputs.items()}
    warnings.warn(
        f"encoder '{name}': its inputs {shapes} are not all Tensor[{size}, ...] (the batch first, as "
        f"mmfuse.contracts requires), so every row runs through it, absent ones included",
        stacklevel=3,
    )
