"""Chains: stage 2 starts from stage 1's weights (checked by value), a chain stopped inside stage 2
resumes to the same weights as an uninterrupted one, and bad chains fail with every problem listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mmfuse.chain import STATE_FILE, load_chain, run_chain
from mmfuse.cli import main
from mmfuse.engine.callbacks import Callback
from mmfuse.model import build_fused_model
from mmfuse.recipe import RecipeError, parse_recipe
from mmfuse.weight_transfer import REPORT_FILE, read_source_weights, transfer_weights
from tests.pretrain.chain_data import finetune_recipe, pretrain_recipe, write_views


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("views")
    return {
        "unlabelled": write_views(folder, 48, seed=0, labelled=False),
        "train": write_views(folder, 32, seed=1),
        "val": write_views(folder, 16, seed=2),
    }


def write_chain(folder: Path, data: dict[str, Path], **finetune_changes) -> Path:
    finetune = finetune_recipe(data["train"], data["val"])
    finetune.update(finetune_changes)
    chain = {
        "name": "align-then-classify",
        "output_dir": str(folder / "runs"),
        "stages": [
            {"name": "pretrain", "recipe": pretrain_recipe(data["unlabelled"])},
            {
                "name": "finetune",
                "recipe": finetune,
                "init_from": {"source": "pretrain", "map": {"encoders.a": "encoders.a", "encoders.b": "encoders.b"}},
            },
        ],
    }
    file = folder / "chain.yaml"
    file.write_text(yaml.safe_dump(chain, sort_keys=False))
    return file


class ProbeAtStart(Callback):
    """Records the weights a stage starts training from (after init_from)."""

    def __init__(self) -> None:
        self.at_start: dict[str, dict[str, torch.Tensor]] = {}

    def on_fit_start(self, trainer) -> None:
        self.at_start[trainer.run_dir.name] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


class StopInStage(Callback):
    """Ends the fit of one stage after N steps, as a kill at a step boundary would."""

    def __init__(self, stage: str, steps: int) -> None:
        self.stage, self.steps = stage, steps

    def on_train_batch_end(self, trainer, loss) -> None:
        if trainer.run_dir.name == self.stage and trainer.global_step == self.steps:
            trainer.request_stop("killed_by_test")


def final_weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    return read_source_weights(stage_dir)[1]


def test_stage_two_starts_from_stage_one_and_resumes_mid_stage(tmp_path, data):
    chain = load_chain(write_chain(tmp_path, data))
    probe = ProbeAtStart()
    whole = run_chain(chain, chain_dir=tmp_path / "whole", callbacks=[probe], log=lambda _: None)
    assert whole.completed and whole.states == {"pretrain": "done", "finetune": "done"}

    pretrained = final_weights(whole.stage_dirs["pretrain"])
    start = probe.at_start["finetune"]
    encoder_keys = [k for k in start if k.startswith("encoders.")]
    assert encoder_keys and all(torch.equal(start[k], pretrained[k]) for k in encoder_keys)
    # ... and that is not what stage 2 would have started from on its own
    torch.manual_seed(chain.stages[1].recipe.seed)
    fresh = build_fused_model(chain.stages[1].recipe).state_dict()
    assert not all(torch.equal(fresh[k], start[k]) for k in encoder_keys)
    report = json.loads((whole.stage_dirs["finetune"] / REPORT_FILE).read_text())
    assert sorted(report["loaded"]) == sorted(encoder_keys)
    assert report["missing_in_source"] == report["unused_in_source"] == report["shape_mismatches"] == []
    assert report["fresh_modules"] == ["fusion", "tasks.label"]
    # the contrastive head of stage 1 is not carried: it is not in the map
    assert any(k.startswith("tasks.align.") for k in pretrained)

    stopped = run_chain(chain, chain_dir=tmp_path / "resumed", callbacks=[StopInStage("finetune", 3)], log=lambda _: None)
    assert stopped.states == {"pretrain": "done", "finetune": "stopped"} and not stopped.completed
    assert json.loads((tmp_path / "resumed" / STATE_FILE).read_text())["stages"]["finetune"] == "stopped"
    pretrain_model = stopped.stage_dirs["pretrain"] / "model" / "model.safetensors"
    written = pretrain_model.stat().st_mtime_ns

    resumed = run_chain(load_chain(tmp_path / "chain.yaml"), resume=tmp_path / "resumed", log=lambda _: None)
    assert resumed.completed
    assert resumed.outcomes["pretrain"] is None  # not trained again
    assert pretrain_model.stat().st_mtime_ns == written
    assert resumed.outcomes["finetune"].fit.global_step == whole.outcomes["finetune"].fit.global_step
    expected, got = final_weights(whole.stage_dirs["finetune"]), final_weights(resumed.stage_dirs["finetune"])
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), "a resumed chain must end where an uninterrupted one does"


def test_cli_runs_a_chain_with_stage_overrides(tmp_path, data, capsys):
    file = write_chain(tmp_path, data)
    out = tmp_path / "cli"
    code = main(["chain", str(file), "pretrain.trainer.epochs=1", "finetune.trainer.epochs=1",
                 "finetune.encoders.a.freeze=true", "--run-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "stage finetune: done" in printed and f"chain folder: {out}" in printed
    pretrained, finetuned = final_weights(out / "pretrain"), final_weights(out / "finetune")
    frozen = [k for k in finetuned if k.startswith("encoders.a.")]
    assert frozen and all(torch.equal(pretrained[k], finetuned[k]) for k in frozen)
    trained = [k for k in finetuned if k.startswith("encoders.b.") and k.endswith("weight")]
    assert any(not torch.equal(pretrained[k], finetuned[k]) for k in trained)
    assert yaml.safe_load((out / "finetune" / "recipe.yaml").read_text())["trainer"]["epochs"] == 1


def test_bad_chain_lists_every_problem(tmp_path, data):
    file = write_chain(tmp_path, data)
    raw = yaml.safe_load(file.read_text())
    raw["stages"][1]["init_from"] = {"source": "finetune", "map": {"encoders.c": "encoders.a", "fusion": "tasks.nope"}}
    raw["stages"][0]["recipe"]["trainer"]["epoch"] = 2
    file.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(RecipeError) as caught:
        load_chain(file, ["trainer.epochs=1"])
    text = str(caught.value)
    assert "stages.pretrain.trainer.epoch" in text and "Did you mean 'epochs'" in text
    assert "'finetune' is not an earlier stage" in text
    assert "'tasks.nope' is not a module of this stage" in text
    assert "a chain override starts with a stage name" in text
    assert len(caught.value.problems) == 4

    raw["stages"][1]["init_from"] = {"source": "pretrain", "map": {"encoders.c": "encoders.a"}}
    raw["stages"][0]["recipe"]["trainer"].pop("epoch")
    file.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(RecipeError, match="'encoders.c' is not a module of stage 'pretrain'"):
        load_chain(file)


def test_mismatched_weights_are_listed_never_dropped(tmp_path, data):
    source = parse_recipe(pretrain_recipe(data["unlabelled"]))
    target_raw = finetune_recipe(data["train"], data["val"])
    target_raw["encoders"]["b"]["hidden_dim"] = 5  # encoders.b no longer fits
    target_raw["encoders"]["b"]["num_layers"] = 3  # and has a layer the source lacks
    target_raw["tasks"]["label"]["labels"] = ["x", "y"]
    torch.manual_seed(0)
    source_state = build_fused_model(source).state_dict()
    target = build_fused_model(parse_recipe(target_raw))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    mapping = {"encoders.a": "encoders.a", "encoders.b": "encoders.b"}

    with pytest.raises(RecipeError) as caught:
        transfer_weights(target, source_state, mapping, source_name="src")
    text = str(caught.value)
    assert "shape mismatches" in text and "encoders.b." in text and "target weights with no source weight" in text
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items()), "strict: nothing is copied"

    report = transfer_weights(target, source_state, mapping, source_name="src", strict=False)
    assert report.shape_mismatches and report.missing_in_source
    assert all(k.startswith("encoders.a.") for k in report.loaded)
    after = target.state_dict()
    assert all(torch.equal(after[k], source_state[k]) for k in report.loaded)
    listed = set(report.loaded) | set(report.missing_in_source) | {m.split(":")[0] for m in report.shape_mismatches}
    assert listed == {k for k in after if k.startswith(("encoders.a.", "encoders.b."))}, "every mapped weight is accounted for"

    with pytest.raises(RecipeError, match="has no weights under 'encoders.zzz'"):
        transfer_weights(target, source_state, {"encoders.zzz": "encoders.a"}, source_name="src")


def test_plain_recipe_names_init_from_as_a_callback(tmp_path, data):
    from mmfuse.run import train

    source_dir = train(parse_recipe(pretrain_recipe(data["unlabelled"]) | {"trainer": {"epochs": 1, "device": "cpu", "progress": "off", "tensorboard": "off"}}),
                       run_dir=tmp_path / "src").run_dir
    raw = finetune_recipe(data["train"], data["val"])
    raw["encoders"]["a"]["freeze"] = True
    raw["trainer"]["epochs"] = 1
    raw["callbacks"] = [{"type": "init_from", "source": str(source_dir), "map": ["encoders.a"]}]
    outcome = train(parse_recipe(raw), run_dir=tmp_path / "dst")
    pretrained, finetuned = final_weights(source_dir), final_weights(outcome.run_dir)
    keys = [k for k in finetuned if k.startswith("encoders.a.")]
    assert keys and all(torch.equal(pretrained[k], finetuned[k]) for k in keys)


CHAINS = sorted((Path(__file__).resolve().parents[2] / "recipes" / "chains").glob("*.yaml"))


@pytest.mark.parametrize("path", CHAINS, ids=lambda p: p.name)
def test_shipped_chain_validates_and_names_its_command(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == f"# Run: mmfuse chain recipes/chains/{path.name}"
    chain = load_chain(path)
    assert len(chain.stages) >= 2 and all(s.recipe.data.train for s in chain.stages)
    # a later stage starts from an earlier one's weights, or learns from its model as a teacher
    assert any(s.spec.init_from is not None or s.spec.teacher_from is not None for s in chain.stages[1:])
