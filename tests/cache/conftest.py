"""A small demo dataset (real PNG / WAV / MP4 files, tiny BERT and timm models) shared by the
cache tests, and recipes over it."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmfuse.demo.runner import prepare_demo

    out = tmp_path_factory.mktemp("cache-demo")
    prepare_demo(out, train_rows=12, val_rows=4)
    return out


@pytest.fixture
def demo_recipe(demo_folder: Path):
    """``demo_recipe(*overrides)`` -> the demo recipe on the shared demo data."""
    from mmfuse.demo.runner import default_recipe_path, demo_overrides
    from mmfuse.recipe import load_recipe

    def make(*overrides: str):
        return load_recipe(default_recipe_path(), [*demo_overrides(demo_folder), "data.num_workers=0", *overrides])

    return make
