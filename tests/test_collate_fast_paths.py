"""The batch-level collate paths (one stack / one pad call per batch, for warm-cache epochs) give
exactly the tensors of the per-row padding path they replace."""

from __future__ import annotations

import torch

from mmfuse.cache.samples import SAMPLE_KEY, split_sample_keys
from mmfuse.preprocessing.image import ImagePreprocessor
from mmfuse.preprocessing.waveform import WaveformPreprocessor


def _equal(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype and torch.equal(actual[key], value), key


def test_full_size_images_are_stacked_like_the_padded_path():
    settings = {"image_size": [8, 6], "channels": 3, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0}
    preprocessor = ImagePreprocessor(settings, with_mask=True)
    items = [{"pixels": torch.randn(3, 8, 6)} for _ in range(4)]
    stacked = preprocessor.collate(items)  # every row present at the full size: the stack path
    padded = preprocessor.collate(items + [None])  # a missing row: the per-row path
    _equal(stacked, {key: value[:4] for key, value in padded.items()})
    assert stacked["pixels"].data_ptr() != items[0]["pixels"].data_ptr()  # a copy, never a view of a sample
    smaller = preprocessor.collate([{"pixels": torch.ones(3, 4, 6)}, *items[:1]])  # a smaller image is padded
    assert stacked["pixels"].shape[1:] == smaller["pixels"].shape[1:] and not smaller["pixel_mask"][0].all()


def test_full_length_clips_are_stacked_like_the_padded_path():
    preprocessor = WaveformPreprocessor(sample_rate=100, max_seconds=0.2, pad_to_max=True)
    items = [{"waveform": torch.randn(20)} for _ in range(3)]
    stacked = preprocessor.collate(items)
    padded = preprocessor.collate(items + [None])
    _equal(stacked, {key: value[:3] for key, value in padded.items()})
    short = preprocessor.collate([{"waveform": torch.randn(12)}, *items])
    assert short["attention_mask"][0].sum() == 12 and short["waveform"][0, 12:].eq(0).all()


def test_text_batches_pad_like_row_by_row(tmp_path):
    from mmfuse.testing.tiny_models import save_tiny_bert
    from mmfuse_plugins.text_hf.encoder import TextPreprocessor
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(save_tiny_bert(tmp_path / "bert"))
    preprocessor = TextPreprocessor(tokenizer, max_length=16)
    items = [preprocessor("a cat"), None, preprocessor("the dog ran far away today"), preprocessor("")]
    batch = preprocessor.collate(items)
    rows = [preprocessor._blank if item is None else item for item in items]
    length = max(row["input_ids"].shape[0] for row in rows)
    ids = torch.full((len(rows), length), int(tokenizer.pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for index, row in enumerate(rows):  # the row-by-row reference
        ids[index, : row["input_ids"].shape[0]] = row["input_ids"]
        mask[index, : row["input_ids"].shape[0]] = 1
    _equal(batch, {"input_ids": ids, "attention_mask": mask})


def test_sample_keys_are_taken_out_in_one_batch():
    key = torch.tensor([5, -7])
    values = [{"x": torch.ones(1), SAMPLE_KEY: key}, None, {"x": torch.zeros(1)}]
    cleaned, keys = split_sample_keys(values)
    assert torch.equal(keys, torch.tensor([[5, -7], [0, 0], [0, 0]]))
    assert cleaned[0] == {"x": values[0]["x"]} and cleaned[1] is None and cleaned[2] is values[2]
    keys[0, 0] = 1
    assert key[0] == 5  # the batch holds a copy: a cached key is never changed through it
    plain = [{"x": torch.ones(1)}, None]
    unchanged, none = split_sample_keys(plain)
    assert none is None and unchanged is plain
