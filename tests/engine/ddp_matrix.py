"""The cases of the DDP test matrix, run one after another in ONE torchrun launch of 2 gloo
processes (process start-up dominates the cost, so the cases share it)::

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.engine.ddp_matrix OUT CASE...

Each case trains with the Trainer and saves ``OUT/<case>-rank<r>.pt``; ``test_ddp_matrix.py``
compares the ranks with each other and, where the data are the same by design, with one process
trained on the same global batch (:func:`case_setup` builds both sides).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from mmfuse.engine.callbacks import Callback
from mmfuse.engine.trainer import Trainer
from tests.engine.stop_after import StopAfter
from tests.engine.torchrun_cases import run_cases
from tests.engine.tiny import INPUT_DIM, SyntheticRows, tiny_model, tiny_recipe

QUIET = {"progress": "off", "tensorboard": "off", "device": "cpu"}
NO_DROPOUT = {"type": "mmfuse/concat", "projection_dim": 8, "hidden_dims": [16], "output_dim": 8, "dropout": 0.0}
CLASSIFY = {"label": {"type": "mmfuse/classification", "labels": ["a", "b", "c"]}}
ALIGN = {"align": {"type": "mmfuse/contrastive", "encoders": ["feats", "extra"], "embed_dim": 8}}
FROZEN = {
    "feats": {"type": "mmfuse/vector", "input_dim": INPUT_DIM, "hidden_dim": 16, "output_dim": 8, "freeze": True},
    "extra": {"type": "mmfuse/vector", "input_dim": INPUT_DIM, "hidden_dim": 8, "output_dim": 8, "num_layers": 3, "freeze": True},
}

#: case -> (recipe sections, train rows, val rows); ``batch_size`` is per process
CASES: dict[str, tuple[dict[str, Any], int, int]] = {
    "classification": ({"fusion": NO_DROPOUT, "tasks": CLASSIFY}, 32, 9),
    "contrastive": ({"fusion": {"type": "mmfuse/mean", "output_dim": 8}, "tasks": ALIGN}, 32, 9),
    "multitask": ({"fusion": NO_DROPOUT, "tasks": {**CLASSIFY, **ALIGN}}, 32, 9),
    "stages": (
        {"fusion": NO_DROPOUT, "tasks": CLASSIFY, "encoders": FROZEN,
         "trainer": {"stages": [{"at_step": 3, "unfreeze": ["extra"], "lr": 0.02},
                                {"at_epoch": 1, "unfreeze": ["feats"], "lr": 0.02}]}},
        32, 0,
    ),
    "uneven": ({"fusion": NO_DROPOUT, "tasks": {**CLASSIFY, **ALIGN}}, 30, 9),
    # bf16: the empty rank's zero-row gather must match the dtype the other rank gathers
    "skipped_batch": ({"fusion": NO_DROPOUT, "tasks": {**CLASSIFY, **ALIGN}, "data": {"shuffle": False},
                       "trainer": {"precision": "bf16"}}, 32, 9),
    "nan_on_one_rank": ({"fusion": NO_DROPOUT, "tasks": CLASSIFY, "data": {"shuffle": False}}, 32, 0),
    "resume_workers": ({"tasks": CLASSIFY, "data": {"num_workers": 2}}, 32, 9),  # dropout: each rank's RNG matters
}


def case_setup(name: str, world_size: int):
    """(recipe, train data, val data or None) of a case for ``world_size`` processes: one process
    gets the batch of all of them, so both see the same global batches."""
    sections, train_rows, val_rows = CASES[name]
    sections = {key: dict(value) for key, value in sections.items()}
    data = {"batch_size": 4 * (2 // world_size), "eval_batch_size": 4, **sections.pop("data", {})}
    trainer = {**QUIET, "epochs": 2, "log_every_steps": 2, **sections.pop("trainer", {})}
    recipe = tiny_recipe(data=data, trainer=trainer, **sections)
    val = SyntheticRows(val_rows, seed=1) if val_rows else None
    return recipe, SyntheticRows(train_rows), val


class RowsCollate:
    """Rows -> batches for every task of the model (picklable for DataLoader workers)."""

    def __init__(self, model) -> None:
        self.preprocessors = {name: enc.preprocessor() for name, enc in model.encoders.items()}
        self.tasks = {name: task for name, task in model.tasks.items() if task.needs_target}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        inputs = {name: prep.collate([prep(row["x"]) for row in rows]) for name, prep in self.preprocessors.items()}
        present = {name: torch.ones(len(rows), dtype=torch.bool) for name in self.preprocessors}
        targets = {name: torch.stack([task.encode_target(row["label"]) for row in rows]) for name, task in self.tasks.items()}
        return {"inputs": inputs, "present": present, "targets": targets}


class AltersRankOnesFirstBatch(RowsCollate):
    """Without shuffling, rank 1's first batch is rows 1, 3, 5, 7 in every epoch."""

    def __init__(self, model, rows, kind: str) -> None:
        super().__init__(model)
        self.rows, self.kind = rows, kind

    def __call__(self, rows):
        if not all(row["x"] in self.rows for row in rows):
            return super().__call__(rows)
        if self.kind == "empty":
            return {"inputs": {}, "present": {}, "targets": {}, "skipped": len(rows)}
        batch = super().__call__(rows)
        batch["inputs"]["feats"]["values"][0, 0] = float("nan")
        return batch


class LoggedLosses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, trainer, metrics) -> None:
        self.losses.append(metrics["train/loss"])


def fit_case(name: str, world_size: int, run_dir: Path, callbacks=(), resume=None, collate=None) -> tuple[Trainer, Any, LoggedLosses]:
    """Train case ``name`` on ``world_size`` processes (this one's share) into ``run_dir``."""
    recipe, train, val = case_setup(name, world_size)
    model = tiny_model(recipe)
    logged = LoggedLosses()
    trainer = Trainer.from_recipe(
        recipe, model, train, (collate or RowsCollate)(model), val_dataset=val, run_dir=run_dir,
        callbacks=[logged, *callbacks],
    )
    return trainer, trainer.fit(resume=resume), logged


def summary(trainer: Trainer, result, logged: LoggedLosses) -> dict[str, Any]:
    return {
        "weights": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        "step": result.global_step,
        "metrics": {k: float(v) for k, v in result.metrics.items()},
        "logged": logged.losses,
        "skipped": [row["train/skipped"] for row in result.history],
        "nonfinite": trainer.nonfinite_steps,
    }


def run_case(name: str, out: Path) -> dict[str, Any]:
    rank_dir = out / name
    if name in ("skipped_batch", "nan_on_one_rank"):
        data = case_setup(name, 2)[1]
        marked = [data[i]["x"] for i in (1, 3, 5, 7)]
        kind = "empty" if name == "skipped_batch" else "nan"
        trainer, result, logged = fit_case(name, 2, rank_dir, collate=lambda m: AltersRankOnesFirstBatch(m, marked, kind))
        return summary(trainer, result, logged)
    if name == "resume_workers":
        full = summary(*fit_case(name, 2, out / "resume-full"))
        fit_case(name, 2, out / "resume-cut", callbacks=[StopAfter(5)])  # mid-epoch 2
        resumed = summary(*fit_case(name, 2, out / "resume-cut", resume=out / "resume-cut"))
        return {**resumed, "uninterrupted": full["weights"]}
    return summary(*fit_case(name, 2, rank_dir))


if __name__ == "__main__":
    run_cases(sys.argv[1], sys.argv[2:], run_case)
