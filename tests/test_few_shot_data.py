"""``data.shots_per_class``: exactly k training rows per class, seeded and stratified; validation
untouched; clear errors naming the key."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from mmfuse.data.errors import DataError
from mmfuse.data.sources import load_splits
from mmfuse.recipe import RecipeError, parse_recipe

#: rows per class in the training manifest
COUNTS = {"a": 10, "b": 7, "c": 5}


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _rows(counts: dict[str, int], start: int = 0) -> list[dict[str, Any]]:
    rows, index = [], start
    for label, count in counts.items():
        for _ in range(count):
            rows.append({"x": [float(index), 1.0], "label": label, "colour": "red" if index % 2 else "blue"})
            index += 1
    return rows


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    return {
        "train": _write(tmp_path / "train.jsonl", _rows(COUNTS)),
        "val": _write(tmp_path / "val.jsonl", _rows({"a": 2, "b": 2, "c": 2}, start=1000)),
    }


def _recipe(files: dict[str, Path], *overrides: str, tasks: dict[str, Any] | None = None, **data: Any):
    raw = {
        "seed": 7,
        "data": {"train": str(files["train"]), **({"val": str(files["val"])} if "val" in files else {}), **data},
        "encoders": {"x": {"type": "mmfuse/vector", "input_dim": 2, "hidden_dim": 4, "output_dim": 4}},
        "fusion": {"type": "mmfuse/concat", "projection_dim": 4, "hidden_dims": [], "output_dim": 4},
        "tasks": tasks or {"label": {"type": "mmfuse/classification"}},
        "trainer": {"progress": "off", "tensorboard": "off"},
    }
    return parse_recipe(raw, overrides=list(overrides))


def _kept(splits) -> list[tuple[float, str]]:
    return sorted((row.values["x"][0], row.values["label"]) for row in splits.train.rows)


def _per_class(splits) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in splits.train.rows:
        counts[row.values["label"]] = counts.get(row.values["label"], 0) + 1
    return counts


def test_keeps_exactly_k_rows_per_class_and_reports_them(files):
    splits = load_splits(_recipe(files, "data.shots_per_class=4"))
    assert _per_class(splits) == {"a": 4, "b": 4, "c": 4}
    assert splits.shots is not None
    assert splits.shots.kept == {"a": 4, "b": 4, "c": 4}
    assert splits.shots.available == COUNTS
    assert (splits.shots.column, splits.shots.seed) == ("label", 7)  # the recipe seed by default
    assert "kept 12 of 22 training rows" in splits.shots.describe()
    lines = [row.line for row in splits.train.rows]
    assert lines == sorted(lines)  # manifest order, line numbers of the file


def test_k_equal_to_the_smallest_class_keeps_that_class_whole(files):
    splits = load_splits(_recipe(files, "data.shots_per_class=5"))
    assert _per_class(splits) == {"a": 5, "b": 5, "c": 5}
    assert {x for x, label in _kept(splits) if label == "c"} == {float(i) for i in range(17, 22)}


def test_same_seed_same_rows_whatever_the_row_order_and_another_seed_differs(files, tmp_path):
    first = _kept(load_splits(_recipe(files, "data.shots_per_class=3")))
    assert _kept(load_splits(_recipe(files, "data.shots_per_class=3"))) == first
    shuffled_rows = _rows(COUNTS)
    random.Random(1).shuffle(shuffled_rows)
    shuffled = {**files, "train": _write(tmp_path / "shuffled.jsonl", shuffled_rows)}
    assert _kept(load_splits(_recipe(shuffled, "data.shots_per_class=3"))) == first
    assert _kept(load_splits(_recipe(files, "data.shots_per_class=3", "data.shots_seed=8"))) != first
    assert _kept(load_splits(_recipe(files, "data.shots_per_class=3", "seed=8"))) != first
    # data.shots_seed decides alone: the recipe seed (model init, order) may change independently
    assert _kept(load_splits(_recipe(files, "data.shots_per_class=3", "data.shots_seed=7", "seed=99"))) == first


def test_smaller_k_rows_are_among_larger_k_rows(files):
    one = set(_kept(load_splits(_recipe(files, "data.shots_per_class=1"))))
    three = set(_kept(load_splits(_recipe(files, "data.shots_per_class=3"))))
    assert len(one) == 3 and one < three


def test_validation_file_and_split_ratio_rows_are_untouched(files):
    plain, few = load_splits(_recipe(files)), load_splits(_recipe(files, "data.shots_per_class=2"))
    assert [r.values for r in few.val.rows] == [r.values for r in plain.val.rows]
    assert len(plain.train) == 22 and plain.shots is None
    single = {"train": files["train"]}
    split = {"split": {"val": 0.2, "seed": 1}}
    plain, few = load_splits(_recipe(single, **split)), load_splits(_recipe(single, "data.shots_per_class=2", **split))
    assert [r.values for r in few.val.rows] == [r.values for r in plain.val.rows]  # split first, then the shots
    held_out = {r.values["x"][0] for r in plain.val.rows}
    assert not held_out & {x for x, _ in _kept(few)}
    assert _per_class(few) == {"a": 2, "b": 2, "c": 2}


def test_a_class_with_fewer_than_k_rows_is_an_error_naming_the_key_and_class(files):
    with pytest.raises(DataError) as caught:
        load_splits(_recipe(files, "data.shots_per_class=6"))
    message = str(caught.value)
    assert "data.shots_per_class=6" in message and "'c': 5" in message and "at most 5" in message
    assert "'b'" not in message  # b has 7 rows


def test_the_class_column_must_be_unambiguous(files):
    """Checked when the recipe is validated (`mmfuse validate`), before any data is read."""
    two = {"label": {"type": "classification"}, "colour": {"type": "prototype"}}
    with pytest.raises(RecipeError, match=r"data.shots_per_class.*several columns: 'label'.*'colour'.*set data.shots_column"):
        _recipe(files, "data.shots_per_class=2", tasks=two)
    splits = load_splits(_recipe(files, "data.shots_per_class=2", "data.shots_column=colour", tasks=two))
    assert splits.shots.kept == {"blue": 2, "red": 2} and len(splits.train) == 4
    regression = {"score": {"type": "regression", "target": "x"}}
    with pytest.raises(RecipeError, match="no single-label classification task.*data.shots_column"):
        _recipe(files, "data.shots_per_class=2", tasks=regression)
    same_column = {"label": {"type": "classification"}, "proto": {"type": "prototype", "target": "label"}}
    assert load_splits(_recipe(files, "data.shots_per_class=2", tasks=same_column)).shots.column == "label"
    with pytest.raises(DataError, match="class column 'colours'.*data.shots_column"):
        load_splits(_recipe(files, "data.shots_per_class=2", "data.shots_column=colours"))


def test_recipe_keys_are_validated(files):
    with pytest.raises(RecipeError, match="data.shots_per_class"):
        _recipe(files, "data.shots_per_class=0")
    with pytest.raises(RecipeError, match="apply only with data.shots_per_class"):
        _recipe(files, "data.shots_seed=3")


def test_a_training_run_logs_and_records_the_rows_kept(files, tmp_path, capsys):
    from mmfuse.run import SHOTS_FILE, train

    recipe = _recipe(
        files, "data.shots_per_class=3", "data.batch_size=4", "trainer.epochs=1", f"output_dir={tmp_path / 'runs'}"
    )
    outcome = train(recipe, run_dir=tmp_path / "run")
    assert "few-shot: data.shots_per_class=3 (classes from column 'label', seed 7) kept 9 of 22" in capsys.readouterr().out
    recorded = json.loads((outcome.run_dir / SHOTS_FILE).read_text())
    assert recorded["kept"] == {"a": 3, "b": 3, "c": 3} and recorded["available"] == COUNTS
    assert outcome.fit.global_step == 3  # 9 rows in batches of 4
    assert "3 per class of column &#x27;label&#x27; (seed 7): a: 3 of 10" in (outcome.run_dir / "report.html").read_text()
