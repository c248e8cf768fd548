"""A folder of safetensors shards holding named tensors per key, safe for concurrent writers.

Each process buffers new entries and writes them as a shard of its own: a temporary file,
fsync'ed, then renamed into place (``os.replace`` is atomic), so a reader sees a shard complete or
not at all, and a killed writer leaves at most a ``*.partial`` file that readers ignore. Two
processes (DDP ranks, DataLoader workers, a concurrent run) that compute the same key write the
same tensors into their own shards; either copy is served. Readers memory-map shards with
``safe_open`` and pick up shards other processes wrote when they miss a key.

Tensor names in a shard are ``<key>/<tensor name>``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from torch import Tensor

from mmfuse.atomic import fsync_dir, fsync_file

__all__ = ["ShardStore", "folder_usage", "count_entries", "SHARD_SUFFIX", "PARTIAL_SUFFIX", "IDENTITY_FILE", "write_identity"]

log = logging.getLogger("mmfuse.cache")

SHARD_SUFFIX = ".safetensors"
PARTIAL_SUFFIX = ".partial"
IDENTITY_FILE = "identity.json"

#: a process writes a shard once it buffers this many entries or bytes
_FLUSH_ENTRIES = 64
_FLUSH_BYTES = 64 << 20


def write_identity(folder: Path, identity: dict[str, Any]) -> None:
    """Describe what a namespace folder holds (read by ``mmfuse cache info``); atomic."""
    target = folder / IDENTITY_FILE
    if target.exists():
        return
    staging = folder / f".{IDENTITY_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"
    staging.write_text(json.dumps(identity, indent=1, sort_keys=True, default=str), encoding="utf-8")
    fsync_file(staging)
    os.replace(staging, target)


class ShardStore:
    """Entries ``key -> {name: Tensor}`` in the shards of ``folder`` (created on first write)."""

    def __init__(self, folder: Path, *, flush_entries: int = _FLUSH_ENTRIES) -> None:
        self.folder = Path(folder)
        self.flush_entries = flush_entries
        self._pid = -1
        self._reset()

    def __getstate__(self) -> dict[str, Any]:  # handles and buffers stay in their process
        return {"folder": self.folder, "flush_entries": self.flush_entries}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"], flush_entries=state["flush_entries"])

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._index: dict[str, tuple[str, list[str]]] = {}
        self._handles: dict[str, Any] = {}
        self._seen: set[str] = set()
        self._folder_mtime = -1
        self._buffer: dict[str, dict[str, Tensor]] = {}
        self._buffered_bytes = 0
        self._finalizer: Any = None

    def _own_process(self) -> None:
        if self._pid != os.getpid():  # forked into a worker: its parent's handles are not ours
            self._reset()

    # ------------------------------------------------------------------ reading

    def refresh(self) -> int:
        """Index shards written since the last look; return how many were added."""
        self._own_process()
        try:
            mtime = self.folder.stat().st_mtime_ns
        except FileNotFoundError:
            return 0
        if mtime == self._folder_mtime:
            return 0
        self._folder_mtime = mtime
        from safetensors import safe_open

        added = 0
        for shard in sorted(self.folder.glob(f"*{SHARD_SUFFIX}")):
            if shard.name in self._seen:
                continue
            self._seen.add(shard.name)
            try:
                handle = safe_open(str(shard), framework="pt")
            except Exception as exc:  # noqa: BLE001 - a damaged shard is skipped, never fatal
                log.warning("cache shard %s is unreadable and is ignored (%s); `mmfuse cache clear` removes it", shard, exc)
                continue
            self._handles[shard.name] = handle
            entries: dict[str, list[str]] = {}
            for name in handle.keys():
                key, _, tensor_name = name.partition("/")
                entries.setdefault(key, []).append(tensor_name)
            for key, names in entries.items():
                self._index.setdefault(key, (shard.name, names))
            added += 1
        return added

    def get(self, key: str) -> dict[str, Tensor] | None:
        self._own_process()
        buffered = self._buffer.get(key)
        if buffered is not None:
            return {name: tensor.clone() for name, tensor in buffered.items()}
        where = self._index.get(key)
        if where is None and self.refresh():
            where = self._index.get(key)
        if where is None:
            return None
        handle = self._handles[where[0]]
        return {name: handle.get_tensor(f"{key}/{name}") for name in where[1]}

    def keys(self) -> set[str]:
        self.refresh()
        return set(self._index) | set(self._buffer)

    # ------------------------------------------------------------------ writing

    def put(self, key: str, tensors: dict[str, Tensor]) -> None:
        self._own_process()
        if key in self._index or key in self._buffer:
            return
        if self._finalizer is None:
            # DataLoader workers and the main process run multiprocessing's exit finalizers, so
            # the last partial buffer of an epoch is written when the process ends
            from multiprocessing import util

            self._finalizer = util.Finalize(self, ShardStore.flush, args=(self,), exitpriority=10)
        stored = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
        self._buffer[key] = stored
        self._buffered_bytes += sum(t.numel() * t.element_size() for t in stored.values())
        if len(self._buffer) >= self.flush_entries or self._buffered_bytes >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> Path | None:
        """Write the buffered entries as one new shard (atomically); return its path."""
        if self._pid != os.getpid() or not self._buffer:
            return None
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        stem = f"shard-{time.time_ns():x}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging = self.folder / f".{stem}{PARTIAL_SUFFIX}"
        target = self.folder / f"{stem}{SHARD_SUFFIX}"
        flat = {f"{key}/{name}": tensor for key, entry in self._buffer.items() for name, tensor in entry.items()}
        save_file(flat, str(staging), metadata={"format": "pt", "mmfuse_cache": "1"})
        fsync_file(staging)
        os.replace(staging, target)
        fsync_dir(self.folder)
        self._buffer.clear()
        self._buffered_bytes = 0
        return target


def folder_usage(folder: Path) -> dict[str, int]:
    """Shards, leftover partial files and bytes under ``folder``."""
    shards = list(folder.glob(f"*{SHARD_SUFFIX}"))
    partial = list(folder.glob(f".*{PARTIAL_SUFFIX}"))
    return {
        "shards": len(shards),
        "partial": len(partial),
        "bytes": sum(path.stat().st_size for path in shards),
    }


def count_entries(folder: Path) -> int:
    """Distinct keys stored in the shards of ``folder`` (reads only the headers)."""
    from safetensors import safe_open

    keys: set[str] = set()
    for shard in folder.glob(f"*{SHARD_SUFFIX}"):
        try:
            with safe_open(str(shard), framework="pt") as handle:
                keys.update(name.partition("/")[0] for name in handle.keys())
        except Exception:  # noqa: BLE001 - reported as unreadable by info's caller
            continue
    return len(keys)
