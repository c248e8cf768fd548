"""Augmentation happens on the training split only, is seeded per (seed, epoch, index, encoder),
and a resumed run trains bit-identically to an uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mmfuse.data.augmentation import SampleIndex
from mmfuse.run import prepare, train
from tests.smalldata.conftest import small_recipe

AUGMENT = (
    "encoders.image.augment.crop_scale=[0.6,1.0]",
    "encoders.image.augment.hflip=0.5",
    "encoders.image.augment.rotation=15",
    "encoders.image.augment.brightness=0.3",
    "encoders.image.augment.contrast=0.3",
    "encoders.audio.augment.gain_db=6",
    "encoders.audio.augment.shift_seconds=0.05",
    "encoders.audio.augment.noise_snr_db=10",
    "encoders.audio.augment.time_masks=1",
    "encoders.audio.augment.freq_masks=1",
    "encoders.text.augment.token_dropout=0.3",
)


def _inputs(dataset, index, epoch=0):
    return dataset[SampleIndex(index, epoch)].inputs


def _same(left, right) -> bool:
    return all(torch.equal(left[n][k], right[n][k]) for n in left for k in left[n])


def test_training_split_is_augmented_reproducibly_and_evaluation_never(small_data, tmp_path):
    prepared = prepare(small_recipe(small_data, tmp_path / "runs", *AUGMENT))
    again = prepare(small_recipe(small_data, tmp_path / "runs", *AUGMENT))
    plain = prepare(small_recipe(small_data, tmp_path / "runs"))
    changed = {name: 0 for name in ("image", "audio", "text")}
    for index in range(len(prepared.train)):
        augmented = _inputs(prepared.train, index)
        assert _same(augmented, _inputs(again.train, index)), "same seed, epoch and index: same augmentation"
        assert not _same(augmented, _inputs(prepared.train, index, epoch=1)), "a new epoch draws anew"
        reference = _inputs(plain.train, index)
        for name in changed:
            ref, aug = reference[name], augmented[name]
            assert set(ref) == set(aug) and all(ref[k].dtype == aug[k].dtype for k in ref)
            changed[name] += not all(torch.equal(ref[k], aug[k]) for k in ref)
    assert all(count >= len(prepared.train) // 2 for count in changed.values()), changed
    # the validation split is the deterministic output, whatever the epoch
    for index in range(len(prepared.val)):
        assert _same(_inputs(prepared.val, index, epoch=3), _inputs(plain.val, index))


def test_spec_augment_masks_in_training_mode_only(small_data, tmp_path):
    prepared = prepare(small_recipe(small_data, tmp_path / "runs", *AUGMENT))
    encoder = prepared.model.encoders["audio"]
    batch = prepared.collate([prepared.val[i] for i in range(len(prepared.val))])["inputs"]["audio"]
    encoder.eval()
    with torch.no_grad():
        first, second = encoder(batch).pooled, encoder(batch).pooled
    assert torch.equal(first, second)
    encoder.train()
    torch.manual_seed(0)
    with torch.no_grad():
        masked = encoder.spec_augment(encoder.spectrogram(batch["waveform"]), encoder.spectrogram.fill_value())
    assert (masked == encoder.spectrogram.fill_value()).any()


@pytest.mark.slow
def test_a_resumed_run_trains_bit_identically(small_data, tmp_path):
    straight = train(small_recipe(small_data, tmp_path / "a", *AUGMENT, "trainer.epochs=3"), run_dir=tmp_path / "a")
    stopped = small_recipe(small_data, tmp_path / "b", *AUGMENT, "trainer.epochs=3", "trainer.max_steps=3",
                           "trainer.checkpoint.every_steps=1")
    train(stopped, run_dir=tmp_path / "b")
    resumed = train(small_recipe(small_data, tmp_path / "b", *AUGMENT, "trainer.epochs=3"), resume=tmp_path / "b")
    expected = load_file(straight.model_dir / "model.safetensors")
    actual = load_file(resumed.model_dir / "model.safetensors")
    assert expected.keys() == actual.keys()
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert not different, different[:5]


def test_video_clip_gets_one_set_of_image_parameters_and_ordered_jitter(tmp_path):
    from mmfuse.augment import VideoAugmentConfig
    from mmfuse.augment.image import jitter_frame_order
    from mmfuse_plugins.video.decode import VideoPreprocessor
    from mmfuse.data.augmentation import sample_generator

    settings = {"image_size": [8, 8], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3,
                "crop_pct": 1.0, "crop_mode": "center"}
    flip = VideoPreprocessor(settings, 4, "uniform", None, augment=VideoAugmentConfig(hflip=1.0))
    frames = torch.rand(4, 3, 8, 8) * 2 - 1
    frames[3] = 0  # one padding frame
    mask = torch.tensor([1, 1, 1, 0])
    out = flip.augment({"frames": frames, "frame_mask": mask}, sample_generator(0, 0, 0, "video"))["frames"]
    assert torch.allclose(out[:3], frames[:3].flip(-1), atol=1e-6), "every real frame flipped alike"
    assert torch.equal(out[3], frames[3]), "padding frames untouched"
    order = jitter_frame_order(16, VideoAugmentConfig(temporal_jitter=2), sample_generator(0, 0, 1, "video"))
    assert torch.equal(order, order.sort().values) and not torch.equal(order, torch.arange(16))
    assert int((order - torch.arange(16)).abs().max()) <= 2 * 2


def test_text_hf_token_dropout_keeps_special_tokens(tmp_path):
    from mmfuse.testing.tiny_models import save_tiny_bert
    from mmfuse_plugins.text_hf import TextHFConfig
    from mmfuse_plugins.text_hf.encoder import build_text_encoder
    from mmfuse.data.augmentation import sample_generator

    config = TextHFConfig(model=str(save_tiny_bert(tmp_path / "bert")), augment={"token_dropout": 0.999})
    preprocessor = build_text_encoder(config).preprocessor()
    item = preprocessor("the cat sat on the mat")
    out = preprocessor.augment(item, sample_generator(0, 0, 0, "text"))["input_ids"]
    tokenizer = preprocessor.tokenizer
    assert out[0] == tokenizer.cls_token_id and out[-1] == tokenizer.sep_token_id
    assert (out[1:-1] == tokenizer.mask_token_id).all() and out.shape == item["input_ids"].shape


@pytest.mark.parametrize("channels", [1, 3])
def test_every_image_step_runs_on_gray_and_rgb_and_is_reproducible(channels):
    from mmfuse.data.augmentation import sample_generator
    from mmfuse.augment import ImageAugmentConfig
    from mmfuse.augment.image import ImageAugmenter

    config = ImageAugmentConfig(
        crop_scale=[0.5, 1.0], hflip=0.5, vflip=0.5, rotation=10, brightness=0.2, contrast=0.2,
        saturation=0.2, hue=0.1, rand_augment=True,
    )
    augmenter = ImageAugmenter(config, [0.5] * channels, [0.25] * channels)
    pixels = (torch.rand(channels, 20, 24) - 0.5) / 0.25
    first = augmenter(pixels, sample_generator(0, 0, 0, "image"))
    assert first.shape == pixels.shape and first.dtype == pixels.dtype
    assert torch.equal(first, augmenter(pixels, sample_generator(0, 0, 0, "image")))
    assert not torch.equal(first, augmenter(pixels, sample_generator(0, 1, 0, "image")))
    # values stay inside the normalised image range
    assert float(first.min()) >= -2.0 - 1e-5 and float(first.max()) <= 2.0 + 1e-5
