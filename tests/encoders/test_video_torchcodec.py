"""torchcodec as a second video decoder: the same frames as PyAV for every sampling mode, clear
errors for bad files and for a machine without FFmpeg's shared libraries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmfuse.contracts import SampleError
from mmfuse.testing.media import write_corrupt_file, write_mp4
from mmfuse_plugins.video.decode import (
    VideoDecoderUnavailable,
    decode_video_frames,
    decode_with_torchcodec,
)

pytest.importorskip("torchcodec", reason="needs torchcodec (the test extra)")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = write_mp4(tmp_path_factory.mktemp("tc") / "clip.mp4", num_frames=12, fps=6)
    try:
        decode_with_torchcodec(path, 1, "uniform", None)
    except VideoDecoderUnavailable as exc:
        pytest.skip(f"torchcodec cannot run here: {exc}")
    return path


def _brightness(images) -> list[float]:
    return [float(np.asarray(image, dtype=np.float32).mean()) for image in images]


@pytest.mark.parametrize(
    "num_frames, sampling, fps",
    [(4, "uniform", None), (12, "uniform", None), (20, "uniform", None), (5, "fps", 2.0), (30, "fps", 6.0)],
)
def test_torchcodec_picks_the_same_frames_as_pyav(clip, num_frames, sampling, fps):
    pyav = decode_video_frames(clip, num_frames, sampling, fps)
    codec = decode_with_torchcodec(clip, num_frames, sampling, fps)
    assert len(codec) == len(pyav)
    assert [image.size for image in codec] == [image.size for image in pyav]
    # frames differ in brightness by ~18 levels each; decoders agree to well under one step
    assert np.allclose(_brightness(codec), _brightness(pyav), atol=2.0)
    difference = max(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean() for a, b in zip(codec, pyav))
    assert difference < 3.0


def test_torchcodec_reports_bad_files_as_sample_errors(clip, tmp_path):
    with pytest.raises(SampleError, match="not found"):
        decode_with_torchcodec(tmp_path / "missing.mp4", 4, "uniform", None)
    with pytest.raises(SampleError, match="cannot decode video"):
        decode_with_torchcodec(write_corrupt_file(tmp_path / "bad.mp4"), 4, "uniform", None)


def test_the_recipe_key_chooses_the_decoder(clip):
    from mmfuse.plugin_host import load_registry
    from mmfuse.recipe import parse_recipe
    from mmfuse.testing.tiny_models import save_tiny_timm

    folder = save_tiny_timm(clip.parent / "timm", model_name="test_resnet", image_size=32)
    raw = {
        "encoders": {"video": {"type": "video_frames", "model": f"local-dir:{folder}", "num_frames": 4, "decoder": "torchcodec", "image_size": 32}},
        "fusion": {"type": "concat", "output_dim": 8},
        "tasks": {"label": {"type": "classification", "labels": ["a", "b"]}},
    }
    recipe = parse_recipe(raw, load_registry())
    from mmfuse.model import build_fused_model

    preprocessor = build_fused_model(recipe, load_registry()).encoders["video"].preprocessor()
    assert preprocessor.decoder == "torchcodec"
    out = preprocessor(str(clip))
    assert tuple(out["frames"].shape[:2]) == (4, 3) and int(out["frame_mask"].sum()) == 4


def test_pyav_takes_every_frame_once_when_asked_for_as_many_frames_as_the_clip_has(clip):
    """Sampling timestamps fall exactly between frames; float noise in frame times used to
    break the tie towards the later frame (frames 0, 2, 3, 4, 4, ... of 12)."""
    brightness = _brightness(decode_video_frames(clip, 12, "uniform", None))
    assert all(later > earlier + 5 for earlier, later in zip(brightness, brightness[1:]))
