"""Say at the start of a fit how the training data is loaded: the workers chosen (and why), the
prefetch, pinned memory and the sample cache, in one line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmfuse.data.workers import available_cores, plan_loader
from mmfuse.engine.callbacks import Callback

if TYPE_CHECKING:
    from mmfuse.engine.trainer import Trainer

__all__ = ["LoaderReport", "loader_line"]


def loader_line(trainer: "Trainer") -> str:
    """``data loading: 1 worker process(es), prefetch 4, persistent (auto: ...), pin_memory off, sample cache disk``."""
    loader = trainer.train_loader
    plan = trainer.loader_plan
    dataset = trainer.train_dataset
    # a manifest dataset has a sample cache (None when off); other datasets have none to offer
    cache = getattr(dataset.sample_cache, "mode", "off") if hasattr(dataset, "sample_cache") else None
    parts = [
        plan.describe(),
        f"pin_memory {'on' if getattr(loader, 'pin_memory', False) else 'off'}",
        *([f"sample cache {cache}"] if cache is not None else []),
    ]
    line = "data loading: " + ", ".join(parts)
    if plan.reason == "data.num_workers" and plan.num_workers == 0 and cache == "off":
        auto = plan_loader(
            trainer.data.model_copy(update={"num_workers": "auto", "prefetch_factor": "auto"}),
            rows=len(dataset), decodes_files=None, processes=trainer.context.world_size,  # type: ignore[arg-type]
        )
        if auto.num_workers:
            line += (
                f" ({available_cores()} CPU core(s): data.num_workers=auto ({auto.num_workers}) or data.cache=auto "
                "would take decoding off the step)"
            )
    return line


class LoaderReport(Callback):
    def on_fit_start(self, trainer: "Trainer") -> None:
        trainer.log(loader_line(trainer))
