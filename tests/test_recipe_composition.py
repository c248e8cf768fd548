"""Recipe composition: ``base:`` files deep-merged, ``null`` removes, overrides cannot half-build
a slot, and every error names the file and line the value came from."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mmfuse.cli import main
from mmfuse.plugin_host import load_registry
from mmfuse.recipe import RecipeError, load_recipe
from mmfuse.recipe_yaml import deep_merge

FUSED = """\
name: fused
encoders:
  feats: {type: vector, input_dim: 4, lr: 0.01}
  other: {type: vector, input_dim: 2}
fusion: {type: concat, output_dim: 8}
tasks:
  label: {type: classification, labels: [a, b]}
data: {train: data/train.jsonl, batch_size: 4}
trainer: {epochs: 3}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(path, overrides=()):
    return load_recipe(path, list(overrides), registry=load_registry())


def problems(path, overrides=()):
    with pytest.raises(RecipeError) as info:
        load(path, overrides)
    return {p.path: p for p in info.value.problems}


def test_deep_merge_merges_mappings_replaces_the_rest_and_null_removes():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2, "c": {"d": 1}}
    update = {"a": {"y": [3], "z": 4}, "c": None}
    assert deep_merge(base, update) == {"a": {"x": 1, "y": [3], "z": 4}, "b": 2}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 2, "c": {"d": 1}}  # inputs untouched


def test_a_one_modality_variant_builds_on_the_fused_recipe(tmp_path):
    write(tmp_path, "fused.yaml", FUSED)
    variant = write(
        tmp_path,
        "variants/feats_only.yaml",
        """\
        base: ../fused.yaml
        name: feats-only
        encoders:
          other: null
          feats: {lr: 0.5}
        trainer: {max_steps: 7}
        """,
    )
    recipe = load(variant)
    assert recipe.name == "feats-only"
    assert list(recipe.encoders) == ["feats"]
    assert recipe.encoders["feats"].lr == 0.5 and recipe.encoders["feats"].params.input_dim == 4
    assert recipe.trainer.epochs == 3 and recipe.trainer.max_steps == 7
    # the base's data path stays relative to the base file, not to the variant
    assert Path(recipe.data.train) == (tmp_path / "data" / "train.jsonl").resolve()


def test_bases_apply_in_order_then_the_file_itself(tmp_path):
    write(tmp_path, "fused.yaml", FUSED)
    write(tmp_path, "long.yaml", "trainer: {epochs: 10}\noptimizer: {lr: 0.1}\n")
    path = write(tmp_path, "r.yaml", "base: [fused.yaml, long.yaml]\noptimizer: {lr: 0.2}\n")
    recipe = load(path)
    assert recipe.trainer.epochs == 10 and recipe.optimizer.lr == 0.2


def test_errors_name_the_file_and_line_where_the_value_was_written(tmp_path):
    write(tmp_path, "fused.yaml", FUSED.replace("output_dim: 8", "output_dim: -8"))
    variant = write(tmp_path, "v.yaml", "base: fused.yaml\ntrainer: {epochs: 0}\n")
    found = problems(variant)
    assert found["fusion.output_dim"].source == str(tmp_path / "fused.yaml") and found["fusion.output_dim"].line == 5
    assert found["trainer.epochs"].source == str(variant) and found["trainer.epochs"].line == 2


def test_component_paths_in_a_base_are_relative_to_the_base(tmp_path):
    write(tmp_path, "shared/fused.yaml", FUSED.replace("input_dim: 4, lr: 0.01", "input_dim: 4, lr: 0.01, columns_file: ./cols.txt"))
    variant = write(tmp_path, "v.yaml", "base: shared/fused.yaml\n")
    found = problems(variant)  # vector has no such key: the point is where the error points
    assert found["encoders.feats.columns_file"].source == str(tmp_path / "shared" / "fused.yaml")


def test_base_cycles_and_missing_bases_are_reported(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load(tmp_path / "a.yaml")
    missing = write(tmp_path, "m.yaml", "base: nowhere.yaml\n")
    with pytest.raises(RecipeError, match="nowhere.yaml.*named by 'base:'"):
        load(missing)
    bad = write(tmp_path, "bad.yaml", "base: {x: 1}\n")
    with pytest.raises(RecipeError, match="'base' must be a file name"):
        load(bad)


def test_null_override_removes_a_slot(tmp_path):
    path = write(tmp_path, "fused.yaml", FUSED)
    recipe = load(path, ["encoders.other=null"])
    assert list(recipe.encoders) == ["feats"]
    # removing a value restores its default; removing something absent is harmless
    assert load(path, ["trainer.epochs=null", "trainer.max_steps=null"]).trainer.epochs == 1


def test_override_that_would_half_build_a_slot_is_an_error(tmp_path):
    path = write(tmp_path, "fused.yaml", FUSED)
    found = problems(path, ["encoders.fets.lr=0.1"])
    problem = found["encoders.fets"]
    assert "would create encoders.fets" in problem.message and "Did you mean 'encoders.feats'" in problem.message
    assert problem.source == "override 'encoders.fets.lr=0.1'"
    # with a type, an override may add a slot
    recipe = load(path, ["encoders.extra.type=vector", "encoders.extra.input_dim=3"])
    assert recipe.encoders["extra"].params.input_dim == 3


def test_validate_command_reports_each_problem_once(tmp_path, capsys):
    path = write(tmp_path, "fused.yaml", FUSED)
    assert main(["validate", str(path), "encoders.other=[1]"]) == 2
    err = capsys.readouterr().err
    assert "1 problem\n" in err and err.count("got [1]") == 1, err


def test_the_shipped_ablation_builds_on_the_demo_recipe():
    recipes = Path(__file__).resolve().parent.parent / "recipes"
    demo = load(recipes / "demo.yaml")
    ablation = load(recipes / "demo_without_text.yaml")
    assert set(ablation.encoders) == set(demo.encoders) - {"text"}
    assert ablation.encoders["image"].params == demo.encoders["image"].params
    assert Path(ablation.data.train) == (recipes / demo.data.train).resolve()
