"""What a distillation task learns about its teacher from the teacher's model folder before
anything is built: which task it distils, that task's classes, and how they map onto the
student's classes. Reads ``mmfuse.json`` (is it a model folder) and ``recipe.yaml`` (the resolved
recipe, whose classifying tasks carry their labels or class count); verifies no checksum and imports no torch, so ``mmfuse validate`` stays fast
(loading the teacher for training verifies every file, see :mod:`mmfuse_plugins.tasks.teacher`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmfuse.folder_manifest import RECIPE_FILE, ModelFolderError, resolve_model_dir

__all__ = ["CLASSIFYING_TASKS", "TeacherFolder", "read_teacher_folder", "class_order"]

#: task types whose outputs are one logit per class (what a distillation student imitates)
CLASSIFYING_TASKS = ("mmfuse/classification", "mmfuse/distillation", "mmfuse/prototype")


@dataclass(frozen=True)
class TeacherFolder:
    """The teacher's model folder, the task distilled, its class names (None: unnamed) and count."""

    model_dir: Path
    task: str
    labels: list[Any] | None
    num_classes: int


def model_folder_of(path: str) -> Path:
    """The model folder at ``path`` (a model folder or a run folder); ValueError says what is wrong."""
    try:
        return resolve_model_dir(Path(path).expanduser())
    except ModelFolderError as exc:
        raise ValueError(
            f"{exc}. 'teacher' must be the run folder of a finished `mmfuse train` or a model folder "
            "(write ./ or ../ for a path relative to the recipe file)"
        ) from None


def read_teacher_folder(path: str, task: str | None) -> TeacherFolder:
    """The teacher task ``task`` (default: the teacher's only classifying task) of the model folder
    at ``path``; ValueError names the recipe key to fix."""
    model_dir = model_folder_of(path)
    recipe = _read_yaml(model_dir / RECIPE_FILE)
    tasks = recipe.get("tasks") if isinstance(recipe.get("tasks"), dict) else {}
    classifying = [name for name, slot in tasks.items() if isinstance(slot, dict) and slot.get("type") in CLASSIFYING_TASKS]
    if task is None:
        if len(classifying) != 1:
            found = f"{len(classifying)} classifying tasks {classifying}" if classifying else "no classifying task"
            raise ValueError(
                f"teacher_task: the teacher {model_dir} has {found} (of its tasks {sorted(tasks)}); "
                f"name the one to distil with 'teacher_task'"
            )
        task = classifying[0]
    if task not in tasks:
        raise ValueError(f"teacher_task: the teacher {model_dir} has no task '{task}'; its tasks are {sorted(tasks)}")
    if task not in classifying:
        raise ValueError(
            f"teacher_task: the teacher's task '{task}' is of type {tasks[task].get('type')!r}, which gives no class "
            f"logits; a teacher task must be one of {list(CLASSIFYING_TASKS)} (its classifying tasks: {classifying})"
        )
    labels = tasks[task].get("labels")
    count = len(labels) if labels is not None else tasks[task].get("num_classes")
    if not isinstance(count, int):
        raise ValueError(f"teacher: cannot tell how many classes the teacher's task '{task}' has ({model_dir / RECIPE_FILE})")
    return TeacherFolder(model_dir, task, labels, count)


def class_order(student: list[Any] | None, teacher: TeacherFolder) -> list[int]:
    """Teacher logit index of each student class. Named on both sides: matched by name (the
    student may order them differently); otherwise by index, so the counts must agree."""
    if student is None or teacher.labels is None:
        return list(range(teacher.num_classes))
    position = {str(label): index for index, label in enumerate(teacher.labels)}
    missing = [label for label in student if str(label) not in position]
    extra = sorted(set(position) - {str(label) for label in student})
    if missing or extra:
        raise ValueError(
            f"labels: the student's labels {list(student)} and the teacher's ({teacher.model_dir}, task "
            f"'{teacher.task}') {teacher.labels} differ (only the student has {missing}, only the teacher "
            f"has {extra}); leave 'labels' out to take the teacher's"
        )
    return [position[str(label)] for label in student]


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"teacher: cannot read the teacher's recipe {file}: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"teacher: the teacher's recipe {file} is not a mapping")
    return raw

