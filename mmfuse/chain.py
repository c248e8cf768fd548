"""Run a chain: stages trained in order by :func:`mmfuse.run.train`, weights carried between them.

A chain folder holds ``chain.yaml`` (the chain file as run), ``chain.json`` (each stage's state:
pending, running, stopped, done) and one ordinary run folder per stage (``<chain folder>/<stage>/``:
recipe.yaml, metrics.csv, checkpoints/, model/, init_from.json). A stage is done when its fit
ended by reaching its epochs / max_steps or by early stopping; a stage stopped otherwise (a
signal, a callback's stop request, a crash) is not. Resuming a chain skips done stages, resumes
the stage that has checkpoints from its last one, and starts the rest.

Loading (:func:`load_chain`) validates every stage's recipe and every ``init_from`` before any
training, reporting all problems at once; it imports no torch.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import ValidationError

from mmfuse.chain_config import ChainSpec, StageSpec, module_prefixes
from mmfuse.recipe import Problem, Recipe, RecipeError, load_recipe, parse_recipe
from mmfuse.recipe_problems import RecipeSource, pydantic_problems
from mmfuse.recipe_yaml import read_yaml
from mmfuse.registry import Registry

__all__ = ["Chain", "ChainStage", "ChainOutcome", "load_chain", "run_chain", "CHAIN_FILE", "STATE_FILE"]

CHAIN_FILE = "chain.yaml"
STATE_FILE = "chain.json"


@dataclass
class ChainStage:
    spec: StageSpec
    recipe: Recipe


@dataclass
class Chain:
    spec: ChainSpec
    stages: list[ChainStage]
    file: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChainOutcome:
    chain_dir: Path
    stage_dirs: dict[str, Path]
    outcomes: dict[str, Any]  # stage name -> mmfuse.run.TrainOutcome (None for stages skipped as done)
    states: dict[str, str]  # stage name -> pending / running / stopped / done

    @property
    def completed(self) -> bool:
        return all(state == "done" for state in self.states.values())


def _stage_overrides(overrides: Sequence[str], stage_names: list[str]) -> tuple[dict[str, list[str]], list[Problem]]:
    """``stage.key=value`` overrides grouped by stage; anything else is a problem."""
    grouped: dict[str, list[str]] = {name: [] for name in stage_names}
    problems = []
    for text in overrides:
        head, _, rest = text.partition(".")
        if head in grouped and rest:
            grouped[head].append(rest)
        else:
            problems.append(Problem(text, f"a chain override starts with a stage name ({', '.join(stage_names)}), "
                                    f"e.g. {stage_names[-1]}.trainer.epochs=3", None, "command line"))
    return grouped, problems


def load_chain(path: str | Path, overrides: Sequence[str] = (), registry: Registry | None = None) -> Chain:
    """Read and validate a chain file; raise RecipeError listing every problem of every stage."""
    if registry is None:
        from mmfuse.plugin_host import get_registry

        registry = get_registry()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError([Problem("", f"cannot read chain file: {exc.strerror or exc}", None, str(path))], str(path)) from exc
    raw, source = read_yaml(text, str(path))
    try:
        spec = ChainSpec.model_validate(raw if isinstance(raw, dict) else {})
    except ValidationError as exc:
        raise RecipeError(pydantic_problems(exc, (), source, ChainSpec), str(path)) from None
    problems: list[Problem] = []
    names = [stage.name for stage in spec.stages]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        line, where = source.locate(("stages",))
        problems.append(Problem("stages", f"stage names must be unique; repeated: {', '.join(duplicates)}", line, where))
    grouped, override_problems = _stage_overrides(overrides, names)
    problems += override_problems
    stages: list[ChainStage] = []
    for index, stage in enumerate(spec.stages):
        at = ("stages", str(index))
        recipe, found = _stage_recipe(stage, path, [*stage.overrides, *grouped.get(stage.name, [])], registry, source, at)
        problems += found
        if recipe is not None:
            stages.append(ChainStage(stage, recipe))
            problems += _check_init_from(stage, index, stages, recipe, source, at)
            problems += _check_teacher_from(stage, stages, recipe, source, at)
    if problems:
        raise RecipeError(problems, str(path))
    return Chain(spec=spec, stages=stages, file=path, raw=raw)


def _stage_recipe(
    stage: StageSpec, chain_file: Path, overrides: list[str], registry: Registry, source: RecipeSource, at: tuple[str, ...]
) -> tuple[Recipe | None, list[Problem]]:
    """The stage's validated recipe; its problems are prefixed with the stage so they can be found."""
    try:
        if isinstance(stage.recipe, dict):
            return parse_recipe(stage.recipe, registry, overrides=overrides, file=str(chain_file)), []
        recipe_file = Path(stage.recipe)
        if not recipe_file.is_absolute():
            recipe_file = chain_file.resolve().parent / recipe_file
        return load_recipe(recipe_file, overrides, registry=registry), []
    except RecipeError as exc:
        line, where = source.locate(at + ("recipe",))
        return None, [
            Problem(f"stages.{stage.name}.{problem.path}" if problem.path else f"stages.{stage.name}", problem.message,
                    problem.line if isinstance(stage.recipe, str) else line,
                    problem.source if isinstance(stage.recipe, str) else where)
            for problem in exc.problems
        ]


