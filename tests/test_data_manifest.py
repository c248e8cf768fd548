"""Manifests, splits and label fitting: the torch-free half of the data pipeline."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from mmfuse.data.errors import DataError, describe_error
from mmfuse.data.manifest import read_manifest
from mmfuse.data.sources import load_splits
from mmfuse.data.split import stratified_split
from mmfuse.data.targets import fit_task_targets
from mmfuse.recipe import RecipeError, load_recipe, parse_recipe


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


RECIPE = """\
encoders: {{f: {{type: vector, input_dim: 2}}}}
fusion: {{type: concat}}
tasks: {{label: {{type: classification}}}}
data: {data}
"""


def test_jsonl_and_csv_rows_keep_their_line_numbers(tmp_path):
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"a": 1}\n\n{"a": 2, "b": null}\n')
    manifest = read_manifest(jsonl)
    assert [(row.line, row.values) for row in manifest.rows] == [(1, {"a": 1}), (3, {"a": 2, "b": None})]
    assert manifest.root == tmp_path

    csv = tmp_path / "m.csv"
    csv.write_text("text,label\nhello,x\n,y\n")
    rows = read_manifest(csv).rows
    assert [(row.line, row.values) for row in rows] == [(2, {"text": "hello", "label": "x"}), (3, {"text": None, "label": "y"})]


def test_tsv_by_extension_and_format_option(tmp_path):
    tsv = tmp_path / "m.tsv"
    tsv.write_text("text\tlabel\nhi there\tx\n")
    assert read_manifest(tsv).rows[0].values == {"text": "hi there", "label": "x"}
    odd = tmp_path / "m.data"
    odd.write_text("text;label\nhi;x\n")
    with pytest.raises(DataError, match="data.format"):
        read_manifest(odd)
    rows = read_manifest(odd, format="csv", reader_options={"delimiter": ";"}).rows
    assert rows[0].values == {"text": "hi", "label": "x"}
    with pytest.raises(DataError, match="reader_options.*delimiter"):
        read_manifest(odd, format="csv", reader_options={"delimiter": ";;"})


def test_invalid_json_line_names_manifest_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError) as info:
        read_manifest(path)
    assert f"{path} line 2: invalid JSON" in str(info.value)
    assert info.value.line == 2


def test_missing_and_empty_manifests(tmp_path):
    with pytest.raises(DataError, match="data.train manifest not found"):
        read_manifest(tmp_path / "nope.jsonl", role="data.train")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        read_manifest(tmp_path / "empty.jsonl")


def test_stratified_split_is_seeded_and_keeps_class_balance():
    keys = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    train, val, test = stratified_split(keys, val=0.2, test=0.1, seed=7)
    assert sorted(train + val + test) == list(range(100))
    assert Counter(keys[i] for i in val) == {"a": 12, "b": 6, "c": 2}
    assert Counter(keys[i] for i in test) == {"a": 6, "b": 3, "c": 1}
    assert stratified_split(keys, 0.2, 0.1, seed=7) == (train, val, test)
    assert stratified_split(keys, 0.2, 0.1, seed=8)[1] != val


def test_split_keeps_a_training_row_in_every_class():
    train, val, _ = stratified_split(["a", "b", "b"], val=0.5, test=0.0, seed=0)
    assert 0 in train and len(val) == 1


def test_load_splits_resolves_paths_against_the_recipe_and_splits(tmp_path):
    rows = [{"f": [i, i], "label": "pos" if i % 4 else "neg"} for i in range(40)]
    write_jsonl(tmp_path / "data" / "all.jsonl", rows)
    recipe_path = tmp_path / "recipes" / "r.yaml"
    recipe_path.parent.mkdir()
    recipe_path.write_text(RECIPE.format(data="{train: ../data/all.jsonl, split: {val: 0.25, seed: 3}}"))
    recipe = load_recipe(recipe_path)
    splits = load_splits(recipe)
    assert splits.train.path == tmp_path / "recipes" / ".." / "data" / "all.jsonl"
    assert len(splits.train) == 30 and len(splits.val) == 10 and splits.test is None
    # stratified on the classification target by default: 'neg' is 1 row in 4
    assert Counter(row.values["label"] for row in splits.val.rows) == {"pos": 8, "neg": 2}
    # line numbers are those of the source file
    assert {row.line for row in splits.val.rows} <= set(range(1, 41))

    fit_task_targets(recipe, splits.train)
    assert recipe.tasks["label"].params.labels == ["neg", "pos"]
    assert "- neg" in recipe.to_yaml()


def test_split_and_val_file_together_is_a_recipe_error(tmp_path):
    raw = {
        "encoders": {"f": {"type": "vector", "input_dim": 2}},
        "fusion": {"type": "concat"},
        "tasks": {"label": {"type": "classification"}},
        "data": {"train": "a.jsonl", "val": "b.jsonl", "split": {"val": 0.2}},
    }
    with pytest.raises(RecipeError, match="either data.val"):
        parse_recipe(raw)


def test_missing_train_and_unknown_stratify_column(tmp_path):
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(RECIPE.format(data="{}"))
    with pytest.raises(DataError, match="set data.train"):
        load_splits(load_recipe(recipe_path))
    write_jsonl(tmp_path / "all.jsonl", [{"f": [0, 0], "label": "a"}] * 10)
    recipe_path.write_text(RECIPE.format(data="{train: all.jsonl, split: {val: 0.2, stratify: labl}}"))
    # caught while the recipe is validated (mmfuse validate), before any data is split
    with pytest.raises(RecipeError, match="names column 'labl'.*Did you mean 'label'"):
        load_recipe(recipe_path)


def test_describe_error_drops_the_worker_traceback():
    text = (
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nmmfuse.data.errors.DataError: m.jsonl line 3, column \'image\': file not found: a.png'
    )
    assert describe_error(DataError(text)) == "m.jsonl line 3, column 'image': file not found: a.png"
    assert str(DataError("boom", manifest="m.csv", line=4, column="text")) == "m.csv line 4, column 'text': boom"
