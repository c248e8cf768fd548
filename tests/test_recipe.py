"""Recipe loading: every problem reported at once, with dotted path, YAML line and suggestion."""

from __future__ import annotations

import textwrap

import pytest
from pydantic import BaseModel, ConfigDict

from mmfuse import hookimpl
from mmfuse.plugin_host import load_registry
from mmfuse.recipe import RecipeError, load_recipe

GOOD = """\
name: tiny
encoders:
  feats:
    type: vector
    input_dim: 4
    lr: 0.01
fusion:
  type: concat
  output_dim: 8
tasks:
  label:
    type: classification
    labels: [a, b]
trainer:
  epochs: 2
"""


def write(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path, overrides=()):
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides), registry=load_registry())
    return {p.path: p for p in info.value.problems}, str(info.value)


def test_good_recipe_resolves_aliases_and_component_params(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD), registry=load_registry())
    assert recipe.encoders["feats"].type == "mmfuse/vector"
    assert recipe.encoders["feats"].params.input_dim == 4
    assert recipe.encoders["feats"].lr == 0.01
    assert recipe.fusion.params.output_dim == 8
    assert recipe.trainer.epochs == 2
    # the resolved recipe round-trips through its own YAML
    again = write(tmp_path, recipe.to_yaml())
    assert load_recipe(again, registry=load_registry()).to_dict() == recipe.to_dict()


def test_all_problems_reported_at_once_with_lines_and_suggestions(tmp_path):
    path = write(
        tmp_path,
        """\
        encoders:
          feats:
            type: vectr
            input_dim: 4
          more:
            type: vector
            input_dim: 4
            hiden_dim: 3
        fusion:
          type: concat
          output_dim: "wide"
        tasks:
          label:
            type: classification
        trainer:
          epoch: 3
        """,
    )
    problems, text = problems_of(path)
    assert set(problems) == {"encoders.feats.type", "encoders.more.hiden_dim", "fusion.output_dim", "trainer.epoch"}
    assert problems["encoders.feats.type"].line == 3
    assert "Did you mean 'vector'" in problems["encoders.feats.type"].message
    assert "mmfuse plugins" in problems["encoders.feats.type"].message
    assert problems["encoders.more.hiden_dim"].line == 8
    assert "Did you mean 'hidden_dim'" in problems["encoders.more.hiden_dim"].message
    assert problems["fusion.output_dim"].line == 11
    assert "valid integer" in problems["fusion.output_dim"].message
    assert problems["trainer.epoch"].line == 16
    assert "Did you mean 'epochs'" in problems["trainer.epoch"].message
    assert "4 problems" in text and "recipe.yaml" in text


def test_host_key_typo_in_slot_suggests_host_key(tmp_path):
    path = write(tmp_path, GOOD.replace("    lr: 0.01", "    frezee: true"))
    problems, _ = problems_of(path)
    assert "Did you mean 'freeze'" in problems["encoders.feats.frezee"].message


def test_overrides_are_applied_and_validated(tmp_path):
    path = write(tmp_path, GOOD)
    recipe = load_recipe(path, ["trainer.epochs=5", "optimizer.lr=1e-4", "encoders.feats.hidden_dim=7"], registry=load_registry())
    assert recipe.trainer.epochs == 5
    assert recipe.optimizer.lr == pytest.approx(1e-4)
    assert recipe.encoders["feats"].params.hidden_dim == 7

    problems, _ = problems_of(path, ["trainer.epoch=3", "optimizer.lr=fast", "justakey"])
    assert problems["trainer.epoch"].source == "override 'trainer.epoch=3'"
    assert "Did you mean 'epochs'" in problems["trainer.epoch"].message
    assert "valid number" in problems["optimizer.lr"].message
    assert "key.path=value" in problems["justakey"].message


def test_missing_sections_and_bad_yaml(tmp_path):
    problems, _ = problems_of(write(tmp_path, "name: x\n"))
    assert {"encoders", "fusion", "tasks"} <= set(problems)
    with pytest.raises(RecipeError, match="line 2"):
        load_recipe(write(tmp_path, "a: [1\nb: 2\n"), registry=load_registry())
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "nope.yaml", registry=load_registry())


def test_component_validator_errors_carry_the_slot_path(tmp_path):
    path = write(tmp_path, GOOD.replace("labels: [a, b]", "labels: [a]"))
    problems, _ = problems_of(path)
    assert "at least 2 labels" in problems["tasks.label"].message
    assert problems["tasks.label"].line == 11


def test_slot_names_that_cannot_be_module_keys_are_rejected(tmp_path):
    text = GOOD.replace("  feats:\n", "  values:\n").replace("  label:\n", "  my.label:\n")
    problems, _ = problems_of(write(tmp_path, text))
    assert "reserved" in problems["encoders.values"].message
    assert "values_encoder" in problems["encoders.values"].message
    assert problems["encoders.values"].line == 3
    assert "not allowed" in problems["tasks.my.label"].message


def test_reserved_slot_names_cover_every_module_dict_attribute():
    import subprocess
    import sys

    from mmfuse.recipe import RESERVED_SLOT_NAMES

    # a clean interpreter: libraries such as transformers add attributes to nn.Module when imported
    probe = "import torch; print(' '.join(n for n in dir(torch.nn.ModuleDict()) if not n.startswith('_')))"
    public = set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split())
    assert public and public <= RESERVED_SLOT_NAMES


class FolderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    extra: list[str] = []


class FolderPlugin:
    @hookimpl
    def mmfuse_register_encoders(self, register):
        register("local/folder", builder="unused:build", config=FolderConfig)


def test_dot_relative_component_paths_resolve_against_the_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "recipes"
    folder.mkdir(parents=True)
    path = folder / "r.yaml"
    path.write_text(
        GOOD.replace(
            "  feats:\n    type: vector\n    input_dim: 4\n",
            "  feats:\n    type: folder\n    model: ../models/bert\n    extra: [./a, 'local-dir:../m', hub/name]\n",
        )
    )
    registry = load_registry([("folder", FolderPlugin())])
    monkeypatch.chdir(tmp_path)
    params = load_recipe(path, registry=registry).encoders["feats"].params
    assert params.model == str(tmp_path / "project" / "models" / "bert")
    assert params.extra == [str(folder / "a"), f"local-dir:{tmp_path / 'project' / 'm'}", "hub/name"]
    # a command-line override stays relative to the working directory, like any shell path
    overridden = load_recipe(path, ["encoders.feats.model=./here"], registry=registry)
    assert overridden.encoders["feats"].params.model == "./here"
