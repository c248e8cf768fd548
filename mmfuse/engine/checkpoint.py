"""Atomic training checkpoints: a folder per checkpoint, written in full or not at all.

``<run_dir>/checkpoints/step-00000120/`` holds

- ``model.safetensors``: the model weights (no pickle), written by
  :func:`mmfuse.weights.write_state_dict` exactly as a model folder's are: tied weights stored
  once, views of a shared buffer (non-contiguous slices) as their own copies;
- ``state.pt``: optimizer, scheduler, scaler, RNG, callback and data-position state, saved with
  ``torch.save`` as plain containers of tensors / numbers / strings so that it loads with
  ``torch.load(weights_only=True)`` (nothing else is ever used to read it);
- ``meta.json``: step, epoch, the weights' SHA-256 and the tied-weight aliases.

``trainer.strategy: fsdp`` writes sharded checkpoints instead: ``shards/`` (model and optimizer,
one file per rank) in place of ``model.safetensors``, see :mod:`mmfuse.engine.sharded_checkpoint`.

Each checkpoint is written into a hidden temporary folder, every file is fsync'ed, then the folder
is renamed into place and the parent fsync'ed: a crash leaves either the complete new checkpoint or
none, and the previous ones stay loadable. A checkpoint that fails to load (truncated by a full
disk, say) is skipped with a warning in favour of the one before it.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmfuse.atomic import replace_folder, write_text_synced
from mmfuse.weights import WeightsError, load_state_strictly, read_state_dict, write_state_dict

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "checkpoint_name",
    "save_checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "read_checkpoint",
    "find_resumable",
    "load_model_weights",
    "remove_leftovers",
]

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
SHARDS_DIR = "shards"
_PREFIX = "step-"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or unreadable."""


@dataclass
class Checkpoint:
    """A checkpoint read back from disk (weights already verified). A sharded checkpoint's
    weights stay in its ``shards/`` (``weights`` is empty, ``sharded`` True)."""

    path: Path
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    meta: dict[str, Any]
    sharded: bool = False


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def save_checkpoint(
    folder: Path, step: int, model: nn.Module, state: dict[str, Any], meta: dict[str, Any]
) -> Path:
    """Write one checkpoint atomically into ``folder``; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(step)
    temporary = folder / f".tmp-{final.name}-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    written = write_state_dict(model, temporary / WEIGHTS_FILE)  # fsyncs the file
    meta = {**meta, "weights_sha256": written["sha256"], "aliases": written["aliases"]}
    with open(temporary / STATE_FILE, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    write_text_synced(temporary / META_FILE, json.dumps({**meta, "step": step}, indent=2))
    replace_folder(temporary, final)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoint folders in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def prune_checkpoints(folder: Path, keep_last: int, protect: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Delete all but the newest ``keep_last`` checkpoints, never those named in ``protect``."""
    existing = list_checkpoints(folder)
    for path in existing[: max(0, len(existing) - keep_last)]:
        if path.name not in protect:
            shutil.rmtree(path, ignore_errors=True)


def read_checkpoint(path: Path) -> Checkpoint:
    """Read and verify one checkpoint folder; raise CheckpointError naming what is wrong."""
    path = Path(path)
    sharded = (path / SHARDS_DIR).is_dir()
    for name in (SHARDS_DIR + "/.metadata" if sharded else WEIGHTS_FILE, STATE_FILE, META_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: missing {name}")
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        weights = {} if sharded else read_state_dict(path / WEIGHTS_FILE, meta.get("weights_sha256"), meta.get("aliases"))
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding error means the same thing: this checkpoint is unusable
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"{path}: {STATE_FILE} or {META_FILE} does not hold a mapping")
    return Checkpoint(path, weights, state, meta, sharded)


def find_resumable(location: Path) -> Checkpoint:
    """The newest loadable checkpoint under a run dir, a checkpoints folder, or one checkpoint folder.

    Unreadable checkpoints are skipped with a warning; CheckpointError if none is usable.
    """
    location = Path(location)
    if (location / META_FILE).exists() or (location / WEIGHTS_FILE).exists():
        return read_checkpoint(location)
    folder = location / "checkpoints" if (location / "checkpoints").is_dir() else location
    candidates = list_checkpoints(folder)
    if not candidates:
        raise CheckpointError(
            f"no checkpoint found under {location}; pass a run folder (with checkpoints/) or a checkpoint folder"
        )
    for path in reversed(candidates):
        try:
            return read_checkpoint(path)
        except CheckpointError as exc:
            warnings.warn(f"skipping checkpoint: {exc}; falling back to the previous one", stacklevel=2)
    raise CheckpointError(f"every checkpoint under {folder} is unreadable")


def load_model_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Copy a checkpoint's weights into ``model`` strictly (every key, every shape); a mismatch is
    a CheckpointError listing all of them."""
    try:
        load_state_strictly(model, weights, path / WEIGHTS_FILE)
    except WeightsError as exc:
        raise CheckpointError(f"cannot resume from {path}: {exc}") from exc


#: what an interrupted write leaves behind: a checkpoint being written, a replaced checkpoint not
#: yet deleted (:func:`mmfuse.atomic.replace_folder`), a model folder being written or replaced
LEFTOVER_PATTERNS = {"checkpoints": (".tmp-step-*", ".step-*.old-*"), ".": (".model.*.tmp", ".model.old-*")}


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Delete the temporary folders interrupted writes left in a run folder; return them."""
    removed = []
    for sub, patterns in LEFTOVER_PATTERNS.items():
        folder = Path(run_dir) / sub
        if not folder.is_dir():
            continue
        for pattern in patterns:
            for path in sorted(folder.glob(pattern)):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                removed.append(path)
    return removed
