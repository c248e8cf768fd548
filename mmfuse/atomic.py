"""Crash-safe writes: fsync'ed files, and folders that appear complete or not at all.

A model folder and a training checkpoint are both written into a temporary sibling folder and
then swapped into place with :func:`replace_folder`, so a reader (or a resume after a crash)
never sees a half-written one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["fsync_file", "fsync_dir", "write_text_synced", "replace_folder"]


def fsync_file(file: Path) -> None:
    with open(file, "rb+") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Persist a folder's entries (a rename); directories can be fsync'ed on POSIX only, elsewhere
    the rename is the best we get."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_text_synced(file: Path, text: str) -> None:
    file.write_text(text, encoding="utf-8")
    fsync_file(file)


def replace_folder(staging: Path, target: Path) -> None:
    """Move the fully written ``staging`` folder to ``target``, replacing an existing one: the old
    folder is moved aside first and deleted only once the new one is in place."""
    fsync_dir(staging)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
    fsync_dir(target.parent)
