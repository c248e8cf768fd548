"""A module's state dict as one safetensors file: tied tensors stored once, a SHA-256 to detect
tampering, and a strict load that lists every missing key, unexpected key and shape mismatch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from mmfuse.atomic import fsync_file

__all__ = ["WeightsError", "write_state_dict", "read_state_dict", "load_state_strictly", "flat_state_dict", "sha256_of"]


class WeightsError(ValueError):
    """A weights file that is missing, corrupt, modified, or does not fit the module."""


def write_state_dict(module: nn.Module, file: Path) -> dict[str, Any]:
    """Save ``module.state_dict()`` to ``file``; return ``{sha256, bytes, aliases}``.

    Entries that are the same tensor (tied weights) are stored once; ``aliases`` maps each dropped
    key to the key that holds its data."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    storages: set[int] = set()
    for key, tensor in flat_state_dict(module).items():
        tensor = tensor.detach()
        storage = tensor.untyped_storage().data_ptr()
        identity = (storage, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype, tensor.device)
        if tensor.numel() and identity in seen:
            aliases[key] = seen[identity]
            continue
        seen[identity] = key
        # safetensors refuses tensors that share memory; a partial view gets its own copy
        tensor = tensor.clone() if storage in storages and tensor.numel() else tensor
        storages.add(storage)
        tensors[key] = tensor.to("cpu").contiguous()
    save_file(tensors, str(file), metadata={"format": "pt", "mmfuse_aliases": json.dumps(aliases)})
    fsync_file(file)
    return {"sha256": sha256_of(file), "bytes": file.stat().st_size, "aliases": aliases}


def read_state_dict(file: Path, sha256: str | None = None, aliases: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict written by :func:`write_state_dict`, checking ``sha256`` when given."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        raise WeightsError(f"{file}: the weights file is missing")
    if sha256 and sha256_of(file) != sha256:
        raise WeightsError(
            f"{file}: the weights file is corrupt or was modified (its checksum differs from the one "
            f"recorded when it was saved); copy the model folder again"
        )
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{file}: cannot read the weights ({type(exc).__name__}: {exc})") from exc
    for alias, original in (aliases or {}).items():
        if original in state:
            state[alias] = state[original]
    return state


#: separates a tensor-subclass entry (a quantized weight) from the name of one of its inner tensors
INNER_TENSOR_SEPARATOR = "::"


def flat_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every tensor subclass (e.g. a torchao int8 weight) split into
    its plain inner tensors, keyed ``<key>::<inner>`` (``fc.weight::qdata``, ``fc.weight::scale``),
    so that safetensors can store it and a model quantized the same way can load it back."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    flat: dict[str, torch.Tensor] = {}
    for key, tensor in module.state_dict().items():
        if is_traceable_wrapper_subclass(tensor):
            names, _ = tensor.__tensor_flatten__()  # type: ignore[attr-defined]
            for name in names:
                flat[f"{key}{INNER_TENSOR_SEPARATOR}{name}"] = getattr(tensor, name)
        else:
            flat[key] = tensor
    return flat


def load_state_strictly(module: nn.Module, state: Mapping[str, torch.Tensor], file: Path) -> None:
    """``module.load_state_dict(state, strict=True)``, with every mismatch listed up front.

    A module holding tensor subclasses (quantized weights) is loaded inner tensor by inner tensor
    (see :func:`flat_state_dict`)."""
    expected = flat_state_dict(module)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched[:8])}")
    if problems:
        raise WeightsError(
            f"{file}: the weights do not fit the model rebuilt from recipe.yaml; "
            + "; ".join(problems)
            + ". The recipe or a plugin's architecture changed since the folder was saved."
        )
    if any(INNER_TENSOR_SEPARATOR in key for key in expected):
        with torch.no_grad():
            for key, target in expected.items():
                target.copy_(state[key])
        return
    module.load_state_dict(dict(state), strict=True)


def sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
