"""``TrainState``: everything a checkpoint holds about a fit, in one dataclass.

The trainer keeps its position, counters and bookkeeping here and nowhere else, so that saving
and resuming are one ``to_dict`` / ``from_dict`` pair instead of fields mirrored by hand. The
parts that live in other objects (optimizer, lr schedule, GradScaler, callbacks, each rank's RNG)
are captured into the state just before it is written and handed back to those objects on
resume (see ``Trainer.save_checkpoint`` and ``Trainer._restore``).

A checkpoint's ``state.pt`` is ``TrainState.to_dict()``: plain containers of tensors, numbers
and strings, readable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["TrainState", "STATE_FORMAT"]

#: version of the ``state.pt`` layout; 1 was v0.1's ``position`` / ``progress`` sections
STATE_FORMAT = 2


@dataclass
class TrainState:
    """Position, counters and captured component states of one fit."""

    # position: the next batch to train on is batch ``batch_in_epoch`` of epoch ``epoch`` (0-based)
    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    stages_applied: list[int] = field(default_factory=list)
    # evaluation bookkeeping
    last_eval_step: int = -1
    eval_pending: bool = False
    last_val_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    # the running epoch's counters (summed over ranks)
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    epoch_skipped: int = 0
    epoch_dropped_single_rows: int = 0
    # the whole fit's counters
    nonfinite_steps: int = 0
    # what the run was started with (seed, batch size, ranks, preprocessing): checked on resume
    settings: dict[str, Any] = field(default_factory=dict)
    # captured from their owners just before a checkpoint is written
    optimizer: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, Any] = field(default_factory=dict)
    rng: list[dict[str, Any]] = field(default_factory=list)  # one entry per rank, in rank order

    def start_new_epoch(self) -> None:
        """Move the position to the first batch of the next epoch and reset the epoch's counters."""
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
        self.epoch_skipped = self.epoch_dropped_single_rows = 0

    def to_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainState":
        """Read a checkpoint's state (this layout or v0.1's)."""
        if raw.get("format", 1) == 1:
            raw = _from_format_1(raw)
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in raw.items() if key in known})


def _from_format_1(raw: dict[str, Any]) -> dict[str, Any]:
    """v0.1 checkpoints kept the position and counters in two sub-dicts and one RNG state."""
    position, progress = raw["position"], raw["progress"]
    return {
        **position,
        "stages_applied": raw["stages_applied"],
        "last_eval_step": progress["last_eval_step"],
        "eval_pending": progress["eval_pending"],
        "last_val_metrics": progress["last_val_metrics"],
        "history": progress["history"],
        "epoch_loss_sum": progress["epoch_loss_sum"],
        "epoch_loss_count": progress["epoch_loss_count"],
        "epoch_skipped": progress["epoch_skipped"],
        "nonfinite_steps": progress["nonfinite_steps"],
        "optimizer": raw["optimizer"],
        "schedule": raw["schedule"],
        "scaler": raw["scaler"],
        "callbacks": raw["callbacks"],
        "rng": [raw["rng"]],
    }
