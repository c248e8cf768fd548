"""Hostile or mistaken recipes: alias bombs, duplicate keys, wrong cross-references, misspelt
slot keys, bad targets and overrides after options: each gets one clear problem with its line."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap
import time

import pytest

from mmfuse.cli import main
from mmfuse.data.errors import DataError
from mmfuse.data.manifest import read_manifest
from mmfuse.data.targets import fit_task_targets
from mmfuse.plugin_host import load_registry
from mmfuse.recipe import RecipeError, load_recipe
from mmfuse.recipe_references import task_metric_names
from mmfuse.recipe_yaml import MAX_EXPANDED_NODES

BASE = """\
name: tiny
encoders:
  feats: {type: vector, input_dim: 4}
  other: {type: vector, input_dim: 2}
fusion: {type: concat, output_dim: 8}
tasks:
  label: {type: classification, labels: [a, b]}
"""


def write(tmp_path, text: str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(path, overrides=()):
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides), registry=load_registry())
    return info.value.problems


BILLION_LAUGHS = """\
name: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
encoders: *i
"""


def test_alias_bomb_is_refused_quickly_with_the_line_of_the_alias(tmp_path):
    path = write(tmp_path, BILLION_LAUGHS)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    found = problems(path)
    elapsed = time.perf_counter() - start
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert elapsed < 5 and grown_mb < 200, (elapsed, grown_mb)
    assert len(found) == 1
    assert found[0].line in (6, 7) and "alias" in found[0].message and f"{MAX_EXPANDED_NODES:,}" in found[0].message


def test_alias_bomb_through_the_validate_command_exits_2(tmp_path, capsys):
    assert main(["validate", str(write(tmp_path, BILLION_LAUGHS))]) == 2
    assert "expands the recipe past" in capsys.readouterr().err


def test_recursive_alias_is_an_error_not_a_hang(tmp_path):
    found = problems(write(tmp_path, BASE + "callbacks: &x [*x]\n"))
    assert "refers to itself" in found[0].message and found[0].line == 8


def test_ordinary_aliases_still_work(tmp_path):
    text = BASE.replace("  other: {type: vector, input_dim: 2}\n", "  other: &v {type: vector, input_dim: 2}\n  third: *v\n")
    recipe = load_recipe(write(tmp_path, text), registry=load_registry())
    assert recipe.encoders["third"].params.input_dim == 2


def test_duplicate_sections_and_keys_are_reported_with_both_lines(tmp_path):
    text = BASE + "trainer: {epochs: 5}\ntrainer: {max_steps: 3}\n"
    text = text.replace("fusion: {type: concat, output_dim: 8}", "fusion: {type: concat, output_dim: 8, output_dim: 16}")
    found = {p.path: p for p in problems(write(tmp_path, text))}
    assert found["trainer"].line == 9 and "lines 8 and 9" in found["trainer"].message
    assert "given twice" in found["fusion.output_dim"].message and found["fusion.output_dim"].line == 5


def test_film_target_and_conditioning_name_existing_encoders(tmp_path):
    text = BASE.replace("fusion: {type: concat, output_dim: 8}", "fusion: {type: film, target: feat, conditioning: [othre]}")
    found = {p.path: p for p in problems(write(tmp_path, text))}
    assert "Did you mean 'feats'" in found["fusion.target"].message and found["fusion.target"].line == 5
    assert "Did you mean 'other'" in found["fusion.conditioning.0"].message


def test_contrastive_encoders_must_exist(tmp_path):
    text = BASE.replace("  label: {type: classification, labels: [a, b]}", "  align: {type: contrastive, encoders: [feats, image]}")
    found = {p.path: p for p in problems(write(tmp_path, text))}
    assert "encoder 'image'" in found["tasks.align.encoders.1"].message and found["tasks.align.encoders.1"].line == 7


def test_stage_unfreeze_names_are_encoders(tmp_path):
    text = BASE + "trainer:\n  stages:\n    - {at_epoch: 1, unfreeze: [feat]}\n"
    found = {p.path: p for p in problems(write(tmp_path, text))}
    assert "Did you mean 'feats'" in found["trainer.stages.0.unfreeze.0"].message
    assert found["trainer.stages.0.unfreeze.0"].line == 10


@pytest.mark.parametrize(
    "monitor, expected",
    [
        ("val/label/acuracy", "Did you mean 'val/label/accuracy'"),
        ("val/lable/accuracy", "names no task"),
        ("train/loss", "not an evaluation metric"),
        ("val/label/nope/accuracy", "names no encoder"),
    ],
)
def test_monitor_names_are_checked_against_task_metrics(tmp_path, monitor, expected):
    text = BASE + f"trainer:\n  early_stopping: {{monitor: {monitor}, mode: max}}\n"
    found = {p.path: p for p in problems(write(tmp_path, text))}
    assert expected in found["trainer.early_stopping.monitor"].message
    assert found["trainer.early_stopping.monitor"].line == 9


@pytest.mark.parametrize("monitor", ["val/loss", "val/label/loss", "val/label/f1", "val/label/feats/accuracy"])
def test_valid_monitors_pass(tmp_path, monitor):
    text = BASE + f"trainer:\n  checkpoint: {{monitor: {monitor}}}\n"
    assert load_recipe(write(tmp_path, text), registry=load_registry()).trainer.checkpoint.monitor == monitor


def test_callback_parameters_are_cross_checked(tmp_path):
    text = BASE + "callbacks:\n  - {type: early_stopping, monitor: val/label/f2}\n"
    found = {p.path: p for p in problems(write(tmp_path, text))}
    assert "no metric 'f2'" in found["callbacks.0.monitor"].message and found["callbacks.0.monitor"].line == 9


def test_every_builtin_task_declares_the_metrics_it_computes():
    """Declared names are checked against the built metrics by the conformance kit
    (check 'metric_names'), which every built-in task passes."""
    registry = load_registry()
    builtin = [registry.get("task", n) for n in registry.names("task")]
    builtin = [spec for spec in builtin if spec.name.startswith("mmfuse/")]
    assert len(builtin) >= 5
    for spec in builtin:
        assert task_metric_names(spec.config.model_construct()) is not None, f"{spec.name} declares no metric_names"


def test_stratify_column_is_checked_against_the_manifest(tmp_path):
    rows = [{"feats": [1, 2, 3, 4], "other": [1, 2], "label": "a", "group": "x"}] * 4
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    text = BASE + "data:\n  train: train.jsonl\n  split: {val: 0.25, stratify: gruop}\n"
    found = {p.path: p for p in problems(write(tmp_path, text))}
    assert "Did you mean 'group'" in found["data.split.stratify"].message
    assert found["data.split.stratify"].line == 10
    ok = text.replace("gruop", "group")
    assert load_recipe(write(tmp_path, ok), registry=load_registry()).data.split.stratify == "group"


def test_misspelt_type_key_is_named_with_its_suggestion(tmp_path):
    text = BASE.replace("  other: {type: vector, input_dim: 2}", "  other: {typee: vector, input_dim: 2}")
    found = {p.path: p for p in problems(write(tmp_path, text))}
    assert "missing encoder type" in found["encoders.other.type"].message
    assert found["encoders.other.typee"].message == "unknown key 'typee'. Did you mean 'type'?"
    assert found["encoders.other.typee"].line == 4


def test_a_non_mapping_slot_is_reported_once(tmp_path):
    found = problems(write(tmp_path, BASE), ["encoders.other=5"])
    assert [p.path for p in found] == ["encoders.other"]


def test_fit_targets_failure_is_a_data_error_naming_task_column_and_manifest(tmp_path):
    text = BASE.replace("  label: {type: classification, labels: [a, b]}", "  label: {type: distillation}")
    recipe = load_recipe(write(tmp_path, text), registry=load_registry())
    rows = [{"label": [0.1, 0.2]}, {"label": [0.1, 0.2, 0.3]}]
    manifest_path = tmp_path / "m.jsonl"
    manifest_path.write_text("\n".join(json.dumps(r) for r in rows))
    manifest = read_manifest(manifest_path, registry=load_registry())
    with pytest.raises(DataError) as info:
        fit_task_targets(recipe, manifest)
    message = str(info.value)
    assert "tasks.label" in message and "column 'label'" in message and str(manifest_path) in message
    assert "differ in length" in message


def test_overrides_are_accepted_after_options(tmp_path, capsys):
    path = write(tmp_path, BASE)
    assert main(["validate", str(path), "--print", "trainer.epochs=4"]) == 0
    assert "epochs: 4" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["validate", str(path), "--print", "--bogus"])
    assert info.value.code == 2


def test_train_accepts_overrides_after_run_dir(tmp_path):
    """The reported case: `mmfuse train r.yaml --run-dir X key=val` (checked without training:
    the override is wrong on purpose, so the command stops at validation with exit 2)."""
    path = write(tmp_path, BASE)
    done = subprocess.run(
        [sys.executable, "-m", "mmfuse", "train", str(path), "--run-dir", str(tmp_path / "run"), "trainer.epoch=3"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "unrecognized" not in done.stderr and "Did you mean 'epochs'" in done.stderr
