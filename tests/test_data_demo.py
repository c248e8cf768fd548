"""The demo dataset: real files whose label needs all four modalities."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmfuse.demo.dataset import LEVELS, TONES_HZ, alert_level, write_demo_dataset


def read_cues(folder: Path, row: dict) -> dict[str, bool]:
    """Recover each cue from the files themselves, as a model would have to."""
    import av
    import soundfile
    from PIL import Image

    pixels = np.asarray(Image.open(folder / row["image"]).convert("RGB"), dtype=float)
    saturated = pixels[(pixels.max(-1) - pixels.min(-1)) > 100]
    image = saturated[:, 0].mean() > saturated[:, 2].mean()  # red blob, not blue
    wave, rate = soundfile.read(folder / row["audio"])
    peak = np.abs(np.fft.rfft(wave)).argmax() * rate / len(wave)
    audio = abs(peak - TONES_HZ[1]) < abs(peak - TONES_HZ[0])
    with av.open(str(folder / row["video"])) as container:
        frames = [frame.to_ndarray(format="rgb24").astype(float) for frame in container.decode(video=0)]
    bright = frames[0][frames[0].max(-1) > 90]
    video = bright[:, 1].mean() > bright[:, 0].mean() + 40  # green square, not grey
    return {"text": "alarm" in row["text"].split(), "image": image, "audio": audio, "video": video}


def test_labels_follow_the_cues_found_in_the_files(tmp_path):
    data = write_demo_dataset(tmp_path, train_rows=32, val_rows=16)
    rows = [json.loads(line) for line in data.train.read_text().splitlines()]
    assert len(rows) == 32 and len(data.val.read_text().splitlines()) == 16
    cues = [read_cues(tmp_path, row) for row in rows]
    assert [alert_level(c) for c in cues] == [row["label"] for row in rows]
    # all 16 cue combinations appear equally often: each cue is independent of the others
    assert set(Counter(tuple(c.values()) for c in cues).values()) == {2}
    assert {row["label"] for row in rows} == set(LEVELS)


def test_one_cue_alone_cannot_predict_the_label():
    combos = [dict(zip(("text", "image", "audio", "video"), (bool(c >> b & 1) for b in range(4)))) for c in range(16)]
    for cue in ("text", "image", "audio", "video"):
        best = 0
        for value in (False, True):
            labels = Counter(alert_level(c) for c in combos if c[cue] == value)
            best += max(labels.values())
        assert best / 16 == 0.5  # the best guess from one cue is right half the time


@pytest.mark.slow
def test_demo_command_trains_and_prints_the_table(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mmfuse", "demo", "--out", str(tmp_path), "--train-rows", "32", "--val-rows", "16",
         "trainer.epochs=1", "data.num_workers=1"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout
    for name in ("text only", "image only", "audio only", "video only", "fused (all)", "chance"):
        assert name in table
    assert len(list((tmp_path / "data" / "video").glob("*.mp4"))) == 48
    assert (tmp_path / "runs" / "demo-fused" / "model" / "mmfuse.json").is_file()
    assert (tmp_path / "runs" / "demo-audio" / "metrics.csv").is_file()
