"""Engine overhead: the same fused model, data and optimizer trained by a hand-written PyTorch loop,
by mmfuse's Trainer and by the Hugging Face Trainer, interleaved in one run; prints the median
step-time ratios engine/hand-written and engine/HF Trainer.

    .venv/bin/python benchmarks/engine_overhead.py --rounds 6 --steps 60 [--no-hf]

Goals on CPU: engine/hand-written <= 1.02, engine/HF Trainer <= 1. The HF Trainer side needs
``accelerate`` (``pip install -e ".[bench]"``); it gets the same fused AdamW, learning rate and
weight decay, a constant schedule and no logging, saving or evaluation during the steps. A step is timed from one optimizer step's end to the next, so data
loading, forward, backward, optimizer step and the engine's per-step bookkeeping all count. Both
wall time and this process's CPU time are reported: on a machine shared with other jobs the CPU
time is the steadier measure of the engine's own work.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mmfuse.engine.callbacks import Callback
from mmfuse.engine.trainer import Trainer
from mmfuse.model import FusedModel, build_fused_model
from mmfuse.optim import build_optimizer
from mmfuse.recipe import Recipe, parse_recipe

INPUT_DIM = 64


def make_recipe(batch_size: int, steps: int) -> Recipe:
    encoder = {"type": "mmfuse/vector", "input_dim": INPUT_DIM, "hidden_dim": 256, "output_dim": 128, "num_layers": 3}
    return parse_recipe(
        {
            "encoders": {"left": dict(encoder), "right": dict(encoder)},
            "fusion": {"type": "mmfuse/concat", "projection_dim": 128, "hidden_dims": [256], "output_dim": 128, "dropout": 0.1},
            "tasks": {"label": {"type": "mmfuse/classification", "labels": list(range(10))}},
            "data": {"batch_size": batch_size, "drop_last": True},
            "optimizer": {"name": "adamw", "lr": 1e-3},
            "trainer": {"epochs": 1000, "max_steps": steps, "progress": "off", "tensorboard": "off",
                        "log_every_steps": 50, "checkpoint": {"keep_best": False}},
        }
    )


class Rows(Dataset):
    def __init__(self, size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.left = torch.randn(size, INPUT_DIM, generator=generator)
        self.right = torch.randn(size, INPUT_DIM, generator=generator)
        self.labels = torch.randint(0, 10, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.left[index], self.right[index], self.labels[index]


def collate(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    left, right, labels = (torch.stack(column) for column in zip(*rows))
    size = len(rows)
    return {
        "inputs": {"left": {"values": left}, "right": {"values": right}},
        "present": {"left": torch.ones(size, dtype=torch.bool), "right": torch.ones(size, dtype=torch.bool)},
        "targets": {"label": labels},
    }


def now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def durations(marks: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]


def hand_written(model: FusedModel, recipe: Recipe, data: Dataset, steps: int) -> list[tuple[float, float]]:
    """What a user would write: DataLoader, forward, loss, backward, step, zero_grad."""
    optimizer = build_optimizer(model, recipe)
    loader = DataLoader(data, batch_size=recipe.data.batch_size, shuffle=True, collate_fn=collate, drop_last=True)
    model.train()
    marks = [now()]
    while len(marks) <= steps:
        for batch in loader:
            outputs = model(batch)
            loss, _ = model.compute_loss(outputs, batch["targets"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            marks.append(now())
            if len(marks) > steps:
                break
    return durations(marks)


class StepClock(Callback):
    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        if not self.marks:
            self.marks.append(now())

    def on_train_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        self.marks.append(now())


def engine(model: FusedModel, recipe: Recipe, data: Dataset, steps: int, run_dir: Path) -> list[tuple[float, float]]:
    clock = StepClock()
    Trainer.from_recipe(recipe, model, data, collate, run_dir=run_dir, callbacks=[clock]).fit()
    return durations(clock.marks)


class FusedForHF(torch.nn.Module):
    """The fused model behind the Hugging Face Trainer's interface: keyword batch in, ``{"loss"}`` out."""

    def __init__(self, model: FusedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, Any], present: dict[str, Any], targets: dict[str, Any]) -> dict[str, torch.Tensor]:
        outputs = self.model({"inputs": inputs, "present": present, "targets": targets})
        loss, _ = self.model.compute_loss(outputs, targets)
        return {"loss": loss}


