"""mmfuse/audio_speech (tiny wav2vec2 saved with save_pretrained) and mmfuse/audio_mel (log-mel +
tiny timm CNN) on real WAV / FLAC / OGG files at several sample rates."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

from mmfuse.contracts import SampleError
from mmfuse.testing.media import write_wav
from mmfuse.testing.tiny_models import save_tiny_wav2vec2
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

SPEECH, MEL = "mmfuse/audio_speech", "mmfuse/audio_mel"
MEL_PARAMS = {"model": "test_efficientnet", "pretrained": False, "max_seconds": 1.0, "n_mels": 32}


@pytest.fixture(scope="module")
def wav2vec2_folder(tmp_path_factory):
    return save_tiny_wav2vec2(tmp_path_factory.mktemp("wav2vec2"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """0.3 s at 8 kHz, 0.6 s at 16 kHz, 0.9 s stereo at 22.05 kHz, 0.45 s FLAC at 44.1 kHz."""
    folder = tmp_path_factory.mktemp("audio")
    return [
        str(write_wav(folder / "short_8k.wav", seconds=0.3, sample_rate=8000)),
        str(write_wav(folder / "mid_16k.wav", seconds=0.6, sample_rate=16000, seed=1)),
        str(write_wav(folder / "long_22k.wav", seconds=0.9, sample_rate=22050, channels=2, seed=2)),
        str(write_wav(folder / "clip.flac", seconds=0.45, sample_rate=44100, seed=3)),
    ]


@pytest.fixture()
def speech(wav2vec2_folder):
    return build_encoder(SPEECH, model=str(wav2vec2_folder)).eval()


@pytest.fixture()
def mel():
    return build_encoder(MEL, **MEL_PARAMS).eval()


def test_files_are_resampled_mixed_down_and_masked(speech, clips):
    preprocessor = speech.preprocessor()
    batch = preprocessor.collate([preprocessor(c) for c in clips] + [None])
    assert batch["attention_mask"].sum(dim=1).tolist() == [4800, 9600, 14400, 7200, 14400]
    assert batch["waveform"].shape == (5, 14400)
    assert (batch["waveform"][0, 4800:] == 0).all()


def test_in_memory_audio_matches_the_file(speech, clips):
    preprocessor = speech.preprocessor()
    samples, rate = soundfile.read(clips[2], dtype="float32")
    torch.testing.assert_close(preprocessor((samples, rate))["waveform"], preprocessor(clips[2])["waveform"])


def test_ogg_is_read(speech, tmp_path):
    waveform = speech.preprocessor()(str(write_wav(tmp_path / "a.ogg", seconds=0.25, sample_rate=16000)))
    assert waveform["waveform"].shape == (4000,)


def test_speech_model_loads_saved_weights_and_masks_frames(speech, wav2vec2_folder, clips):
    saved = load_file(str(wav2vec2_folder / "model.safetensors"))
    key = next(k for k in saved if k.endswith("feature_projection.projection.weight"))
    torch.testing.assert_close(speech.model.feature_projection.projection.weight, saved[key], rtol=0, atol=0)
    assert speech.preprocessor().settings() == {
        "sample_rate": 16000, "max_seconds": 20.0, "pad_to_max": False, "normalize": True,
    }
    with torch.no_grad():
        batch, output = encode(speech, clips)
    assert_output_contract(output, 4, 32)
    # conv stack (kernel 10 stride 5, kernel 4 stride 4): frames = ((n - 10) // 5 + 1 - 4) // 4 + 1
    expected = [((n - 10) // 5 + 1 - 4) // 4 + 1 for n in batch["attention_mask"].sum(dim=1).tolist()]
    assert output.mask.sum(dim=1).tolist() == expected


@pytest.mark.parametrize("name", [SPEECH, MEL])
def test_pooled_vector_does_not_depend_on_padding(name, wav2vec2_folder, clips):
    params = {"model": str(wav2vec2_folder)} if name == SPEECH else MEL_PARAMS
    encoder = build_encoder(name, **params).eval()
    with torch.no_grad():
        _, alone = encode(encoder, [clips[0]])
        _, batched = encode(encoder, [clips[2], clips[0], clips[1]])
    torch.testing.assert_close(batched.pooled[1], alone.pooled[0], atol=1e-5, rtol=0)


def test_mel_encoder_pads_to_max_seconds_and_masks_time_steps(mel, clips):
    with torch.no_grad():
        batch, output = encode(mel, clips[:3] + [None])
    assert batch["waveform"].shape == (4, 16000)  # max_seconds 1.0 at 16 kHz
    assert_output_contract(output, 4, mel.output_dim)
    real_steps = output.mask.sum(dim=1).tolist()
    assert real_steps[0] < real_steps[1] < real_steps[2] <= output.tokens.shape[1]
    assert real_steps[3] == output.tokens.shape[1]  # missing clip: silence counted as real


def test_clips_longer_than_max_seconds_are_cropped(mel, tmp_path):
    long_clip = write_wav(tmp_path / "long.wav", seconds=2.5, sample_rate=16000)
    assert mel.preprocessor()(str(long_clip))["waveform"].shape == (16000,)


@pytest.mark.parametrize("name", [SPEECH, MEL])
def test_freezing_and_layer_groups(name, wav2vec2_folder, clips):
    params = {"model": str(wav2vec2_folder)} if name == SPEECH else MEL_PARAMS
    encoder = build_encoder(name, **params)
    batch, _ = encode(encoder, clips[:2])
    assert_layer_groups_cover_encoder(encoder, minimum=3)
    assert_freezing_controls_gradients(encoder.train(), batch)


@pytest.mark.parametrize("name", [SPEECH, MEL])
def test_export_assets_rebuilds_offline(name, wav2vec2_folder, clips, tmp_path):
    params = {"model": str(wav2vec2_folder)} if name == SPEECH else MEL_PARAMS
    encoder = build_encoder(name, **params)
    overrides = assert_export_roundtrip(name, params, encoder, clips[:2], tmp_path / "audio")
    if name == SPEECH:
        assert (tmp_path / "audio" / "preprocessor_config.json").is_file()
        assert overrides["sample_rate"] == 16000


def test_missing_corrupt_and_bad_values_are_sample_errors(speech, tmp_path):
    preprocessor = speech.preprocessor()
    assert_missing_and_corrupt_files_are_sample_errors(
        preprocessor, tmp_path, ".wav", "audio file not found", "cannot read audio"
    )
    with pytest.raises(SampleError, match="NaN"):
        preprocessor((np.array([0.0, np.nan], dtype=np.float32), 16000))
    with pytest.raises(SampleError, match="sample rate"):
        preprocessor((np.zeros(10, dtype=np.float32), 0))


def test_unknown_backbone_name_suggests_timm_names():
    with pytest.raises(ValueError, match="Did you mean.*efficientnet_b0"):
        build_encoder(MEL, model="eficientnet_b0")


def test_preprocessor_pickles_for_dataloader_workers(mel, clips):
    preprocessor = mel.preprocessor()
    assert_pickled_copy_preprocesses_alike(preprocessor, clips[0])
    assert preprocessor.reads_files is True
