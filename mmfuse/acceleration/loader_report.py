"""Say at the start of a fit how the training data is loaded, and what the machine would allow."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mmfuse.engine.callbacks import Callback

if TYPE_CHECKING:
    from mmfuse.engine.trainer import Trainer

__all__ = ["LoaderReport", "suggested_workers"]


def suggested_workers(cpus: int, processes: int = 1) -> int:
    """Worker processes per training process that leave one core per process for the step."""
    return max(0, min(8, cpus // max(processes, 1) - 1))


class LoaderReport(Callback):
    def on_fit_start(self, trainer: "Trainer") -> None:
        loader = trainer.train_loader
        data = trainer.data
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = int(getattr(loader, "num_workers", data.num_workers))
        dataset = trainer.train_dataset
        # a manifest dataset has a sample cache (None when off); other datasets have none to offer
        cache = getattr(dataset.sample_cache, "mode", "off") if hasattr(dataset, "sample_cache") else None
        parts = [
            f"{workers} worker process(es)",
            f"prefetch {getattr(loader, 'prefetch_factor', None) or '-'}",
            f"pin_memory {'on' if getattr(loader, 'pin_memory', False) else 'off'}",
            *([f"sample cache {cache}"] if cache is not None else []),
            f"{cpus} CPU core(s) for {trainer.context.world_size} process(es)",
        ]
        line = "data loading: " + ", ".join(parts)
        best = suggested_workers(cpus, trainer.context.world_size)
        if workers == 0 and best > 0 and cache == "off":
            line += f" (data.num_workers={best} or data.cache=auto would take decoding off the step)"
        trainer.log(line)
