"""mmfuse/video_frames (tiny timm ViT per frame) and mmfuse/video_native (tiny VideoMAE saved with
save_pretrained; torchvision r3d_18 with random weights) on MP4 files written by PyAV."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfuse.testing.media import write_mp4
from mmfuse.testing.tiny_models import save_tiny_videomae
from tests.encoders.checks import (
    assert_export_roundtrip,
    assert_freezing_controls_gradients,
    assert_layer_groups_cover_encoder,
    assert_missing_and_corrupt_files_are_sample_errors,
    assert_output_contract,
    assert_pickled_copy_preprocesses_alike,
    build_encoder,
    encode,
)

FRAMES, NATIVE = "mmfuse/video_frames", "mmfuse/video_native"


@pytest.fixture(scope="module")
def videomae_folder(tmp_path_factory):
    return save_tiny_videomae(tmp_path_factory.mktemp("videomae"), num_frames=4, image_size=32)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """8 frames at 8 fps (1 s), and 3 frames at 8 fps (0.375 s) of another size."""
    folder = tmp_path_factory.mktemp("videos")
    return [
        str(write_mp4(folder / "eight.mp4", num_frames=8, fps=8)),
        str(write_mp4(folder / "three.mp4", num_frames=3, size=(48, 32), fps=8, seed=1)),
    ]


def _brightness(frames: torch.Tensor) -> list[float]:
    return frames.mean(dim=(1, 2, 3)).tolist()


def test_uniform_sampling_takes_segment_centres_in_order(vit_name, videos):
    preprocessor = build_encoder(FRAMES, model=vit_name, num_frames=4).preprocessor()
    sample = preprocessor(videos[0])
    assert sample["frames"].shape == (4, 3, 32, 32) and sample["frame_mask"].tolist() == [1, 1, 1, 1]
    every = build_encoder(FRAMES, model=vit_name, num_frames=8).preprocessor()(videos[0])
    # segment centres of 4 segments over 8 frames are frames 1, 3, 5, 7 (each frame brighter than the last)
    torch.testing.assert_close(sample["frames"], every["frames"][[1, 3, 5, 7]])


def test_fps_sampling_pads_and_masks_short_clips(vit_name, videos):
    preprocessor = build_encoder(FRAMES, model=vit_name, num_frames=4, sampling="fps", fps=4).preprocessor()
    long_clip, short_clip = preprocessor(videos[0]), preprocessor(videos[1])
    assert long_clip["frame_mask"].tolist() == [1, 1, 1, 1]
    brightness = _brightness(long_clip["frames"])
    assert brightness == sorted(brightness)
    assert short_clip["frame_mask"].tolist() == [1, 1, 0, 0]  # 0.375 s at 4 fps: t=0 and t=0.25
    assert (short_clip["frames"][2:] == 0).all()


def test_fps_sampling_needs_fps(vit_name):
    with pytest.raises(ValueError, match="fps"):
        build_encoder(FRAMES, model=vit_name, sampling="fps")


@pytest.mark.parametrize("temporal", ["mean", "transformer"])
def test_frames_encoder_batch(vit_name, videos, temporal):
    encoder = build_encoder(FRAMES, model=vit_name, num_frames=4, sampling="fps", fps=4, temporal=temporal).eval()
    with torch.no_grad():
        batch, output = encode(encoder, videos + [None])
    assert batch["frames"].shape == (3, 4, 3, 32, 32)
    assert_output_contract(output, 3, 64)
    assert output.mask.tolist() == [[True] * 4, [True, True, False, False], [True, False, False, False]]
    with torch.no_grad():
        _, alone = encode(encoder, [videos[1]])
    torch.testing.assert_close(output.pooled[1], alone.pooled[0], atol=1e-5, rtol=0)


def test_in_memory_frames_are_accepted(vit_name):
    preprocessor = build_encoder(FRAMES, model=vit_name, num_frames=4).preprocessor()
    array = np.random.default_rng(0).integers(0, 255, size=(10, 20, 20, 3), dtype=np.uint8)
    assert preprocessor(array)["frames"].shape == (4, 3, 32, 32)


def test_native_videomae_from_a_saved_folder(videomae_folder, videos):
    encoder = build_encoder(NATIVE, model=str(videomae_folder)).eval()
    settings = encoder.preprocessor().settings()
    assert settings["num_frames"] == 4 and settings["image_size"] == [32, 32]
    with torch.no_grad():
        batch, output = encode(encoder, videos + [None])
    assert batch["frames"].shape == (3, 4, 3, 32, 32)
    # tubelets of 2 frames x 16 x 16 pixels: 2 * 2 * 2 tokens
    assert_output_contract(output, 3, 32)
    assert output.tokens.shape[1] == 8 and output.mask.all()


def test_native_rejects_a_frame_count_the_model_cannot_take(videomae_folder):
    with pytest.raises(ValueError, match="exactly 4 frames"):
        build_encoder(NATIVE, model=str(videomae_folder), num_frames=6)


def test_native_torchvision_r3d(videos):
    encoder = build_encoder(NATIVE, model="r3d_18", pretrained=False, num_frames=4, image_size=32).eval()
    with torch.no_grad():
        _, output = encode(encoder, videos)
    assert_output_contract(output, 2, 512)
    assert output.tokens.shape[1] == 1 * 2 * 2  # 4 frames / 8 (rounded up), 32 px / 16 in each direction
    assert len(encoder.layer_groups()) == 5


@pytest.mark.parametrize("name", [FRAMES, NATIVE])
def test_freezing_and_layer_groups(name, vit_name, videomae_folder, videos):
    params = {"model": vit_name, "num_frames": 4, "temporal": "transformer"} if name == FRAMES else {
        "model": str(videomae_folder)
    }
    encoder = build_encoder(name, **params)
    batch, _ = encode(encoder, videos)
    assert_layer_groups_cover_encoder(encoder, minimum=3)
    assert_freezing_controls_gradients(encoder.train(), batch)


@pytest.mark.parametrize("name", [FRAMES, NATIVE])
def test_export_assets_rebuilds_offline(name, vit_name, videomae_folder, videos, tmp_path):
    params = {"model": vit_name, "num_frames": 4} if name == FRAMES else {"model": str(videomae_folder)}
    encoder = build_encoder(name, **params)
    assert_export_roundtrip(name, params, encoder, videos, tmp_path / "video")


def test_missing_and_corrupt_files_are_sample_errors_naming_the_path(vit_name, tmp_path):
    preprocessor = build_encoder(FRAMES, model=vit_name, num_frames=4).preprocessor()
    assert_missing_and_corrupt_files_are_sample_errors(
        preprocessor, tmp_path, ".mp4", "video file not found", "cannot decode video"
    )


def test_unknown_names_suggest_known_models():
    with pytest.raises(ValueError, match="Did you mean: r3d_18"):
        build_encoder(NATIVE, model="r3d_81", pretrained=False)
    with pytest.raises(ValueError, match="not supported by video_native"):
        build_encoder(NATIVE, model="s3d", pretrained=False)


def test_preprocessor_pickles_for_dataloader_workers(vit_name, videos):
    preprocessor = build_encoder(FRAMES, model=vit_name, num_frames=4).preprocessor()
    assert_pickled_copy_preprocesses_alike(preprocessor, videos[0])
    assert preprocessor.reads_files is True
