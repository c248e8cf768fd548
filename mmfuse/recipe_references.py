"""Cross-references inside a recipe, checked by ``mmfuse validate`` before anything trains.

A config field that names another part of the recipe declares it in its type::

    from mmfuse.recipe_references import EncoderName, MetricName

    class FilmFusionConfig(BaseModel):
        target: EncoderName                      # must be one of the recipe's encoders
        conditioning: list[EncoderName] | None = None

    class EarlyStoppingConfig(BaseModel):
        monitor: MetricName = "val/loss"         # must be a metric the evaluation produces

Validation then checks every component's config (built-in or third-party), the ``trainer``
section and the callbacks, and reports a wrong name with its path, line and a did-you-mean,
instead of failing after an epoch. A task declares the metric keys its evaluation produces as
``metric_names`` on its config class (a ClassVar); ``val/<task>/<metric>`` is checked against it.
Imports no torch.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Iterator

from pydantic import BaseModel

from mmfuse.recipe_problems import Problem, RecipeSource
from mmfuse.registry import suggest

__all__ = ["Reference", "EncoderName", "MetricName", "reference_problems", "stratify_problem", "task_metric_names"]


@dataclass(frozen=True)
class Reference:
    """Marks a config field whose value names another part of the recipe (``kind``)."""

    kind: str  # "encoder" or "metric"


EncoderName = Annotated[str, Reference("encoder")]
MetricName = Annotated[str, Reference("metric")]


def _kinds_in(annotation: Any) -> set[str]:
    """Reference kinds anywhere in a type (``list[EncoderName] | None`` -> {"encoder"})."""
    kinds: set[str] = set()
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, Reference):
            kinds.add(meta.kind)
    for arg in typing.get_args(annotation):
        kinds |= _kinds_in(arg)
    return kinds


def _names(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            yield from _names(item)
    elif isinstance(value, dict):
        yield from (str(key) for key in value)


def _references(config: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str, str]]:
    """(path of the value, kind, name) for every referencing field of a config, recursively."""
    if not isinstance(config, BaseModel):
        return
    for name, info in type(config).model_fields.items():
        value = getattr(config, name, None)
        if value is None:
            continue
        kinds = {m.kind for m in info.metadata if isinstance(m, Reference)} | _kinds_in(info.annotation)
        for kind in kinds:
            if isinstance(value, (list, tuple)):
                for index, item in enumerate(value):
                    for item_name in _names(item):
                        yield path + (name, str(index)), kind, item_name
            else:
                for item_name in _names(value):
                    yield path + (name,), kind, item_name
        nested = value if isinstance(value, (list, tuple)) else [value]
        for index, item in enumerate(nested):
            if isinstance(item, BaseModel):
                sub = path + (name, str(index)) if isinstance(value, (list, tuple)) else path + (name,)
                yield from _references(item, sub)


def task_metric_names(task_params: Any) -> list[str] | None:
    """The metric keys a task's evaluation produces, as its config declares (None: undeclared)."""
    names = getattr(type(task_params), "metric_names", None)
    return list(names) if isinstance(names, (list, tuple)) else None


def _metric_problem(monitor: str, encoders: list[str], tasks: dict[str, Any]) -> str | None:
    """Why ``monitor`` is not a metric the evaluation produces (None when it is, or may be)."""
    if monitor == "val/loss":
        return None
    parts = monitor.split("/")
    known = ["val/loss"]
    for task, params in tasks.items():
        known.append(f"val/{task}/loss")
        known += [f"val/{task}/{metric}" for metric in task_metric_names(params) or []]
    hint = suggest(monitor, known)
    tail = f". Did you mean '{hint}'?" if hint else f"; e.g. {', '.join(known[:6])}"
    if parts[0] != "val" or len(parts) < 2:
        return f"'{monitor}' is not an evaluation metric: monitors are named val/loss, val/<task>/loss or val/<task>/<metric>{tail}"
    if len(parts) == 2 or parts[1] not in tasks:
        return f"'{monitor}' names no task of this recipe (tasks: {', '.join(tasks)}){tail}"
    metric = parts[-1]
    declared = task_metric_names(tasks[parts[1]])
    if len(parts) == 4 and parts[2] not in encoders:  # val/<task>/<encoder>/<metric>: a per-modality metric
        return f"'{monitor}' names no encoder of this recipe (encoders: {', '.join(encoders)}){tail}"
    if len(parts) > 4:
        return f"'{monitor}' has too many parts{tail}"
    if declared is not None and metric != "loss" and metric not in declared:
        return f"task '{parts[1]}' has no metric '{metric}' (its metrics: {', '.join(['loss', *declared])}){tail}"
    return None


def reference_problems(
    sections: dict[str, Any],
    encoders: dict[str, Any],
    tasks: dict[str, Any],
    source: RecipeSource,
) -> list[Problem]:
    """Every wrong cross-reference in the validated parts of a recipe.

    ``sections``: dotted prefix -> validated config (component params, trainer, ...);
    ``encoders`` / ``tasks``: slot name -> validated params (None where a slot failed)."""
    problems: list[Problem] = []
    encoder_names = list(encoders)
    for prefix, config in sections.items():
        base = tuple(prefix.split(".")) if prefix else ()
        for path, kind, name in _references(config, base):
            message = None
            if kind == "encoder" and name not in encoders:
                hint = suggest(name, encoder_names)
                message = f"names encoder '{name}', which this recipe does not have (encoders: {', '.join(encoder_names)})"
                if hint:
                    message += f". Did you mean '{hint}'?"
            elif kind == "metric":
                message = _metric_problem(name, encoder_names, tasks)
            if message:
                line, where = source.locate(path)
                problems.append(Problem(".".join(path), message, line, where))
    return problems


def stratify_problem(column: str, known_columns: set[str], read_columns: Callable[[], set[str] | None]) -> str | None:
    """Why ``data.split.stratify`` cannot work, or None. A task target or encoder column is fine;
    anything else must be a column of the training manifest (``read_columns()``; None when the
    manifest cannot be read here, e.g. it is not there yet)."""
    if column in known_columns:
        return None
    columns = read_columns()
    if columns is None or column in columns:
        return None
    hint = suggest(column, sorted(columns))
    message = f"names column '{column}', which no row of the training manifest has (columns: {', '.join(sorted(columns))})"
    return message + (f". Did you mean '{hint}'?" if hint else "")

