"""Write the demo dataset: media files (encoded by :mod:`mmfuse.testing.media`) and JSONL
manifests. Needs numpy, Pillow, soundfile and PyAV; no torch."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmfuse.testing.media import write_audio, write_image, write_video

__all__ = ["CUES", "LEVELS", "WORDS", "DemoData", "alert_level", "describe_cues", "write_demo_dataset"]

#: the four cues, one per modality
CUES = ("text", "image", "audio", "video")
#: labels, from the number of alert cues
LEVELS = ("low", "medium", "high")
IMAGE_SIZE = 32
SAMPLE_RATE = 8000
AUDIO_SECONDS = 0.5
TONES_HZ = (330.0, 1320.0)  # calm, alert
VIDEO_FRAMES = 8
VIDEO_SIZE = 32

_SUBJECTS = ["the report", "a voice", "the sensor", "my friend", "the radio", "a note", "the guard"]
_VERBS = ["says", "reads", "sounds", "signals", "repeats", "shows"]
_PLACES = ["near the gate", "at the river", "in the hall", "on the roof", "by the road", "in the park"]
#: every word the demo texts use (the tiny tokenizer's vocabulary is built from it)
WORDS = sorted({w for phrase in _SUBJECTS + _VERBS + _PLACES for w in phrase.split()} | {"alarm", "calm"})


@dataclass
class DemoData:
    folder: Path
    train: Path
    val: Path
    rows: int


def alert_level(cues: dict[str, bool]) -> str:
    count = sum(cues.values())
    return LEVELS[0] if count <= 1 else LEVELS[1] if count == 2 else LEVELS[2]


def describe_cues(cues: dict[str, bool]) -> str:
    """The ``caption`` column (for ``mmfuse demo --captioning``): one phrase per modality, each
    readable from that modality only: "red blob, high tone, green square, alarm text"."""
    return ", ".join(
        (
            f"{'red' if cues['image'] else 'blue'} blob",
            f"{'high' if cues['audio'] else 'low'} tone",
            f"{'green' if cues['video'] else 'grey'} square",
            f"{'alarm' if cues['text'] else 'calm'} text",
        )
    )


def write_demo_dataset(folder: str | Path, train_rows: int = 256, val_rows: int = 96, seed: int = 0) -> DemoData:
    """Write ``train.jsonl`` / ``val.jsonl`` and their media under ``folder``; return the paths.

    Every combination of the four cues appears equally often (up to rounding), so each cue is
    independent of the others."""
    folder = Path(folder)
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    manifests = {}
    start = 0
    for split, count in (("train", train_rows), ("val", val_rows)):
        combos = [[bool(c >> bit & 1) for bit in range(len(CUES))] for c in range(16)]
        plan = [combos[i % 16] for i in range(count)]
        rng.shuffle(plan)
        lines = []
        for offset, bits in enumerate(plan):
            index = start + offset
            cues = dict(zip(CUES, bits))
            lines.append(json.dumps(_write_sample(folder, index, cues, rng, noise)))
        start += count
        manifests[split] = folder / f"{split}.jsonl"
        manifests[split].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return DemoData(folder, manifests["train"], manifests["val"], train_rows + val_rows)


def _write_sample(folder: Path, index: int, cues: dict[str, bool], rng: random.Random, noise) -> dict:
    name = f"{index:04d}"
    image = write_image(folder / "image" / f"{name}.png", _image_pixels(cues["image"], noise))
    audio = write_audio(folder / "audio" / f"{name}.wav", _audio_wave(cues["audio"], noise), SAMPLE_RATE)
    video = write_video(folder / "video" / f"{name}.mp4", _video_frames(cues["video"], rng), fps=VIDEO_FRAMES)
    word = "alarm" if cues["text"] else "calm"
    text = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {word} {rng.choice(_PLACES)}"
    return {
        "text": text,
        "image": str(image.relative_to(folder)),
        "audio": str(audio.relative_to(folder)),
        "video": str(video.relative_to(folder)),
        "label": alert_level(cues),
        "caption": describe_cues(cues),
    }


def _image_pixels(alert: bool, noise) -> np.ndarray:
    """A red (alert) or blue disc-ish blob on a noisy grey background, at a random place."""
    pixels = noise.integers(90, 150, size=(IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.int16)
    colour = np.array([220, 40, 40] if alert else [40, 60, 220])
    y, x = noise.integers(8, IMAGE_SIZE - 8, size=2)
    yy, xx = np.ogrid[:IMAGE_SIZE, :IMAGE_SIZE]
    blob = (yy - y) ** 2 + (xx - x) ** 2 <= int(noise.integers(25, 50))
    pixels[blob] = colour + noise.integers(-20, 21, size=(int(blob.sum()), 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _audio_wave(alert: bool, noise) -> np.ndarray:
    """A high (alert) or low tone with a little noise and a random pitch jitter."""
    time = np.arange(int(SAMPLE_RATE * AUDIO_SECONDS)) / SAMPLE_RATE
    frequency = TONES_HZ[int(alert)] * float(noise.uniform(0.9, 1.1))
    wave = 0.4 * np.sin(2 * np.pi * frequency * time + float(noise.uniform(0, 6.28)))
    return wave + 0.05 * noise.standard_normal(time.shape)


def _video_frames(alert: bool, rng: random.Random) -> list[np.ndarray]:
    """A green (alert) or grey square crossing a dark frame in a random direction."""
    colour = np.array([40, 210, 60] if alert else [128, 128, 128], dtype=np.uint8)
    side = 10
    x, y = rng.randint(0, VIDEO_SIZE - side), rng.randint(0, VIDEO_SIZE - side)
    dx, dy = rng.choice([-3, -2, 2, 3]), rng.choice([-3, -2, 2, 3])
    frames = []
    for _ in range(VIDEO_FRAMES):
        frame = np.full((VIDEO_SIZE, VIDEO_SIZE, 3), 20, dtype=np.uint8)
        frame[y : y + side, x : x + side] = colour
        frames.append(frame)
        x, y = _bounce(x, dx, side), _bounce(y, dy, side)
        dx = dx if 0 < x < VIDEO_SIZE - side else -dx
        dy = dy if 0 < y < VIDEO_SIZE - side else -dy
    return frames


def _bounce(position: int, step: int, side: int) -> int:
    return min(max(position + step, 0), VIDEO_SIZE - side)
