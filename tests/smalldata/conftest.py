"""A tiny from-scratch data set (grayscale images, 8 kHz clips, short texts) and recipes over it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmfuse.recipe import Recipe, parse_recipe
from mmfuse.testing.media import write_audio, write_image

RATE = 8000
WORDS = ["red", "blue", "cat", "dog", "runs", "sleeps", "the", "a"]


def write_small_data(folder: Path, rows: int = 12, seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    lines = {"train": [], "val": []}
    for index in range(rows):
        split = "train" if index < rows * 2 // 3 else "val"
        label = "yes" if index % 2 else "no"
        pixels = rng.integers(0, 256, size=(16, 16), dtype=np.uint8) // (2 if index % 2 else 1)
        image = write_image(folder / "img" / f"{index}.png", pixels)
        time = np.arange(int(RATE * (0.25 + 0.05 * (index % 3)))) / RATE
        wave = (0.3 + 0.1 * (index % 4)) * np.sin(2 * np.pi * (200 + 150 * (index % 2)) * time)
        audio = write_audio(folder / "wav" / f"{index}.wav", wave + 0.01 * rng.standard_normal(time.shape), RATE)
        text = " ".join(rng.choice(WORDS, size=3 + index % 3)) + (" dog" if index % 2 else " cat")
        row = {"image": str(image.relative_to(folder)), "audio": str(audio.relative_to(folder)), "text": text, "label": label}
        lines[split].append(json.dumps(row))
    paths = {}
    for split, rows_ in lines.items():
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("\n".join(rows_) + "\n", encoding="utf-8")
    return paths


@pytest.fixture
def small_data(tmp_path) -> dict[str, Path]:
    return write_small_data(tmp_path / "data")


def small_recipe(paths: dict[str, Path], output_dir: Path, *overrides: str, **encoders: Any) -> Recipe:
    """image_cnn (grayscale, native size) + audio_cnn + text_small, all statistics 'auto'."""
    raw: dict[str, Any] = {
        "name": "small",
        "seed": 5,
        "output_dir": str(output_dir),
        "data": {"train": str(paths["train"]), "val": str(paths["val"]), "batch_size": 4},
        "encoders": {
            "image": {"type": "image_cnn", "channels": 1, "widths": [4, 8], "mean": "auto", "std": "auto"},
            "audio": {
                "type": "audio_cnn", "widths": [4, 8], "sample_rate": RATE, "max_seconds": 0.4, "n_mels": 16,
                "n_fft": 256, "hop_length": 128, "mel_mean": "auto", "mel_std": "auto",
            },
            "text": {"type": "text_small", "embed_dim": 8, "hidden_size": 8, "max_vocab": 32},
            **encoders,
        },
        "fusion": {"type": "concat", "projection_dim": 8, "hidden_dims": [16], "output_dim": 8},
        "tasks": {"label": {"type": "classification"}},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "trainer": {"epochs": 2, "device": "cpu", "progress": "off", "tensorboard": "off", "log_every_steps": 1},
    }
    return parse_recipe(raw, overrides=list(overrides))