def hf_trainer(model: FusedModel, recipe: Recipe, data: Dataset, steps: int, run_dir: Path) -> list[tuple[float, float]]:
    """transformers.Trainer on the same model and data, tuned alike: fused AdamW, same lr and
    weight decay, constant schedule, no logging, saving or evaluation inside the measured steps."""
    from transformers import Trainer as HFTrainer
    from transformers import TrainerCallback, TrainingArguments

    marks: list[tuple[float, float]] = []

    class HFStepClock(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            marks.append(now())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            marks.append(now())

    arguments = TrainingArguments(
        output_dir=str(run_dir), max_steps=steps, per_device_train_batch_size=recipe.data.batch_size,
        learning_rate=recipe.optimizer.lr, weight_decay=recipe.optimizer.weight_decay, optim="adamw_torch_fused",
        lr_scheduler_type="constant", warmup_steps=0, logging_strategy="no", save_strategy="no", eval_strategy="no",
        report_to=[], disable_tqdm=True, dataloader_drop_last=True, remove_unused_columns=False, use_cpu=True,
        dataloader_num_workers=0, seed=0,
    )
    trainer = HFTrainer(model=FusedForHF(model), args=arguments, train_dataset=data, data_collator=collate,
                        callbacks=[HFStepClock()])
    trainer.train()
    return durations(marks)


def median_ratio(engine_steps: list[tuple[float, float]], hand_steps: list[tuple[float, float]], column: int) -> float:
    return statistics.median(s[column] for s in engine_steps) / statistics.median(s[column] for s in hand_steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per round and side")
    parser.add_argument("--warmup", type=int, default=5, help="steps dropped at the start of each round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-hf", action="store_true", help="leave out the Hugging Face Trainer")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = make_recipe(args.batch_size, args.steps)
    torch.manual_seed(0)
    initial = build_fused_model(recipe)
    data = Rows(args.batch_size * 40)
    hand_times: list[tuple[float, float]] = []
    engine_times: list[tuple[float, float]] = []
    hf_times: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(args.rounds):
            # alternate which side goes first so drift in machine load hits both equally
            sides = ["hand", "engine"] if round_index % 2 == 0 else ["engine", "hand"]
            if not args.no_hf:
                sides.insert(round_index % 3, "hf")
            for side in sides:
                model = copy.deepcopy(initial)
                torch.manual_seed(round_index)
                if side == "hand":
                    hand_times += hand_written(model, recipe, data, args.steps)[args.warmup :]
                elif side == "hf":
                    hf_times += hf_trainer(model, recipe, data, args.steps, Path(folder) / f"hf{round_index}")[args.warmup :]
                else:
                    run_dir = Path(folder) / f"round{round_index}"
                    engine_times += engine(model, recipe, data, args.steps, run_dir)[args.warmup :]
            wall, cpu = median_ratio(engine_times, hand_times, 0), median_ratio(engine_times, hand_times, 1)
            versus_hf = ""
            if hf_times:
                versus_hf = f"; engine/HF wall {median_ratio(engine_times, hf_times, 0):.4f}, cpu {median_ratio(engine_times, hf_times, 1):.4f}"
            print(f"round {round_index + 1}/{args.rounds}: median ratio so far engine/hand wall {wall:.4f}, cpu {cpu:.4f}{versus_hf}", flush=True)
    for column, clock in ((0, "wall"), (1, "cpu")):
        hand_ms = statistics.median(s[column] for s in hand_times) * 1e3
        engine_ms = statistics.median(s[column] for s in engine_times) * 1e3
        hf_ms = f", HF Trainer {statistics.median(s[column] for s in hf_times) * 1e3:.3f} ms" if hf_times else ""
        print(f"{clock:4s} time: hand-written median step {hand_ms:.3f} ms, engine {engine_ms:.3f} ms{hf_ms} "
              f"over {len(hand_times)} steps each")
    print(f"median step-time ratio engine/hand-written: wall {median_ratio(engine_times, hand_times, 0):.4f}, "
          f"cpu {median_ratio(engine_times, hand_times, 1):.4f} (goal <= 1.02)")
    if hf_times:
        print(f"median step-time ratio engine/HF Trainer: wall {median_ratio(engine_times, hf_times, 0):.4f}, "
              f"cpu {median_ratio(engine_times, hf_times, 1):.4f} (goal <= 1)")


if __name__ == "__main__":
    main()
