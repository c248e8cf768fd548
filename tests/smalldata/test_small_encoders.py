"""Variants of the small from-scratch encoders through the conformance kit (the default case of
each runs in tests/test_conformance_builtins.py), and their config validation."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from mmfuse.testing import SAMPLE_TEXTS, check_encoder
from mmfuse.testing.media import write_image
from mmfuse_plugins.small import ImageCNNConfig, SequenceConfig, TextSmallConfig

VOCABULARY = sorted({w for t in SAMPLE_TEXTS for w in t.split()})


def _gray_images(folder):
    rng = np.random.default_rng(4)
    return [str(write_image(folder / f"g{i}.png", rng.integers(0, 256, size=s, dtype=np.uint8)))
            for i, s in enumerate([(17, 23), (32, 32), (9, 30)])]


@pytest.mark.parametrize(
    "config",
    [
        {"channels": 1, "widths": [4, 8, 8], "pooling": "avg", "global_pooling": "max"},
        {"channels": 1, "widths": [4], "convs_per_block": 2, "kernel_size": 5, "norm": "none", "pooling": "none"},
        {"channels": 3, "widths": [4, 8], "image_size": [20, 12]},
    ],
    ids=["gray-native-avg", "gray-native-nopool", "rgb-resized"],
)
def test_image_cnn_variants_pass_the_kit(config, tmp_path):
    # native-size images of different shapes: padded in a batch, the mask keeps features unchanged
    check_encoder("mmfuse/image_cnn", config, samples=_gray_images(tmp_path), folder=tmp_path)


@pytest.mark.parametrize(
    "config",
    [
        {"architecture": "gru", "level": "char", "max_vocab": 40},
        {"architecture": "transformer", "heads": 2, "layers": 2, "vocabulary": VOCABULARY, "pooling": "max"},
        {"architecture": "conv", "layers": 2, "kernel_size": 5, "vocabulary": VOCABULARY},
    ],
    ids=["gru-char", "transformer", "conv-2-layers"],
)
def test_text_small_variants_pass_the_kit(config, tmp_path):
    check_encoder("mmfuse/text_small", {"embed_dim": 8, "hidden_size": 8, **config}, folder=tmp_path)


@pytest.mark.parametrize(
    "config",
    [
        {"input": "array", "in_channels": 3, "widths": [4, 8], "stride": 2, "hidden_size": 4},
        {"input": "audio", "recurrent": "none", "widths": [4, 4, 8], "max_seconds": 0.5, "pooling": "max"},
    ],
    ids=["array-gru", "audio-conv-only"],
)
def test_sequence_variants_pass_the_kit(config, tmp_path):
    check_encoder("mmfuse/sequence", config, folder=tmp_path)


def test_configs_reject_bad_values_with_the_field_named():
    with pytest.raises(ValidationError, match="kernel_size must be odd"):
        ImageCNNConfig(kernel_size=4)
    with pytest.raises(ValidationError, match="mean needs 1 or 3 values"):
        ImageCNNConfig(channels=3, mean=(0.1, 0.2))
    with pytest.raises(ValidationError, match="multiple of heads"):
        TextSmallConfig(architecture="transformer", hidden_size=10, heads=4)
    with pytest.raises(ValidationError, match="SpecAugment masks need a spectrogram"):
        SequenceConfig(augment={"time_masks": 2})
    with pytest.raises(ValidationError, match="crop_scale"):
        ImageCNNConfig(augment={"crop_scale": [0.9, 0.5]})


def test_text_vocabulary_larger_than_the_embedding_is_refused():
    from mmfuse_plugins.small.text import build_text_small

    with pytest.raises(ValueError, match="raise max_vocab"):
        build_text_small(TextSmallConfig(vocabulary=VOCABULARY, max_vocab=5))
