"""One rank of the 2-process gloo DDP test (started by torch.multiprocessing.spawn)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mmfuse.engine.trainer import Trainer
from tests.engine.tiny import SyntheticRows, TinyCollate, tiny_model, tiny_recipe


def ddp_recipe(batch_size: int, shuffle: bool = True):
    return tiny_recipe(
        data={"batch_size": batch_size, "shuffle": shuffle},
        fusion={"type": "mmfuse/concat", "projection_dim": 8, "hidden_dims": [16], "output_dim": 8, "dropout": 0.0},
        trainer={"epochs": 2, "progress": "off", "tensorboard": "off", "device": "cpu", "log_every_steps": 2},
    )


def train(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
         "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)}
    )
    torch.set_num_threads(1)
    recipe = ddp_recipe(batch_size=4)
    model = tiny_model(recipe)
    trainer = Trainer(
        model, recipe, SyntheticRows(32), TinyCollate(model), val_dataset=SyntheticRows(9, seed=1), run_dir=Path(out)
    )
    result = trainer.fit()
    assert trainer.context.world_size == world_size and trainer.ddp is not None
    torch.save(
        {"weights": model.state_dict(), "metrics": result.metrics, "step": result.global_step},
        Path(out) / f"rank{rank}.pt",
    )
    trainer.context.close()


class OnRankOnesFirstBatch(TinyCollate):
    """Collate that alters rank 1's first batch (rows 1, 3, 5, 7 without shuffling)."""

    def __init__(self, model, rows) -> None:
        super().__init__(model)
        self.rows = rows

    def __call__(self, rows):
        if all(row["x"] in self.rows for row in rows):
            return self.alter(rows)
        return super().__call__(rows)

    def alter(self, rows):
        raise NotImplementedError


class EmptyOnRankOne(OnRankOnesFirstBatch):
    """That batch comes out with every row skipped."""

    def alter(self, rows):
        return {"inputs": {}, "present": {}, "targets": {}, "skipped": len(rows)}


class NaNOnRankOne(OnRankOnesFirstBatch):
    """That batch carries a NaN feature: only rank 1's loss is non-finite."""

    def alter(self, rows):
        batch = TinyCollate.__call__(self, rows)
        batch["inputs"]["feats"]["values"][0, 0] = float("nan")
        return batch


def _train_unshuffled(rank: int, world_size: int, port: int, out: str, collate_class, **trainer_kwargs):
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
         "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)}
    )
    torch.set_num_threads(1)
    recipe = ddp_recipe(batch_size=4, shuffle=False)
    model = tiny_model(recipe)
    data = SyntheticRows(32)
    collate = collate_class(model, [data[i]["x"] for i in (1, 3, 5, 7)])
    trainer = Trainer(model, recipe, data, collate, run_dir=Path(out), **trainer_kwargs)
    return model, trainer, trainer.fit()


def train_with_an_empty_batch(rank: int, world_size: int, port: int, out: str) -> None:
    model, trainer, result = _train_unshuffled(
        rank, world_size, port, out, EmptyOnRankOne, val_dataset=SyntheticRows(9, seed=1)
    )
    torch.save(
        {"weights": model.state_dict(), "skipped": [row["train/skipped"] for row in result.history], "step": result.global_step},
        Path(out) / f"rank{rank}.pt",
    )
    trainer.context.close()


def train_with_a_nan_on_one_rank(rank: int, world_size: int, port: int, out: str) -> None:
    model, trainer, result = _train_unshuffled(rank, world_size, port, out, NaNOnRankOne)
    torch.save(
        {"weights": model.state_dict(), "nonfinite": trainer.nonfinite_steps, "step": result.global_step},
        Path(out) / f"rank{rank}.pt",
    )
    trainer.context.close()
