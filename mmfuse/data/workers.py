"""``data.num_workers: auto`` / ``data.prefetch_factor: auto``: DataLoader settings chosen from the
machine and the data, with the reason printed at the start of a fit. Imports no torch.

Worker processes pay off when each batch costs real CPU work that can overlap the training step:
decoding media files that are not cached. They cost a core each (taken from the step's threads,
:mod:`mmfuse.engine.threads`), start-up time, and a copy of every batch between processes. So
``auto`` chooses **no workers** when

- the process has no core to spare (cores of its CPU affinity, shared between the processes
  torchrun starts on this machine, minus one for the step);
- the dataset is tiny (fewer than :data:`TINY_ROWS` rows per process): starting workers costs
  more than they save;
- samples come from a cache that is already warm (its disk folders hold every value), or from
  ``data.cache: memory`` (kept in the main process; each worker would keep and fill its own);
- no encoder reads files (text, vectors): preprocessing is light;

and otherwise one worker per spare core, at most :data:`MAX_WORKERS`. Explicit numbers win.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["LoaderPlan", "plan_loader", "available_cores", "local_processes", "TINY_ROWS", "MAX_WORKERS"]

#: below this many training rows per process, ``auto`` uses no workers
TINY_ROWS = 256
#: ``auto`` never starts more workers than this per process
MAX_WORKERS = 8
#: with workers, ``prefetch_factor: auto`` keeps at least this many batches in flight in all
_BATCHES_IN_FLIGHT = 4


@dataclass(frozen=True)
class LoaderPlan:
    """What the DataLoader of one dataset uses, and why (``reason`` is printed at start)."""

    num_workers: int
    prefetch_factor: int | None  # None without workers (PyTorch refuses one then)
    persistent_workers: bool
    reason: str

    def describe(self) -> str:
        prefetch = f", prefetch {self.prefetch_factor}" if self.num_workers else ""
        persistent = ", persistent" if self.persistent_workers else ""
        return f"{self.num_workers} worker process(es){prefetch}{persistent} ({self.reason})"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def local_processes(environ: Mapping[str, str] | None = None) -> int:
    """Training processes torchrun starts on this machine (``LOCAL_WORLD_SIZE``; 1 without torchrun)."""
    environ = os.environ if environ is None else environ
    value = environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, int(value)) if value.isdigit() else 1


def plan_loader(
    data: Any,
    *,
    rows: int,
    decodes_files: bool | None,
    cache_warm: bool = False,
    train: bool = True,
    cores: int | None = None,
    processes: int | None = None,
) -> LoaderPlan:
    """The DataLoader settings for ``data`` (a :class:`~mmfuse.data.config.DataConfig`) over a
    dataset of ``rows`` rows. ``decodes_files``: some encoder reads media files (None: unknown, a
    dataset other than a manifest's); ``cache_warm``: the disk sample cache already holds every
    value; ``train``: the training loader (workers persist between epochs)."""
    cores = available_cores() if cores is None else cores
    processes = local_processes() if processes is None else processes
    if data.num_workers != "auto":
        workers, reason = int(data.num_workers), "data.num_workers"
    else:
        workers, reason = _auto_workers(data, rows, decodes_files, cache_warm, cores, processes)
    prefetch: int | None = None
    if workers:
        if data.prefetch_factor != "auto":
            prefetch = int(data.prefetch_factor)
        else:
            prefetch = max(2, math.ceil(_BATCHES_IN_FLIGHT / workers))
    return LoaderPlan(workers, prefetch, bool(workers and train and data.persistent_workers), reason)


def _auto_workers(
    data: Any, rows: int, decodes_files: bool | None, cache_warm: bool, cores: int, processes: int
) -> tuple[int, str]:
    share = max(1, cores // processes)
    machine = f"{cores} core(s)" + (f" for {processes} processes" if processes > 1 else "")
    spare = min(MAX_WORKERS, share - 1)
    if spare < 1:
        return 0, f"auto: {machine}, none to spare beside the training step"
    per_process = math.ceil(rows / processes)
    if per_process < TINY_ROWS:
        return 0, f"auto: {per_process} rows per process, too few for workers to pay off"
    if data.cache == "memory":
        return 0, "auto: data.cache=memory keeps samples in the main process"
    if cache_warm:
        return 0, "auto: the sample cache is warm, reading it is cheaper than passing batches between processes"
    if decodes_files is False:
        return 0, "auto: no encoder reads files, preprocessing is light"
    what = "media files decoded without a cache" if data.cache == "off" else "media files to decode (cold cache)"
    if decodes_files is None:
        what = "a dataset of unknown cost"
    return spare, f"auto: {what}; {machine}, one left for the training step"