def _check_init_from(
    stage: StageSpec, index: int, earlier: list[ChainStage], recipe: Recipe, source: RecipeSource, at: tuple[str, ...]
) -> list[Problem]:
    """A stage-name source must be an earlier stage; mapped prefixes must name modules that exist
    (source modules checked against the source stage's recipe)."""
    init = stage.init_from
    if init is None:
        return []
    line, where = source.locate(at + ("init_from",))
    problems = []
    before = {s.spec.name: s.recipe for s in earlier[:-1]}
    stage_names = [s.spec.name for s in earlier]
    if init.source == stage.name or (init.source in stage_names and init.source not in before):
        problems.append(Problem(f"stages.{stage.name}.init_from.source", f"'{init.source}' is not an earlier stage", line, where))
    targets = module_prefixes(list(recipe.encoders), list(recipe.tasks))
    source_recipe = before.get(init.source)
    sources = module_prefixes(list(source_recipe.encoders), list(source_recipe.tasks)) if source_recipe else None
    for source_prefix, target_prefix in init.map.items():
        for prefix, known, side in ((target_prefix, targets, "this stage"), (source_prefix, sources, f"stage '{init.source}'")):
            if known is not None and not any(prefix == k or prefix.startswith(k + ".") for k in known):
                problems.append(Problem(f"stages.{stage.name}.init_from.map.{source_prefix}",
                                        f"'{prefix}' is not a module of {side}; its modules: {', '.join(known)}", line, where))
    return problems


def _taught_tasks(recipe: Recipe) -> list[str]:
    """The tasks of ``recipe`` that take a teacher run (their config has a ``teacher`` key)."""
    return [name for name, slot in recipe.tasks.items() if "teacher" in type(slot.params).model_fields]


def _check_teacher_from(
    stage: StageSpec, earlier: list[ChainStage], recipe: Recipe, source: RecipeSource, at: tuple[str, ...]
) -> list[Problem]:
    """``teacher_from`` names an earlier stage, and the stage has a task that takes a teacher and
    does not name one itself."""
    if stage.teacher_from is None:
        return []
    line, where = source.locate(at + ("teacher_from",))
    key = f"stages.{stage.name}.teacher_from"
    if stage.teacher_from not in [s.spec.name for s in earlier[:-1]]:
        return [Problem(key, f"'{stage.teacher_from}' is not an earlier stage", line, where)]
    taught = _taught_tasks(recipe)
    if not taught:
        return [Problem(key, "this stage has no task that takes a teacher (e.g. type: distillation)", line, where)]
    named = [name for name in taught if getattr(recipe.tasks[name].params, "teacher", None) is not None]
    if named:
        return [Problem(key, f"tasks {named} name a 'teacher' already; remove it or teacher_from", line, where)]
    return []


def _with_teacher(recipe: Recipe, teacher: Path, stage: str) -> Recipe:
    """``recipe`` with ``teacher`` set on every task that takes one (checked now that it is trained)."""
    taught = recipe.model_copy(deep=True)
    problems = []
    for name in _taught_tasks(taught):
        slot = taught.tasks[name]
        try:
            slot.params = type(slot.params).model_validate({**slot.params.model_dump(), "teacher": str(teacher)})
        except ValidationError as exc:
            problems += pydantic_problems(exc, ("stages", stage, "tasks", name), RecipeSource(file=None), type(slot.params))
    if problems:
        raise RecipeError(problems)
    return taught


