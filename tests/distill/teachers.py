"""Demo data, a trained multimodal teacher and student recipes for the distillation tests: small
from-scratch encoders (text_small, image_cnn, audio_cnn), nothing downloaded, seconds to train."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmfuse.demo.dataset import write_demo_dataset
from mmfuse.recipe import Recipe, parse_recipe
from mmfuse.run import train

ENCODERS: dict[str, dict[str, Any]] = {
    "text": {"type": "text_small", "architecture": "conv", "embed_dim": 16, "hidden_size": 16, "max_length": 12},
    "image": {"type": "image_cnn", "widths": [8, 8]},
    "audio": {"type": "audio_cnn", "widths": [8, 8], "sample_rate": 8000, "max_seconds": 0.5, "n_mels": 16,
              "n_fft": 256, "hop_length": 128},
}
QUIET = {"epochs": 2, "device": "cpu", "progress": "off", "tensorboard": "off", "log_every_steps": 2}


def write_data(folder: Path) -> tuple[Path, Path]:
    data = write_demo_dataset(folder, train_rows=24, val_rows=8)
    return data.train, data.val


def teacher_recipe(train_file: Path, val_file: Path, out: Path, **changes: Any) -> Recipe:
    """A text + image + audio classifier of the demo's alert level, with dropout in its fusion
    (a teacher left in train mode would give different logits on every call)."""
    raw: dict[str, Any] = {
        "name": "teacher",
        "seed": 1,
        "output_dir": str(out),
        "data": {"train": str(train_file), "val": str(val_file), "batch_size": 8, "num_workers": 0},
        "encoders": {name: dict(slot) for name, slot in ENCODERS.items()},
        "fusion": {"type": "concat", "projection_dim": 8, "hidden_dims": [16], "output_dim": 16, "dropout": 0.5},
        "tasks": {"label": {"type": "classification"}},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "trainer": dict(QUIET),
    }
    raw.update(changes)
    return parse_recipe(raw)


def student_raw(train_file: Path, val_file: Path, out: Path, teacher: Path | str, **task: Any) -> dict[str, Any]:
    """A text-only student distilled from ``teacher`` (raw recipe data, to vary in tests)."""
    return {
        "name": "student",
        "seed": 2,
        "output_dir": str(out),
        "data": {"train": str(train_file), "val": str(val_file), "batch_size": 8, "num_workers": 0},
        "encoders": {"text": dict(ENCODERS["text"], embed_dim=8, hidden_size=8)},
        "fusion": {"type": "concat", "projection_dim": 8, "output_dim": 8},
        "tasks": {"distill": {"type": "distillation", "teacher": str(teacher), "temperature": 2.0, **task}},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "trainer": dict(QUIET),
    }


def train_teacher(folder: Path) -> tuple[Path, Path, Path]:
    """(train manifest, val manifest, teacher run folder)."""
    train_file, val_file = write_data(folder / "data")
    outcome = train(teacher_recipe(train_file, val_file, folder / "runs"), run_dir=folder / "teacher")
    return train_file, val_file, outcome.run_dir
