"""mmfuse tune: search expressions, a 3-trial study writing a results table and a re-runnable best
recipe, pruning through the engine's evaluations, and clear errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

pytest.importorskip("optuna")

from mmfuse.cli import main  # noqa: E402
from mmfuse.recipe import RecipeError, load_recipe  # noqa: E402
from mmfuse.search_space import parse_dimension, split_search_overrides  # noqa: E402
from tests.pretrain.chain_data import finetune_recipe, write_views  # noqa: E402


@pytest.fixture
def recipe_file(tmp_path) -> Path:
    data = tmp_path / "data"
    raw = finetune_recipe(write_views(data, 32, seed=1), write_views(data, 16, seed=2))
    raw["trainer"]["epochs"] = 2
    raw["output_dir"] = str(tmp_path / "runs")
    raw["search"] = {"fusion.dropout": "choice(0.0, 0.3)"}
    file = tmp_path / "recipe.yaml"
    file.write_text(yaml.safe_dump(raw, sort_keys=False))
    return file


def test_search_expressions_parse_and_reject_nonsense():
    plain, dims = split_search_overrides(["trainer.epochs=2", "optimizer.lr=loguniform(1e-5,1e-2)", "fusion.type=choice(concat, gated)", "x.n=int(1,4)"])
    assert plain == ["trainer.epochs=2"]
    assert [(d.key, d.kind) for d in dims] == [("optimizer.lr", "loguniform"), ("fusion.type", "choice"), ("x.n", "int")]
    assert dims[0].low == 1e-5 and dims[0].high == 1e-2 and dims[1].choices == ("concat", "gated")
    assert parse_dimension("a", "0.1", "here") is None
    for bad, message in [("loguniform(0, 1)", "positive"), ("uniform(2, 1)", "low must be below high"),
                         ("choice(a)", "at least two"), ("int(1.5, 3)", "integers")]:
        with pytest.raises(RecipeError, match=message):
            parse_dimension("k", bad, "here")


@pytest.mark.slow
def test_three_trials_write_a_table_and_a_rerunnable_best_recipe(recipe_file, tmp_path, capsys):
    study = tmp_path / "study"
    code = main(["tune", str(recipe_file), "optimizer.lr=loguniform(1e-3,1e-1)", "--trials", "3",
                 "--metric", "val/label/accuracy", "--pruner", "none", "--study-dir", str(study)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = list(csv.DictReader(open(study / "trials.csv")))
    assert [r["state"] for r in rows] == ["complete"] * 3
    assert {"optimizer.lr", "fusion.dropout", "val/label/accuracy"} <= set(rows[0])
    assert len({r["optimizer.lr"] for r in rows}) == 3, "each trial samples its own lr"
    best_value = max(float(r["val/label/accuracy"]) for r in rows)
    best_row = next(r for r in rows if float(r["val/label/accuracy"]) == best_value)
    best = study / "best.yaml"
    assert best.read_text().splitlines()[0] == f"# Run: mmfuse train {best}"
    recipe = load_recipe(best)
    assert recipe.optimizer.lr == pytest.approx(float(best_row["optimizer.lr"]))
    assert recipe.fusion.params.dropout == pytest.approx(float(best_row["fusion.dropout"]))
    assert f"best: val/label/accuracy = {best_value:.6g}" in out
    # re-runnable as written, from another folder
    assert main(["train", str(best), "trainer.epochs=1", "--run-dir", str(tmp_path / "rerun")]) == 0
    assert (tmp_path / "rerun" / "model" / "mmfuse.json").is_file()


def test_pruned_trials_stop_at_an_evaluation(recipe_file, tmp_path):
    import optuna

    from mmfuse.tune import tune

    # a pruner that prunes any val/loss above zero: every trial stops at its first evaluation
    result = tune(recipe_file, ["trainer.epochs=3"], trials=2, study_dir=tmp_path / "pruned",
                  pruner=optuna.pruners.ThresholdPruner(upper=0.0), log=lambda _: None)
    assert [row["state"] for row in result.rows] == ["pruned", "pruned"]
    assert result.best_recipe is None
    trial = result.study.trials[0]
    assert list(trial.intermediate_values) == [4]  # reported after epoch 1 (4 steps), then stopped
    first_run = Path(result.rows[0]["run_dir"])
    assert len(list(csv.DictReader(open(first_run / "metrics.csv")))) <= 2


def test_a_recipe_without_a_search_space_is_refused(recipe_file):
    raw = yaml.safe_load(recipe_file.read_text())
    raw.pop("search")
    recipe_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(RecipeError, match="nothing to search"):
        from mmfuse.tune import load_search

        load_search(recipe_file, [])
