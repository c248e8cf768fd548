"""A chain whose second stage distils from the first: ``teacher_from`` sets the stage's teacher
once the earlier stage is trained; bad uses are reported when the chain is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import mmfuse
from mmfuse.chain import load_chain, run_chain
from mmfuse.recipe import RecipeError
from tests.distill.teachers import student_raw, teacher_recipe, write_data


def write_chain(folder: Path, student_stage: dict, with_data: bool = True) -> Path:
    # loading a chain reads no data: the bad-chain tests skip writing it
    train_file, val_file = write_data(folder / "data") if with_data else (folder / "train.jsonl", folder / "val.jsonl")
    teacher = teacher_recipe(train_file, val_file, folder / "runs").to_dict()
    student = student_raw(train_file, val_file, folder / "runs", "unused")
    del student["tasks"]["distill"]["teacher"]
    chain = {"name": "distil", "output_dir": str(folder / "runs"),
             "stages": [{"name": "teach", "recipe": teacher}, {"name": "learn", "recipe": student, **student_stage}]}
    path = folder / "chain.yaml"
    path.write_text(yaml.safe_dump(chain, sort_keys=False))
    return path


@pytest.mark.slow
def test_a_chain_trains_a_teacher_then_distils_a_student_from_it(tmp_path):
    chain = load_chain(write_chain(tmp_path, {"teacher_from": "teach"}))
    outcome = run_chain(chain, chain_dir=tmp_path / "chain", log=lambda message: None)
    assert outcome.states == {"teach": "done", "learn": "done"}
    learned = yaml.safe_load((tmp_path / "chain" / "learn" / "recipe.yaml").read_text())["tasks"]["distill"]
    assert learned["teacher"] == str((tmp_path / "chain" / "teach" / "model").resolve())
    assert learned["labels"] == ["high", "low", "medium"]  # taken from the teacher
    assert "val/distill/teacher_agreement" in outcome.outcomes["learn"].fit.metrics
    assert list(mmfuse.load(tmp_path / "chain" / "learn").module.encoders) == ["text"]


@pytest.mark.parametrize(
    "stage, words",
    [
        ({"teacher_from": "learn"}, "'learn' is not an earlier stage"),
        ({"teacher_from": "nope"}, "'nope' is not an earlier stage"),
        ({"teacher_from": "teach", "recipe": "classify"}, "no task that takes a teacher"),
    ],
)
def test_bad_teacher_from_is_reported_when_the_chain_loads(tmp_path, stage, words):
    path = write_chain(tmp_path, {key: value for key, value in stage.items() if key != "recipe"}, with_data=False)
    if stage.get("recipe") == "classify":
        raw = yaml.safe_load(path.read_text())
        raw["stages"][1]["recipe"]["tasks"] = {"label": {"type": "classification"}}
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(RecipeError) as error:
        load_chain(path)
    assert "stages.learn.teacher_from" in str(error.value) and words in str(error.value)
