"""Lightning-style callbacks: optional training behaviour lives here, not in flags in the loop.

Every hook receives the :class:`~mmfuse.engine.trainer.Trainer` first; it reads the trainer's
``epoch``, ``global_step``, ``run_dir``, ``is_main`` and may call ``trainer.request_stop(reason)``
or ``trainer.save_checkpoint()``. Hooks run on every rank; write files only when
``trainer.is_main``. ``state_dict`` / ``load_state_dict`` travel inside checkpoints (plain data:
numbers, strings, lists, dicts, tensors), so a resumed run continues where it stopped.

Order of hooks in a fit::

    on_fit_start
      on_train_epoch_start
        on_train_batch_start    before the forward of each micro-batch that has rows (may edit it)
        on_before_optimizer_step  after the step's backward passes (gradients unscaled), before
                                  clipping and the optimizer step
        on_train_batch_end      after each optimizer step (one accumulated batch)
        on_log                  every trainer.log_every_steps steps
        on_validation_end       after each evaluation
      on_train_epoch_end        with the epoch's metrics row
      on_checkpoint             after each checkpoint is written
    on_fit_end                  (on_exception instead, when the fit raises)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmfuse.engine.checkpoint import prune_checkpoints
from mmfuse.engine.config import CheckpointConfig, EarlyStoppingConfig

if TYPE_CHECKING:
    from mmfuse.engine.trainer import FitResult, Trainer

__all__ = ["Callback", "EarlyStopping", "Checkpointing", "is_improvement", "build_early_stopping", "state_keys"]


class Callback:
    """Base class: override the hooks you need; all default to doing nothing."""

    @property
    def state_key(self) -> str:
        """Key of this callback's state in a checkpoint; override when two instances coexist."""
        return type(self).__qualname__

    def on_fit_start(self, trainer: "Trainer") -> None: ...

    def on_train_epoch_start(self, trainer: "Trainer") -> None: ...

    def on_train_batch_start(self, trainer: "Trainer", batch: dict[str, Any]) -> None:
        """Before the forward of one micro-batch (on the CPU, before it moves to the device); the
        batch (BATCH layout of mmfuse/contracts.py) may be changed in place. Not called for a
        batch with no rows to train on."""

    def on_before_optimizer_step(self, trainer: "Trainer") -> None:
        """After the backward passes of a step, with the gradients unscaled (fp16), before
        gradient clipping and ``optimizer.step()``: read or scale ``p.grad`` here."""

    def on_train_batch_end(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        """After an optimizer step. ``loss`` is a detached device tensor: do not ``.item()`` it
        every step (that waits for the device)."""

    def on_log(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        """Periodic training metrics: ``train/loss`` (mean since the last log), ``lr``, ``samples_per_sec``."""

    def on_validation_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...

    def on_train_epoch_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, trainer: "Trainer", path: Path) -> None: ...

    def on_fit_end(self, trainer: "Trainer", result: "FitResult") -> None: ...

    def on_exception(self, trainer: "Trainer", exception: BaseException) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def is_improvement(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """True when ``value`` beats ``best`` by more than ``min_delta`` (NaN never improves)."""
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _monitored(metrics: dict[str, float], monitor: str, who: str) -> float:
    if monitor not in metrics:
        raise KeyError(
            f"{who} monitors '{monitor}', which evaluation did not produce; available: "
            + ", ".join(sorted(metrics))
        )
    return float(metrics[monitor])


def state_keys(callbacks: list[Callback]) -> list[str]:
    """Each callback's key in a checkpoint, numbered when several callbacks share a key."""
    keys = [callback.state_key for callback in callbacks]
    return [key if keys.count(key) == 1 else f"{key}#{keys[:index].count(key)}" for index, key in enumerate(keys)]


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` evaluations."""

    def __init__(self, config: EarlyStoppingConfig) -> None:
        self.config = config
        self.best: float | None = None
        self.bad_evaluations = 0

    def on_validation_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        value = _monitored(metrics, self.config.monitor, "early stopping")
        if is_improvement(value, self.best, self.config.mode, self.config.min_delta):
            self.best = value
            self.bad_evaluations = 0
            return
        self.bad_evaluations += 1
        if self.bad_evaluations >= self.config.patience:
            trainer.log(
                f"early stopping: {self.config.monitor} has not improved on {self.best:.6g} "
                f"for {self.bad_evaluations} evaluations"
            )
            trainer.request_stop("early_stopping")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.bad_evaluations = int(state["bad_evaluations"])


def build_early_stopping(config: EarlyStoppingConfig) -> EarlyStopping:
    """Builder of the ``mmfuse/early_stopping`` callback."""
    return EarlyStopping(config)


class Checkpointing(Callback):
    """Checkpoint every N steps and at each new best ``monitor``; keep the last K plus the best.

    (The trainer itself checkpoints at each epoch end and whenever a fit stops.) The best
    checkpoint is named in ``checkpoints/best.json``.
    """

    def __init__(self, config: CheckpointConfig, monitor: str = "val/loss", mode: str = "min") -> None:
        self.config = config
        self.monitor = monitor
        self.mode = mode
        self.best_value: float | None = None
        self.best_name: str | None = None

    def on_train_batch_end(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        every = self.config.every_steps
        if every and trainer.global_step % every == 0:
            trainer.save_checkpoint()

    def on_validation_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if not self.config.keep_best:
            return
        value = _monitored(metrics, self.monitor, "checkpoint.keep_best")
        if not is_improvement(value, self.best_value, self.mode):
            return
        self.best_value = value
        path = trainer.save_checkpoint()
        self.best_name = path.name
        if trainer.is_main:
            record = {"name": self.best_name, "monitor": self.monitor, "value": value, "step": trainer.global_step}
            target = path.parent / "best.json"
            temporary = target.with_suffix(".json.tmp")
            temporary.write_text(json.dumps(record, indent=2), encoding="utf-8")
            os.replace(temporary, target)

    def on_checkpoint(self, trainer: "Trainer", path: Path) -> None:
        if trainer.is_main:
            protect = {self.best_name} if self.best_name else set()
            prune_checkpoints(path.parent, self.config.keep_last, protect)

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_name": self.best_name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value = state["best_value"]
        self.best_name = state["best_name"]
