"""``mmfuse cache info|clear``: the preprocessed-sample cache on disk."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "show or clear the disk cache of preprocessed samples"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["info", "clear"], help="info: what is cached; clear: delete it")
    parser.add_argument(
        "--dir", type=Path, help="cache folder (default: $MMFUSE_CACHE_DIR, else ~/.cache/mmfuse; a recipe's data.cache_dir)"
    )
    parser.add_argument("--kind", choices=["samples"], help="only this kind of cached data")


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


def run(args: argparse.Namespace) -> int:
    from mmfuse.cache.inventory import clear_cache, list_namespaces
    from mmfuse.cache.samples import default_cache_root

    root = args.dir or default_cache_root()
    if args.action == "clear":
        removed = clear_cache(root, args.kind)
        print(f"removed {removed} cache folder(s) from {root}")
        return 0
    spaces = [space for space in list_namespaces(root) if args.kind in (None, space.kind)]
    print(f"cache: {root}")
    if not spaces:
        print("  (empty)")
        return 0
    for space in spaces:
        leftover = f", {space.partial} partial file(s) from interrupted writers" if space.partial else ""
        print(f"  {space.kind:<8} {space.folder.name}  {space.label:<40} {space.shards:>4} shard(s)  {_size(space.bytes):>10}{leftover}")
    total = sum(space.bytes for space in spaces)
    print(f"  total {_size(total)} in {len(spaces)} folder(s)")
    return 0
