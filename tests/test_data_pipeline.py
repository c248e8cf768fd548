"""Dataset + collate: preprocessing in workers, presence masks, and every bad-data error."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from mmfuse.contracts import Preprocessor, SampleError
from mmfuse.data.collate import BatchCollator
from mmfuse.data.dataset import ManifestDataset, Sample, Skipped
from mmfuse.data.errors import DataError, describe_error
from mmfuse.data.manifest import read_manifest
from mmfuse.plugin_host import get_registry
from mmfuse_plugins.tasks import ClassificationConfig
from mmfuse_plugins.vector.encoder import VectorPreprocessor
from mmfuse.testing.media import write_corrupt_file, write_png


class MeanColour(Preprocessor):
    """Reads a PNG file; returns its mean RGB colour and the pid of the process that read it."""

    modality = "image"
    reads_files = True

    def __call__(self, value):
        import numpy as np
        from PIL import Image

        if not isinstance(value, str) or not os.path.isabs(value):
            raise SampleError(f"expected an absolute path, got {value!r}")
        with Image.open(value) as image:
            pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32))
        return {"colour": pixels.mean((0, 1)), "pid": torch.tensor(os.getpid())}

    def collate(self, items):
        blank = {"colour": torch.zeros(3), "pid": torch.tensor(-1)}
        rows = [blank if item is None else item for item in items]
        return {key: torch.stack([row[key] for row in rows]) for key in blank}


def classification(labels):
    return get_registry().get("task", "classification").build(
        ClassificationConfig(labels=labels), fused_dim=4, encoder_dims={}
    )


def make_manifest(tmp_path: Path, rows: list[dict]) -> Path:
    (tmp_path / "img").mkdir(exist_ok=True)
    for index in range(3):
        write_png(tmp_path / "img" / f"{index}.png", size=(4, 4), seed=index)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def dataset(path: Path, labels=("a", "b"), **options) -> ManifestDataset:
    return ManifestDataset(
        read_manifest(path),
        columns={"image": "image", "vec": "features"},
        preprocessors={"image": MeanColour(), "vec": VectorPreprocessor(2)},
        targets={"label": ("label", classification(list(labels)))},
        **options,
    )


GOOD_ROWS = [
    {"image": "img/0.png", "features": [1, 2], "label": "a"},
    {"image": "img/1.png", "label": "b"},  # no vector
    {"image": None, "features": [3, 4], "label": "a"},  # no image
    {"image": "img/2.png", "features": [5, 6], "label": "b"},
]


def test_collate_pads_and_builds_presence_masks(tmp_path):
    data = dataset(make_manifest(tmp_path, GOOD_ROWS))
    collate = BatchCollator(data.preprocessors, {"label": classification(["a", "b"])})
    batch = next(iter(DataLoader(data, batch_size=4, collate_fn=collate)))
    assert batch["present"]["image"].tolist() == [True, True, False, True]
    assert batch["present"]["vec"].tolist() == [True, False, True, True]
    assert batch["inputs"]["vec"]["values"][2].tolist() == [3.0, 4.0]
    assert batch["inputs"]["image"]["colour"].shape == (4, 3)
    assert batch["targets"]["label"].tolist() == [0, 1, 0, 1]
    assert batch["skipped"] == 0
    assert batch["index"].tolist() == [0, 1, 2, 3]


def test_preprocessing_runs_in_worker_processes(tmp_path):
    data = dataset(make_manifest(tmp_path, GOOD_ROWS))
    collate = BatchCollator(data.preprocessors, {"label": classification(["a", "b"])})
    loader = DataLoader(data, batch_size=2, collate_fn=collate, num_workers=2)
    pids = {pid for batch in loader for pid in batch["inputs"]["image"]["pid"].tolist() if pid != -1}
    assert pids and os.getpid() not in pids


def test_missing_file_names_manifest_line_and_column(tmp_path):
    rows = GOOD_ROWS + [{"image": "img/missing.png", "features": [0, 0], "label": "a"}]
    path = make_manifest(tmp_path, rows)
    with pytest.raises(DataError) as info:
        dataset(path)
    message = str(info.value)
    assert f"{path} line 5, column 'image': file not found: {tmp_path / 'img' / 'missing.png'}" in message
    assert "data.on_bad_sample=skip" in message and message.count("file not found") == 1


def test_corrupt_file_names_manifest_line_and_column_even_from_a_worker(tmp_path):
    write_corrupt_file(tmp_path / "img" / "bad.png")
    rows = GOOD_ROWS + [{"image": "img/bad.png", "features": [0, 0], "label": "a"}]
    path = make_manifest(tmp_path, rows)
    data = dataset(path)  # the file exists: found only when read
    with pytest.raises(DataError) as info:
        data[4]
    assert f"{path} line 5, column 'image': cannot read image file" in str(info.value)
    assert "UnidentifiedImageError" in str(info.value)
    collate = BatchCollator(data.preprocessors, {"label": classification(["a", "b"])})
    with pytest.raises(DataError) as info:
        list(DataLoader(data, batch_size=5, collate_fn=collate, num_workers=1))
    assert describe_error(info.value).startswith(f"{path} line 5, column 'image': cannot read image file")


def test_row_without_target_names_manifest_line_and_column(tmp_path):
    rows = GOOD_ROWS + [{"image": "img/0.png", "features": [0, 0]}]
    path = make_manifest(tmp_path, rows)
    with pytest.raises(DataError, match=rf"{path} line 5, column 'label': missing target for task 'label'"):
        dataset(path)


def test_unknown_label_at_evaluation_names_manifest_line_and_column(tmp_path):
    rows = [dict(GOOD_ROWS[0]), dict(GOOD_ROWS[2], label="zebra")]
    path = make_manifest(tmp_path, rows)
    with pytest.raises(DataError) as info:
        dataset(path, labels=("a", "b"))
    assert f"{path} line 2, column 'label': bad target for task 'label': unknown label 'zebra'" in str(info.value)


def test_misnamed_column_is_reported_with_the_manifest_columns(tmp_path):
    path = make_manifest(tmp_path, GOOD_ROWS)
    with pytest.raises(DataError, match=r"no row has column 'picture'.*encoders.image.column"):
        ManifestDataset(
            read_manifest(path), columns={"image": "picture"}, preprocessors={"image": MeanColour()}
        )


def test_skip_mode_drops_bad_rows_and_counts_them_every_epoch(tmp_path, caplog):
    write_corrupt_file(tmp_path / "img" / "bad.png")
    rows = GOOD_ROWS + [
        {"image": "img/missing.png", "features": [0, 0], "label": "a"},  # missing file
        {"image": "img/bad.png", "features": [0, 0], "label": "a"},  # corrupt file
        {"image": "img/0.png", "features": [0, 0]},  # no target
        {"image": "img/0.png", "features": [0, 0], "label": "zebra"},  # unknown label
    ]
    with caplog.at_level(logging.WARNING, logger="mmfuse.data"):
        data = dataset(make_manifest(tmp_path, rows), on_bad_sample="skip")
    assert "3 of 8 rows will be skipped" in caplog.text
    assert isinstance(data[5], Skipped) and isinstance(data[0], Sample)
    collate = BatchCollator(data.preprocessors, {"label": classification(["a", "b"])})
    for _ in range(2):
        batches = list(DataLoader(data, batch_size=3, collate_fn=collate))
        assert sum(batch["skipped"] for batch in batches) == 4
        assert sum(len(batch["targets"].get("label", [])) for batch in batches) == 4
    assert "line 6, column 'image': cannot read image file" in caplog.text


def test_a_batch_of_only_skipped_rows_is_empty(tmp_path):
    collate = BatchCollator({"vec": VectorPreprocessor(2)}, {"label": classification(["a", "b"])})
    batch = collate([Skipped("x"), Skipped("y")])
    assert batch["skipped"] == 2 and batch["inputs"] == {} and batch["targets"] == {}
    assert batch["index"].tolist() == []
