"""Hostile data, one test per case of docs/bad_inputs.md: each gets a clear error naming the
manifest, the line and the column (or is skipped and counted), never a library traceback."""

from __future__ import annotations

import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmfuse.contracts import Preprocessor, SampleError
from mmfuse.data.collate import BatchCollator
from mmfuse.data.dataset import ManifestDataset, Skipped
from mmfuse.data.errors import DataError
from mmfuse.data.manifest import read_manifest
from mmfuse.data.targets import fit_task_targets
from mmfuse.model import build_fused_model
from mmfuse.plugin_host import get_registry
from mmfuse.predict import Predictor
from mmfuse.recipe import load_recipe, parse_recipe
from mmfuse.testing.media import write_png
from mmfuse.preprocessing.image import load_rgb_image
from mmfuse_plugins.tasks import ClassificationConfig, RegressionConfig
from mmfuse_plugins.vector.encoder import VectorPreprocessor
from tests.model_folder_plugin import VECTOR_SAMPLES, vector_recipe


def write_png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` pixels and holds almost none: what PIL's
    decompression-bomb check sees, written in microseconds."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    return path


class GreyLevel(Preprocessor):
    """An image file through image_timm's loader -> its mean grey level as a 1-vector."""

    modality = "image"
    reads_files = True

    def __call__(self, value):
        return {"grey": torch.tensor([float(np.asarray(load_rgb_image(value)).mean())])}

    def collate(self, items):
        return {"grey": torch.stack([torch.zeros(1) if item is None else item["grey"] for item in items])}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def task(kind: str, config):
    return get_registry().get("task", kind).build(config, fused_dim=4, encoder_dims={})


def vector_dataset(path: Path, target_task, **options) -> ManifestDataset:
    return ManifestDataset(
        read_manifest(path),
        columns={"vec": "features"},
        preprocessors={"vec": VectorPreprocessor(2)},
        targets={"y": ("y", target_task)},
        **options,
    )


# --------------------------------------------------------------------------- media files


def test_decompression_bomb_png_is_a_sample_error_and_skip_mode_counts_it(tmp_path):
    bomb = write_png_header_only(tmp_path / "bomb.png", 16000, 16000)
    with pytest.raises(SampleError, match="too large to decode safely"):
        load_rgb_image(str(bomb))
    write_png(tmp_path / "ok.png", size=(4, 4))
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"image": "ok.png"}, {"image": "bomb.png"}])
    data = ManifestDataset(read_manifest(manifest), columns={"image": "image"}, preprocessors={"image": GreyLevel()}, on_bad_sample="skip")
    assert isinstance(data[1], Skipped) and "line 2, column 'image'" in data[1].reason
    batch = next(iter(DataLoader(data, batch_size=2, collate_fn=BatchCollator({"image": GreyLevel()}, {}))))
    assert batch["skipped"] == 1
    with pytest.raises(DataError, match=r"m.jsonl line 2, column 'image': image .*bomb.png is too large"):
        ManifestDataset(read_manifest(manifest), columns={"image": "image"}, preprocessors={"image": GreyLevel()})[1]


def test_decompression_bomb_in_the_predictor_is_a_sample_error(tmp_path):
    recipe = parse_recipe(vector_recipe())
    predictor = Predictor(build_fused_model(recipe), recipe)
    predictor.preprocessors["feats"] = GreyLevel()
    bomb = write_png_header_only(tmp_path / "bomb.png", 16000, 16000)
    with pytest.raises(SampleError, match="sample 0, column 'feats': image .*too large"):
        predictor.predict([{"feats": str(bomb)}])


def test_a_decoders_own_error_in_the_predictor_is_a_sample_error():
    class Broken(GreyLevel):
        def __call__(self, value):
            raise OSError("unexpected end of stream")

    recipe = parse_recipe(vector_recipe())
    predictor = Predictor(build_fused_model(recipe), recipe)
    predictor.preprocessors["feats"] = Broken()
    with pytest.raises(SampleError, match="sample 0, column 'feats': cannot read it .OSError: unexpected end"):
        predictor.predict(VECTOR_SAMPLES[:1])


def test_wav_declaring_1_hz_is_cropped_before_it_is_resampled(tmp_path, monkeypatch):
    import soundfile
    import torchaudio.functional

    from mmfuse.preprocessing.waveform import WaveformPreprocessor

    file = tmp_path / "slow.wav"
    soundfile.write(str(file), np.zeros(40_000, dtype=np.int16), samplerate=1, subtype="PCM_16")  # 80 KB
    resampled_lengths = []
    original = torchaudio.functional.resample

    def recording_resample(waveform, orig_freq, new_freq, *args, **kwargs):
        resampled_lengths.append(waveform.shape[-1])
        return original(waveform, orig_freq, new_freq, *args, **kwargs)

    monkeypatch.setattr(torchaudio.functional, "resample", recording_resample)
    preprocessor = WaveformPreprocessor(sample_rate=16000, max_seconds=2.0)
    waveform = preprocessor(str(file))["waveform"]
    assert waveform.shape == (32000,)
    assert resampled_lengths == [3]  # 2 s at 1 Hz, plus one frame for the resampler's edge; not 40,000


def test_media_path_that_is_a_folder_says_so(tmp_path):
    (tmp_path / "clips").mkdir()
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"image": "clips"}])
    with pytest.raises(DataError, match=r"m.jsonl line 1, column 'image': .*clips is a folder, not a file"):
        ManifestDataset(read_manifest(manifest), columns={"image": "image"}, preprocessors={"image": GreyLevel()})


# --------------------------------------------------------------------------- manifest files


def test_manifest_path_that_is_a_folder_says_so(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"data.train manifest .*train is a folder, not a file"):
        read_manifest(tmp_path / "train", role="data.train", format="jsonl")


def test_csv_cell_over_the_field_limit_names_the_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("text,label\nshort,a\n" + "x" * 131_073 + ",b\n")
    with pytest.raises(DataError) as info:
        read_manifest(path)
    assert info.value.line == 3
    assert "m.csv line 3: a cell is longer than 131072 characters" in str(info.value)


def test_non_utf8_bytes_in_jsonl_name_the_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError) as info:
        read_manifest(path)
    assert info.value.line == 2
    assert "line 2: not UTF-8 text (byte 0xe9 at character 14)" in str(info.value)


def test_non_utf8_bytes_in_csv_name_the_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"text,label\nok,a\ncaf\xe9,b\n")
    with pytest.raises(DataError, match="m.csv line 3: not UTF-8 text"):
        read_manifest(path)


def test_deeply_nested_jsonl_row_names_the_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n' + "[" * 200_000 + "]" * 200_000 + "\n")
    with pytest.raises(DataError, match="m.jsonl line 2: JSON nested too deeply"):
        read_manifest(path)


# --------------------------------------------------------------------------- targets


def _recipe_over(tmp_path: Path, rows: list[dict], task_type: str = "classification"):
    write_jsonl(tmp_path / "train.jsonl", rows)
    (tmp_path / "r.yaml").write_text(
        "encoders: {f: {type: vector, input_dim: 2, column: features}}\nfusion: {type: concat}\n"
        f"tasks: {{y: {{type: {task_type}}}}}\ndata: {{train: train.jsonl}}\n"
    )
    return load_recipe(tmp_path / "r.yaml"), read_manifest(tmp_path / "train.jsonl")


def test_every_row_with_the_same_label_is_a_clear_data_error(tmp_path):
    recipe, train = _recipe_over(tmp_path, [{"features": [1, 2], "y": "cat"}] * 4)
    with pytest.raises(DataError) as info:
        fit_task_targets(recipe, train)
    message = str(info.value)
    assert "train.jsonl column 'y'" in message
    assert "every row has the same label 'cat', and a classifier needs at least 2 classes" in message


@pytest.mark.parametrize("bad", [["cat", "dog"], {"name": "cat"}], ids=["list", "dict"])
def test_list_or_dict_label_is_rejected_with_line_and_column(tmp_path, bad):
    rows = [{"features": [1, 2], "y": "cat"}, {"features": [1, 2], "y": "dog"}, {"features": [3, 4], "y": bad}]
    recipe, train = _recipe_over(tmp_path, rows)
    fit_task_targets(recipe, train)
    assert recipe.tasks["y"].params.labels == ["cat", "dog"]  # the bad value did not become a class
    with pytest.raises(DataError, match=r"train.jsonl line 3, column 'y': bad target for task 'y': a label is one value"):
        vector_dataset(train.path, task("classification", recipe.tasks["y"].params))


def test_regression_target_true_is_rejected_with_line_and_column(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"features": [1, 2], "y": 0.5}, {"features": [1, 2], "y": True}])
    with pytest.raises(DataError, match=r"m.jsonl line 2, column 'y': bad target for task 'y': regression target must be a number"):
        vector_dataset(path, task("regression", RegressionConfig()))


def test_a_number_among_text_labels_is_warned_about_with_its_line(tmp_path, caplog):
    rows = [{"features": [1, 2], "y": "cat"}, {"features": [1, 2], "y": "dog"}, {"features": [1, 2], "y": 7}]
    recipe, train = _recipe_over(tmp_path, rows)
    with caplog.at_level(logging.WARNING, logger="mmfuse.data"):
        fit_task_targets(recipe, train)
    assert "column 'y': task 'y' learned text labels and number labels [7] (first at line 3)" in caplog.text
    caplog.clear()
    recipe, train = _recipe_over(tmp_path, [{"features": [1, 2], "y": n} for n in (0, 1, 2)])
    with caplog.at_level(logging.WARNING, logger="mmfuse.data"):
        fit_task_targets(recipe, train)
    assert caplog.text == ""  # all-number labels are a normal vocabulary


def test_fit_targets_raising_names_the_task_column_and_manifest(tmp_path):
    recipe, train = _recipe_over(tmp_path, [{"features": [1, 2], "y": "a"}], task_type="multilabel")
    train.rows[0].values["y"] = None  # no labels at all: MultilabelConfig.fit_targets raises
    with pytest.raises(DataError, match=r"train.jsonl column 'y': task 'y' cannot learn from the training targets: multilabel: no labels"):
        fit_task_targets(recipe, train)