def new_chain_dir(chain: Chain) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", chain.spec.name).strip("-") or "chain"
    base = Path(chain.spec.output_dir) / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, number = base, 1
    while candidate.exists():
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


#: how a stage's fit may end for the stage to count as done
FINISHED = ("completed", "max_steps", "early_stopping")


def _read_states(chain_dir: Path) -> dict[str, str]:
    try:
        return dict(json.loads((chain_dir / STATE_FILE).read_text(encoding="utf-8"))["stages"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _has_checkpoint(stage_dir: Path) -> bool:
    folder = stage_dir / "checkpoints"
    return folder.is_dir() and any(folder.iterdir())


def _write_state(chain_dir: Path, states: dict[str, str]) -> None:
    from mmfuse.atomic import write_text_synced

    write_text_synced(chain_dir / STATE_FILE, json.dumps({"stages": states}, indent=2))


def run_chain(
    chain: Chain,
    *,
    chain_dir: Path | None = None,
    resume: Path | None = None,
    registry: Registry | None = None,
    callbacks: Sequence[Any] = (),
    log: Any = print,
) -> ChainOutcome:
    """Train every stage in order into ``chain_dir`` (default: a new folder; with ``resume``, that
    chain's folder, continuing where it stopped)."""
    from mmfuse.run import train
    from mmfuse.weight_transfer import InitFrom

    if resume is not None and not Path(resume).is_dir():
        raise RecipeError([Problem("--resume", f"{resume} is not a chain folder", None, "command line")])
    chain_dir = Path(chain_dir or resume or new_chain_dir(chain))
    chain_dir.mkdir(parents=True, exist_ok=True)
    if not (chain_dir / CHAIN_FILE).exists():
        (chain_dir / CHAIN_FILE).write_text(yaml.safe_dump(chain.raw, sort_keys=False), encoding="utf-8")
    stage_dirs = {stage.spec.name: chain_dir / stage.spec.name for stage in chain.stages}
    saved = _read_states(chain_dir)
    states = {name: saved.get(name, "pending") for name in stage_dirs}
    outcomes: dict[str, Any] = {}
    for stage in chain.stages:
        name, stage_dir = stage.spec.name, stage_dirs[stage.spec.name]
        if states[name] == "done":
            log(f"chain: stage '{name}' is already trained ({stage_dir}); skipping")
            outcomes[name] = None
            continue
        extra = list(callbacks)
        if stage.spec.init_from is not None:
            init = stage.spec.init_from
            source = stage_dirs.get(init.source) or _relative_source(init.source, chain.file)
            extra.insert(0, InitFrom(init, source))
        recipe = stage.recipe
        if stage.spec.teacher_from is not None:
            recipe = _with_teacher(recipe, stage_dirs[stage.spec.teacher_from], name)
        resuming = _has_checkpoint(stage_dir)
        log(f"chain: stage '{name}' {'resumes from its last checkpoint' if resuming else 'starts'} in {stage_dir}")
        states[name] = "running"
        _write_state(chain_dir, states)
        outcomes[name] = train(
            recipe, run_dir=stage_dir, resume=stage_dir if resuming else None, registry=registry, callbacks=extra
        )
        reason = outcomes[name].fit.stop_reason
        states[name] = "done" if reason in FINISHED else "stopped"
        _write_state(chain_dir, states)
        if states[name] != "done":  # the stage checkpointed where it stopped; --resume continues it
            log(f"chain: stage '{name}' stopped ({reason}); continue with --resume {chain_dir}")
            break
    return ChainOutcome(chain_dir=chain_dir, stage_dirs=stage_dirs, outcomes=outcomes, states=states)


def _relative_source(source: str, chain_file: Path | None) -> Path:
    """A run-folder source written in a chain file is relative to the chain file."""
    path = Path(source)
    if path.is_absolute() or chain_file is None:
        return path
    return chain_file.resolve().parent / path
