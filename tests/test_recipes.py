"""Every shipped recipe validates, and starts with the exact command that runs it."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from mmfuse.recipe import load_recipe

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


def test_the_recipes_folder_has_the_demo_and_the_examples():
    names = {path.stem for path in RECIPES}
    assert {"demo", "text_image_classification", "audio_video", "contrastive_text_image"} <= names


def run_command(path: Path) -> list[str]:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# Run: mmfuse "), f"{path.name} must start with '# Run: mmfuse ...', got {first!r}"
    return shlex.split(first.removeprefix("# Run: "))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_with_the_overrides_of_its_run_command(path):
    command = run_command(path)
    if command[1] == "demo":
        assert path.name == "demo.yaml"
        overrides: list[str] = []
    else:
        assert command[1] == "train", f"{path.name}: the run command should be `mmfuse train {path.name}`"
        assert command[2] == f"recipes/{path.name}", f"{path.name}: the command names {command[2]}"
        overrides = command[3:]
    recipe = load_recipe(path, overrides)
    assert recipe.encoders and recipe.tasks
    # data paths are relative to the recipe file; every example names its training data
    assert recipe.data.train is not None


def test_demo_recipe_reads_the_generated_folder():
    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "demo.yaml")
    assert recipe.data.train == "../.mmfuse-demo/data/train.jsonl"
    assert set(recipe.encoders) == {"text", "image", "audio", "video"}
