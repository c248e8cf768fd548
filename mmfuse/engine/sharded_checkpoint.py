"""Sharded training checkpoints of ``trainer.strategy: fsdp``, written with torch.distributed.checkpoint.

``<run_dir>/checkpoints/step-00000120/`` holds

- ``shards/``: the model and the optimizer as DCP writes them, one ``__<rank>_0.distcp`` file per
  process plus the ``.metadata`` index. Every rank writes its own shard of every parameter and of
  its optimizer state, so no process ever holds the whole model or optimizer;
- ``state.pt`` and ``meta.json`` as in a replicated checkpoint (:mod:`mmfuse.engine.checkpoint`):
  position, counters, lr schedule, callbacks and each rank's RNG, written by rank 0.
  ``meta.json`` has ``"sharded": true``.

The folder is written the same atomic way as a replicated checkpoint: every rank writes into one
hidden temporary folder (DCP fsyncs its files), rank 0 adds ``state.pt`` and ``meta.json`` and
renames the folder into place once all ranks are done. The run folder must therefore be on a
file system every rank sees (always true for one machine).

Reading the weights back needs no process group: :func:`load_full_weights` consolidates the
shards into an ordinary (unsharded) model on one process, which is how ``mmfuse.load`` opens a
sharded checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmfuse.atomic import replace_folder, write_text_synced
from mmfuse.engine.checkpoint import (
    META_FILE, SHARDS_DIR, STATE_FILE, CheckpointError, checkpoint_name, list_checkpoints,
)
from mmfuse.engine.distributed import DistributedContext

__all__ = [
    "is_sharded_checkpoint", "save_sharded_checkpoint", "load_sharded_model", "load_sharded_optimizer",
    "load_full_weights",
    "sharded_checkpoint_to_load",
]


def is_sharded_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint folder written by :func:`save_sharded_checkpoint`."""
    return (Path(path) / SHARDS_DIR / ".metadata").is_file()


def save_sharded_checkpoint(
    folder: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    meta: dict[str, Any],
    context: DistributedContext,
) -> Path:
    """Write one sharded checkpoint atomically into ``folder`` (a collective: every rank calls it
    with its own shards; ``state`` and ``meta`` are rank 0's); return its path."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = Path(folder) / checkpoint_name(step)
    temporary = final.with_name(f".tmp-{final.name}-sharded")  # one name on every rank
    if context.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        if temporary.exists():
            shutil.rmtree(temporary)
        temporary.mkdir()
    context.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save(
        {"model": model_state, "optimizer": optimizer_state},
        storage_writer=dcp.FileSystemWriter(temporary / SHARDS_DIR, sync_files=True),
    )
    if context.is_main:
        with open(temporary / STATE_FILE, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        record = {**meta, "step": step, "sharded": True, "world_size": context.world_size}
        write_text_synced(temporary / META_FILE, json.dumps(record, indent=2))
        replace_folder(temporary, final)
    context.barrier()
    return final


def load_sharded_model(path: Path, model: nn.Module) -> None:
    """Load a sharded checkpoint's model shards into a sharded ``model`` (a collective). DCP
    re-shards when the checkpoint was written by another number of processes."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(model)}
    _load(dcp, state, Path(path))
    set_model_state_dict(model, state["model"])


def load_sharded_optimizer(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a sharded checkpoint's optimizer shards into ``optimizer`` over the sharded ``model``
    (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    _load(dcp, state, Path(path))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def _load(dcp: Any, state: dict[str, Any], path: Path) -> None:
    try:
        dcp.load(state, checkpoint_id=path / SHARDS_DIR)
    except Exception as exc:  # a missing or mismatched key, a truncated shard
        raise CheckpointError(f"cannot load the sharded checkpoint {path}: {type(exc).__name__}: {exc}") from exc


def load_full_weights(path: Path, model: nn.Module) -> None:
    """Consolidate a sharded checkpoint's model shards into ``model``, an ordinary unsharded
    module on one process (no process group needed): every tensor of ``model.state_dict()`` is
    read in place. CheckpointError names what does not match."""
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    state = model.state_dict()
    try:
        with warnings.catch_warnings():  # "torch.distributed is ... uninitialized": as intended here
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({"model": state}, checkpoint_id=path / SHARDS_DIR, no_dist=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot consolidate the sharded checkpoint {path} into the model built from its recipe: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def sharded_checkpoint_to_load(path: Path) -> Path | None:
    """The sharded checkpoint that ``mmfuse.load(path)`` consolidates, or None when ``path`` is
    something else: ``path`` itself when it is a sharded checkpoint; for a run folder without a
    ``model/`` folder (a run stopped before saving it), its best checkpoint (``best.json``) when
    that is sharded, else its newest sharded checkpoint."""
    path = Path(path)
    if is_sharded_checkpoint(path):
        return path
    folder = path / "checkpoints"
    if (path / "model").exists() or not folder.is_dir():
        return None
    best = folder / "best.json"
    if best.is_file():
        try:
            name = json.loads(best.read_text(encoding="utf-8"))["name"]
        except (OSError, ValueError, KeyError, TypeError):
            name = None
        if name and is_sharded_checkpoint(folder / name):
            return folder / name
    sharded = [candidate for candidate in list_checkpoints(folder) if is_sharded_checkpoint(candidate)]
    return sharded[-1] if sharded else None
