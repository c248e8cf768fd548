"""What a cache folder holds, and clearing it (``mmfuse cache info|clear``). Imports no torch
until shards are counted."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from mmfuse.cache.shards import IDENTITY_FILE, PARTIAL_SUFFIX, SHARD_SUFFIX

__all__ = ["Namespace", "list_namespaces", "clear_cache"]

#: kinds of cached data on disk, one sub-folder each (the feature cache lives in memory)
KINDS = ("samples",)


@dataclass
class Namespace:
    kind: str  # "samples"
    folder: Path
    label: str  # what wrote it: "<encoder>: <preprocessor class>"
    shards: int
    partial: int
    bytes: int


def _label(folder: Path) -> str:
    try:
        identity = json.loads((folder / IDENTITY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "(no identity.json)"
    what = identity.get("preprocessor") or identity.get("encoder_class") or "?"
    return f"{identity.get('encoder', '?')}: {what.rsplit('.', 1)[-1]}"


def list_namespaces(root: Path) -> list[Namespace]:
    found = []
    for kind in KINDS:
        base = root / kind
        if not base.is_dir():
            continue
        for folder in sorted(path for path in base.iterdir() if path.is_dir()):
            shards = list(folder.glob(f"*{SHARD_SUFFIX}"))
            found.append(
                Namespace(
                    kind=kind,
                    folder=folder,
                    label=_label(folder),
                    shards=len(shards),
                    partial=len(list(folder.glob(f".*{PARTIAL_SUFFIX}"))),
                    bytes=sum(path.stat().st_size for path in shards),
                )
            )
    return found


def clear_cache(root: Path, kind: str | None = None) -> int:
    """Delete every namespace (or those of ``kind``); return how many were removed."""
    removed = 0
    for namespace in list_namespaces(root):
        if kind is None or namespace.kind == kind:
            shutil.rmtree(namespace.folder, ignore_errors=True)
            removed += 1
    return removed
