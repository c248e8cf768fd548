"""The share of each training epoch spent waiting for the next batch, in the training log.

:class:`DataWaitLogger` times every ``next()`` on the trainer's training DataLoader (it wraps the
loader once, at the start of the fit; everything else about the loader is passed through) and,
at the end of each epoch, adds ``train/data_wait_share`` to the epoch's metrics row (so it lands
in ``metrics.csv``) and prints one line. A share above a few percent means the model waits for
decoding: ``mmfuse profile`` says which setting helps.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterator

from mmfuse.engine.callbacks import Callback

if TYPE_CHECKING:
    from mmfuse.engine.trainer import Trainer

__all__ = ["DataWaitLogger", "TimedLoader"]


class TimedLoader:
    """A DataLoader whose iterators add the seconds spent in ``next()`` to ``waited``."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.waited = 0.0

    def __getattr__(self, name: str) -> Any:  # sampler, batch_size, generator, ... of the loader
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self.loader)
        while True:
            started = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.waited += time.perf_counter() - started
            yield batch


class DataWaitLogger(Callback):
    """Adds ``train/data_wait_share`` to each epoch's row and logs it (see the module docstring)."""

    def __init__(self) -> None:
        self.timed: TimedLoader | None = None
        self._epoch_start = self._last_step = 0.0
        self._waited_at_start = 0.0
        self.shares: list[float] = []

    def on_fit_start(self, trainer: "Trainer") -> None:
        loader = trainer.train_loader
        self.timed = loader if isinstance(loader, TimedLoader) else TimedLoader(loader)
        trainer.train_loader = self.timed  # type: ignore[assignment]

    def on_train_epoch_start(self, trainer: "Trainer") -> None:
        self._epoch_start = self._last_step = time.perf_counter()
        self._waited_at_start = self.timed.waited if self.timed is not None else 0.0

    def on_train_batch_end(self, trainer: "Trainer", loss: Any) -> None:
        self._last_step = time.perf_counter()

    def on_train_epoch_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if self.timed is None:
            return
        seconds = self._last_step - self._epoch_start  # the training steps, not the validation after them
        waited = self.timed.waited - self._waited_at_start
        share = waited / seconds if seconds > 0 else 0.0
        self.shares.append(share)
        metrics["train/data_wait_share"] = round(share, 4)
        trainer.log(f"epoch {trainer.epoch + 1}: waited {waited:.1f} s for data, {100 * share:.1f}% of its {seconds:.1f} s of training steps")

    def on_fit_end(self, trainer: "Trainer", result: Any) -> None:
        if self.timed is not None and trainer.train_loader is self.timed:
            trainer.train_loader = self.timed.loader  # type: ignore[assignment]
