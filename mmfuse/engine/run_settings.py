"""What a run was started with, saved in every checkpoint and compared on resume.

Resuming is bit-exact only when the data order and the inputs are the same as in the run that
wrote the checkpoint. A change to anything in :data:`EXACTNESS_KEYS` (the seed, the batch size,
the number of processes, ...) or to an encoder's settings (its preprocessing) makes the resumed run
a different run: it is refused unless forced (``mmfuse train --resume-force``,
``Trainer.fit(resume_force=True)``), and then warned about. Other changes (learning rate, epochs,
logging) are reported as a warning and accepted.
"""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING, Any

from mmfuse.engine.checkpoint import CheckpointError

if TYPE_CHECKING:
    from mmfuse.data.config import DataConfig
    from mmfuse.engine.config import OptimizerConfig, SchedulerConfig
    from mmfuse.recipe import Recipe

__all__ = ["EXACTNESS_KEYS", "ResumeSettingsWarning", "describe_run", "check_resume_settings", "translated_position"]

#: settings that decide the order and grouping of the training rows
EXACTNESS_KEYS = ("seed", "batch_size", "world_size", "grad_accum_steps", "shuffle", "drop_last", "train_rows", "encoders")


#: encoder slot keys that change neither the data order nor the inputs
_NOT_EXACTNESS = ("lr", "weight_decay", "gradient_checkpointing")


def describe_run(
    *,
    seed: int,
    data: "DataConfig",
    world_size: int,
    grad_accum_steps: int,
    train_rows: int,
    recipe: "Recipe | None",
    optimizer: "OptimizerConfig | None",
    scheduler: "SchedulerConfig | None",
) -> dict[str, Any]:
    """What a run is started with, as saved in its checkpoints. Encoder settings come from the
    recipe (without their ``lr`` / ``weight_decay`` / ``gradient_checkpointing``); a run without a recipe has none."""
    from mmfuse.engine.config import OptimizerConfig, SchedulerConfig

    encoders: dict[str, Any] = {}
    if recipe is not None:
        for name, slot in recipe.to_dict()["encoders"].items():
            encoders[name] = {key: value for key, value in slot.items() if key not in _NOT_EXACTNESS}
    return {
        "seed": seed,
        "batch_size": data.batch_size,
        "world_size": world_size,
        "grad_accum_steps": grad_accum_steps,
        "shuffle": data.shuffle,
        "drop_last": data.drop_last,
        "train_rows": train_rows,
        "encoders": encoders,
        "optimizer": (optimizer or OptimizerConfig()).model_dump(mode="json"),
        "scheduler": (scheduler or SchedulerConfig()).model_dump(mode="json"),
    }


class ResumeSettingsWarning(UserWarning):
    """A resumed run's settings differ from the checkpoint's."""


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    """``{"encoders": {"text": {"max_length": 32}}}`` -> ``{"encoders.text.max_length": 32}``."""
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(f"{prefix}.{key}", item))
        return flat
    return {prefix: value}


def _changes(saved: dict[str, Any], current: dict[str, Any], keys: list[str]) -> list[str]:
    """``"<dotted key>: <before> -> <after>"`` for every leaf that differs under ``keys``."""
    described = []
    for key in keys:
        before, after = _flatten(key, saved.get(key)), _flatten(key, current.get(key))
        for leaf in sorted(set(before) | set(after)):
            old, new = before.get(leaf), after.get(leaf)
            if json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True, default=str):
                described.append(f"{leaf}: {_short(old)} -> {_short(new)}")
    return described


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def check_resume_settings(saved: dict[str, Any], current: dict[str, Any], *, force: bool, where: str) -> bool:
    """Compare a checkpoint's settings with this run's; return whether the position must be
    translated (the batch size or the number of processes changed and ``force`` is set).

    Raises CheckpointError listing every change that breaks exactness unless ``force``; warns
    (:class:`ResumeSettingsWarning`) about every other change. A checkpoint without saved
    settings (written by mmfuse 0.1) is accepted as is."""
    if not saved:
        return False
    exact = _changes(saved, current, [key for key in EXACTNESS_KEYS if key in saved or key in current])
    other_keys = sorted((set(saved) | set(current)) - set(EXACTNESS_KEYS))
    other = _changes(saved, current, other_keys)
    if exact and not force:
        raise CheckpointError(
            f"cannot resume from {where} exactly: the run's settings changed ({'; '.join(exact)}). "
            "Restore them, or resume anyway with `--resume-force` (Trainer.fit(resume_force=True)); "
            "the resumed run then differs from an uninterrupted one."
        )
    if exact:
        warnings.warn(
            f"resuming from {where} with changed settings ({'; '.join(exact)}): the result will not match "
            "an uninterrupted run", ResumeSettingsWarning, stacklevel=3,
        )
    if other:
        warnings.warn(f"resuming from {where} with changed settings: {'; '.join(other)}", ResumeSettingsWarning, stacklevel=3)
    moved = {"batch_size", "world_size"}
    return any(change.split(":")[0] in moved for change in exact)


def translated_position(batch_in_epoch: int, saved: dict[str, Any], current: dict[str, Any], batches_per_epoch: int) -> int:
    """The batch to continue at when a forced resume changed the batch size or process count:
    after the rows already seen in the epoch."""
    rows_seen = batch_in_epoch * saved["batch_size"] * saved["world_size"]
    return min(batches_per_epoch, rows_seen // (current["batch_size"] * current["world_size"]))
