"""Distillation from a trained run as teacher, computed in the student's step: a text + image +
audio teacher trained by ``mmfuse.run.train`` distils into a text-only student."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

import mmfuse
from mmfuse.balance.config import UnimodalAuxConfig
from mmfuse.export import export_model
from mmfuse.folder_manifest import sha256_of
from mmfuse.recipe import RecipeError, parse_recipe
from mmfuse.run import prepare, train
from tests.distill.teachers import student_raw, train_teacher
from tests.engine.torchrun import train_under_torchrun

TEACHER_LABELS = ["high", "low", "medium"]  # learned by the teacher (sorted)
STUDENT_LABELS = ["medium", "high", "low"]  # another order: mapped by name


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """(train manifest, val manifest, teacher run folder), trained once for the module."""
    return train_teacher(tmp_path_factory.mktemp("teacher"))


def with_missing_modalities(train_file: Path, folder: Path) -> Path:
    """The training manifest with absolute media paths, row 0 without its image and row 1
    without its audio (the teacher must treat them as at its own inference: masked)."""
    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    for row in rows:
        for column in ("image", "audio", "video"):
            row[column] = str(train_file.parent / row[column])
    rows[0]["image"] = None
    rows[1]["audio"] = None
    out = folder / "train.jsonl"
    out.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return out


def student_recipe(teacher, folder: Path, **task):
    train_file, val_file, run_dir = teacher
    return parse_recipe(student_raw(with_missing_modalities(train_file, folder), val_file, folder / "runs", run_dir, **task))


def teacher_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in mmfuse.load(run_dir).module.state_dict().items()}


def test_a_distillation_run_from_a_teacher_run(teacher, tmp_path):
    _, _, teacher_dir = teacher
    before = teacher_weights(teacher_dir)
    digest = sha256_of(teacher_dir / "model" / "model.safetensors")
    recipe = student_recipe(teacher, tmp_path, alpha=0.5, target="label", labels=STUDENT_LABELS)
    outcome = train(recipe, run_dir=tmp_path / "student")

    # the teacher is unchanged, and none of it is in the student's folder
    after = teacher_weights(teacher_dir)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert sha256_of(teacher_dir / "model" / "model.safetensors") == digest
    saved = load_file(outcome.model_dir / "model.safetensors")
    assert {key.split(".")[0] for key in saved} <= {"encoders", "fusion", "tasks", "loss_weighting"}
    assert not any(key.startswith(("encoders.image", "encoders.audio")) or "teacher" in key for key in saved)
    saved_task = yaml.safe_load((outcome.model_dir / "recipe.yaml").read_text())["tasks"]["distill"]
    assert saved_task["teacher"] is None and saved_task["distilled_from"] == str((teacher_dir / "model").resolve())
    assert saved_task["labels"] == STUDENT_LABELS
    history = outcome.fit.history
    assert {"val/distill/teacher_agreement", "val/distill/accuracy"} <= set(history[-1])
    assert (outcome.run_dir / "report.html").is_file()  # the saved student evaluates on hard labels

    # the student stands alone: it loads and predicts with the teacher's folder gone
    hidden = teacher_dir.with_name("teacher-hidden")
    teacher_dir.rename(hidden)
    try:
        student = mmfuse.load(outcome.run_dir)
        predictions = student.predict([{"text": "a dog barks alarm outside"}, {"text": "calm"}])
        exported = export_model(outcome.run_dir, tmp_path / "student.pt2", format="torch-export",
                                example=[{"text": "a dog barks alarm outside"}, {"text": "calm"}])
    finally:
        hidden.rename(teacher_dir)
    assert [set(p) for p in predictions] == [{"distill"}, {"distill"}]
    assert all(p["distill"] in TEACHER_LABELS for p in predictions)
    assert list(student.module.encoders) == ["text"]
    assert exported.is_file()


def test_the_step_loss_is_the_kd_loss_with_the_loaded_teachers_logits(teacher, tmp_path):
    recipe = student_recipe(teacher, tmp_path, alpha=0.5, target="label", labels=STUDENT_LABELS, temperature=3.0)
    prepared = prepare(recipe)
    model, task = prepared.model, prepared.model.tasks["distill"]
    model.train()  # the engine's mode: the teacher must stay in eval mode (its fusion has dropout 0.5)
    assert task.teacher.model.training is False
    rows = list(range(6))
    batch = prepared.collate([prepared.train[i] for i in rows])
    target = batch["targets"]["distill"]
    assert set(target["inputs"]) == {"text", "image", "audio"}  # the student has only a text encoder
    assert target["present"]["image"].tolist() == [False] + [True] * 5
    assert target["present"]["audio"].tolist() == [True, False] + [True] * 4
    outputs = model(batch)
    loss = task.loss(outputs["distill"], target)
    loss.backward()

    # by hand: the teacher's logits from its own predictor (mmfuse.load), on the raw rows
    predictor = mmfuse.load(teacher[2])
    raw = [prepared.train.manifest.rows[i].values for i in rows]
    with torch.no_grad():
        teacher_logits = predictor.module(predictor.collate(raw))["label"]
    order = [TEACHER_LABELS.index(label) for label in STUDENT_LABELS]
    teacher_logits = teacher_logits[:, order]
    student = outputs["distill"].detach()
    labels = torch.tensor([STUDENT_LABELS.index(row["label"]) for row in raw])
    kl = F.kl_div(F.log_softmax(student / 3.0, -1), F.softmax(teacher_logits / 3.0, -1), reduction="batchmean") * 9.0
    expected = 0.5 * kl + 0.5 * F.cross_entropy(student, labels)
    assert torch.allclose(loss.detach(), expected, atol=1e-5)
    assert torch.allclose(target["teacher_logits"], teacher_logits, atol=1e-5)

    # frozen and outside the student: no gradient, not a parameter of the student (nor of its
    # optimizer, which takes the student's parameters), not in its state dict
    teacher_params = list(task.teacher.model.parameters())
    assert all(not p.requires_grad and p.grad is None for p in teacher_params)
    assert not {id(p) for p in teacher_params} & {id(p) for p in model.parameters()}
    assert not any("teacher" in key for key in model.state_dict())
    # the same batch twice gives the same teacher logits (dropout does not fire)
    again = prepared.collate([prepared.train[i] for i in rows])["targets"]["distill"]
    assert torch.equal(task.split_targets(again)[0], target["teacher_logits"])


def test_teacher_inputs_go_through_the_sample_cache(teacher, tmp_path):
    recipe = student_recipe(teacher, tmp_path, **{})
    recipe.data.cache = "memory"
    prepared = prepare(recipe)
    dataset = prepared.train
    for _ in range(2):
        for index in range(len(dataset)):
            dataset[index]
    cache = dataset.sample_cache
    # text (student) + text, image, audio (teacher), minus the two missing values; the second pass hits
    assert cache.misses == 4 * len(dataset) - 2
    assert cache.hits == cache.misses
    assert not prepared.model.tasks["distill"].needs_target  # alpha 1: no hard-label column read


def test_a_student_may_not_take_the_teachers_unknown_labels(teacher, tmp_path):
    with pytest.raises(RecipeError) as error:
        student_recipe(teacher, tmp_path, labels=["high", "low", "urgent"])
    message = str(error.value)
    assert "tasks.distill" in message and "labels:" in message and "['urgent']" in message


@pytest.mark.parametrize(
    "change, key, words",
    [
        ({"teacher": "missing"}, "tasks.distill.teacher", "does not exist"),
        ({"teacher": "empty"}, "tasks.distill.teacher", "not an mmfuse model folder"),
        ({}, "teacher_task:", "2 classifying tasks ['kind', 'label']"),
        ({"teacher_task": "score"}, "teacher_task:", "'mmfuse/regression', which gives no class logits"),
        ({"teacher_task": "nope"}, "teacher_task:", "has no task 'nope'"),
        ({"teacher_task": "label", "num_classes": 4}, "num_classes:", "the student has 4 classes"),
        ({"teacher_task": "label", "labels": ["a", "b", "z"]}, "labels:", "only the student has ['z']"),
        ({"teacher": None, "teacher_task": "label"}, "teacher_task is set but 'teacher' is not", ""),
    ],
)
def test_bad_teacher_settings_name_the_key(tmp_path, change, key, words):
    folder = tmp_path / "fake"  # what validation reads of a model folder: mmfuse.json and recipe.yaml
    folder.mkdir()
    (folder / "mmfuse.json").write_text("{}")
    tasks = {
        "score": {"type": "mmfuse/regression"},
        "label": {"type": "mmfuse/classification", "labels": ["a", "b", "c"]},
        "kind": {"type": "mmfuse/classification", "labels": ["x", "y"]},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump({"tasks": tasks}))
    (tmp_path / "empty").mkdir()
    teacher = change.pop("teacher", "fake")
    raw = student_raw(tmp_path / "t.jsonl", tmp_path / "v.jsonl", tmp_path, "" if teacher is None else tmp_path / teacher, **change)
    if teacher is None:
        del raw["tasks"]["distill"]["teacher"]
    with pytest.raises(RecipeError) as error:
        parse_recipe(raw)
    assert key in str(error.value) and words in str(error.value)


def test_a_relative_teacher_path_is_relative_to_the_recipe_file(teacher, tmp_path):
    train_file, val_file, run_dir = teacher
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    shutil.copytree(run_dir / "model", tmp_path / "teacher-model")
    raw = student_raw(train_file, val_file, tmp_path / "runs", "../teacher-model")
    (recipes / "student.yaml").write_text(yaml.safe_dump(raw))
    recipe = mmfuse.recipe.load_recipe(recipes / "student.yaml")
    assert recipe.tasks["distill"].params.teacher == str((tmp_path / "teacher-model").resolve())
    assert recipe.tasks["distill"].params.labels == TEACHER_LABELS


def test_unimodal_heads_are_refused_on_a_task_with_a_teacher(teacher, tmp_path):
    recipe = student_recipe(teacher, tmp_path, alpha=0.5, target="label")  # hard labels: a target column
    recipe.tasks["distill"].unimodal_aux = UnimodalAuxConfig(weight=0.3)
    with pytest.raises(ValueError, match="tasks.distill.unimodal_aux: the task reads inputs of its own"):
        prepare(recipe)


@pytest.mark.slow
def test_distillation_under_ddp_matches_one_process(teacher, tmp_path):
    """2 gloo processes with 4 rows each train the same weights as 1 process with the 8 rows
    (no dropout in the student; the teacher's dropout must not fire, in any process)."""
    train_file, val_file, teacher_dir = teacher

    def raw(batch_size: int) -> dict:
        recipe = student_raw(with_missing_modalities(train_file, tmp_path), val_file, tmp_path / "runs", teacher_dir,
                             alpha=0.5, target="label")
        recipe["encoders"]["text"]["dropout"] = 0.0
        recipe["fusion"]["dropout"] = 0.0
        recipe["data"]["batch_size"] = batch_size
        return recipe

    single = train(parse_recipe(raw(8)), run_dir=tmp_path / "one").model_dir
    recipe_file = tmp_path / "student.yaml"
    recipe_file.write_text(yaml.safe_dump(raw(4)))
    train_under_torchrun([str(recipe_file), "trainer.device=cpu", "--run-dir", str(tmp_path / "ddp")], cwd=tmp_path)
    ddp = load_file(tmp_path / "ddp" / "model" / "model.safetensors")
    one = load_file(single / "model.safetensors")
    assert ddp.keys() == one.keys()
    for key, tensor in one.items():
        torch.testing.assert_close(ddp[key], tensor, atol=1e-5, rtol=0, msg=lambda m: f"{key}: {m}")
    ddp_rows = (tmp_path / "ddp" / "metrics.csv").read_text().splitlines()
    assert len(ddp_rows) == 3 and "val/distill/teacher_agreement" in ddp_rows[0]


def test_a_prototype_task_can_teach(tmp_path):
    folder = tmp_path / "fake"
    folder.mkdir()
    (folder / "mmfuse.json").write_text("{}")
    tasks = {"score": {"type": "mmfuse/regression"}, "proto": {"type": "mmfuse/prototype", "labels": ["x", "y"]}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump({"tasks": tasks}))
    recipe = parse_recipe(student_raw(tmp_path / "t.jsonl", tmp_path / "v.jsonl", tmp_path, folder))
    params = recipe.tasks["distill"].params
    assert (params.teacher_task, params.labels) == ("proto", ["x", "y"])
