"""``mmfuse tune``: hyper-parameter search with Optuna over the ordinary training path.

Each trial is one :func:`mmfuse.run.train` of the recipe with the trial's values as overrides,
into ``<study folder>/trial-NNN``. A :class:`ReportToTrial` callback reports the monitored metric
after every evaluation the engine runs and stops the fit when the pruner says so. Trials run one
after another. The study folder gets ``trials.csv`` (the results table) and ``best.yaml`` (the
best trial's resolved recipe, runnable with ``mmfuse train``).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mmfuse.engine.callbacks import Callback
from mmfuse.recipe import Problem, Recipe, RecipeError, parse_recipe
from mmfuse.recipe_yaml import read_recipe_file
from mmfuse.registry import Registry
from mmfuse.search_space import Dimension, parse_dimension, split_search_overrides

__all__ = ["ReportToTrial", "TuneResult", "load_search", "tune", "PRUNED"]

#: stop reason of a fit the pruner ended
PRUNED = "pruned"


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("mmfuse tune needs Optuna: pip install 'mmfuse[tune]'") from exc
    return optuna


class ReportToTrial(Callback):
    """Reports ``metric`` to an Optuna trial after each evaluation; stops a fit the pruner prunes."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.reported: list[tuple[int, float]] = []

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        if self.metric not in metrics:
            raise RecipeError([Problem("--metric", f"'{self.metric}' is not among the evaluation's metrics: "
                                       f"{', '.join(sorted(metrics))}", None, "command line")])
        value = float(metrics[self.metric])
        self.trial.report(value, trainer.global_step)
        self.reported.append((trainer.global_step, value))
        if self.trial.should_prune():
            trainer.request_stop(PRUNED)


@dataclass
class TuneResult:
    study_dir: Path
    best_recipe: Path | None
    best_value: float | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    study: Any = None


def load_search(path: str | Path, overrides: Sequence[str], registry: Registry | None = None) -> tuple[dict[str, Any], Any, list[str], list[Dimension]]:
    """(raw recipe without ``search:``, its source, plain overrides, dimensions); the recipe is
    validated once with each dimension's first value, so a broken recipe fails before any trial."""
    raw, source = read_recipe_file(path)
    if not isinstance(raw, dict):
        raise RecipeError([Problem("", "a recipe must be a YAML mapping", 1, str(path))], str(path))
    search = raw.pop("search", None) or {}
    if not isinstance(search, dict):
        line, where = source.locate(("search",))
        raise RecipeError([Problem("search", "search must map recipe keys to loguniform(..) / uniform(..) / int(..) / choice(..)", line, where)], str(path))
    plain, dimensions = split_search_overrides(list(overrides))
    for key, text in search.items():
        line, where = source.locate(("search", str(key)))
        dimension = parse_dimension(str(key), text, f"{where}, line {line}" if line else str(where))
        if dimension is None:
            raise RecipeError([Problem(f"search.{key}", f"{text!r} is not a search expression; write e.g. loguniform(1e-5, 1e-2) or choice(a, b)", line, where)], str(path))
        dimensions.append(dimension)
    if not dimensions:
        raise RecipeError([Problem("search", "nothing to search: add key=loguniform(a,b) / choice(a,b) overrides or a search: section", None, str(path))], str(path))
    first = [f"{d.key}={(d.choices[0] if d.kind == 'choice' else d.low)}" for d in dimensions]
    parse_recipe(raw, registry, overrides=[*plain, *first], file=str(path), _source=source)
    return raw, source, plain, dimensions


def _trial_recipe(raw: dict[str, Any], path: Path, overrides: list[str], registry: Registry | None) -> Recipe:
    from mmfuse.recipe_problems import RecipeSource

    return parse_recipe(raw, registry, overrides=overrides, file=str(path), _source=RecipeSource(file=str(path)))


def tune(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    trials: int,
    metric: str = "val/loss",
    direction: str = "minimize",
    study_dir: Path | None = None,
    pruner: Any = "median",
    registry: Registry | None = None,
    log: Callable[[str], None] = print,
) -> TuneResult:
    """Run ``trials`` sequential trials; write ``trials.csv`` and ``best.yaml`` into the study folder."""
    optuna = _optuna()
    from mmfuse.run import train

    path = Path(path)
    raw, _, plain, dimensions = load_search(path, overrides, registry)
    base = _trial_recipe(raw, path, [*plain, *[f"{d.key}={(d.choices[0] if d.kind == 'choice' else d.low)}" for d in dimensions]], registry)
    study_dir = Path(study_dir or Path(base.output_dir) / f"{base.name}-tune-{time.strftime('%Y%m%d-%H%M%S')}")
    study_dir.mkdir(parents=True, exist_ok=True)
    if pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    elif pruner in (None, "none"):
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=base.seed), pruner=pruner)
    run_dirs: dict[int, Path] = {}

    def objective(trial: Any) -> float:
        values = {d.key: d.suggest(trial) for d in dimensions}
        recipe = _trial_recipe(raw, path, [*plain, *[f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in values.items()]], registry)
        run_dir = study_dir / f"trial-{trial.number:03d}"
        run_dirs[trial.number] = run_dir
        log(f"tune: trial {trial.number} {values} -> {run_dir}")
        outcome = train(recipe, run_dir=run_dir, registry=registry, callbacks=[ReportToTrial(trial, metric)])
        if outcome.fit.stop_reason == PRUNED:
            raise optuna.TrialPruned()
        if metric not in outcome.fit.metrics:
            raise RecipeError([Problem("--metric", f"'{metric}' is not among the run's metrics: {', '.join(sorted(outcome.fit.metrics))}; "
                                       "a val/ metric needs data.val or data.split", None, "command line")])
        return float(outcome.fit.metrics[metric])

    study.optimize(objective, n_trials=trials, catch=(), gc_after_trial=True)
    rows = [
        {"trial": t.number, "state": t.state.name.lower(), metric: t.value, **t.params, "run_dir": str(run_dirs.get(t.number, ""))}
        for t in study.trials
    ]
    _write_table(study_dir / "trials.csv", rows)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        log(f"tune: no trial completed (all pruned or failed); see {study_dir / 'trials.csv'}")
        return TuneResult(study_dir, None, None, rows, study)
    best = study.best_trial
    best_file = study_dir / "best.yaml"
    resolved = (run_dirs[best.number] / "recipe.yaml").read_text(encoding="utf-8")
    header = (
        f"# Run: mmfuse train {best_file}\n"
        f"# Best of {len(study.trials)} trials of `mmfuse tune {path}`: trial {best.number}, {metric} = {best.value:.6g}\n"
        f"# with {', '.join(f'{k}={v}' for k, v in best.params.items())}\n"
    )
    best_file.write_text(header + resolved, encoding="utf-8")
    return TuneResult(study_dir, best_file, float(best.value), rows, study)


def _write_table(file: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    with open(file, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def format_table(rows: list[dict[str, Any]], metric: str) -> str:
    """The results as aligned text, best first among completed trials."""
    if not rows:
        return "(no trials)"
    columns = [c for c in rows[0] if c != "run_dir"] + [c for r in rows for c in r if c not in rows[0]]
    columns = list(dict.fromkeys(columns))
    def cell(value: Any) -> str:
        return f"{value:.6g}" if isinstance(value, float) else ("" if value is None else str(value))
    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body]
    return "\n".join(lines)
