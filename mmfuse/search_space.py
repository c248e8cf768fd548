"""Search spaces for ``mmfuse tune``: ``key=loguniform(1e-5,1e-2)``, ``uniform(a,b)``,
``int(a,b)``, ``choice(x,y,...)``, written as command-line overrides or under a recipe's top-level
``search:`` mapping. Imports no torch and no optuna."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from mmfuse.recipe_problems import Problem, RecipeError

__all__ = ["Dimension", "parse_dimension", "split_search_overrides"]

_FORM = re.compile(r"^\s*(loguniform|uniform|int|choice)\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Dimension:
    """One searched recipe key: ``kind`` is loguniform, uniform, int or choice."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial picks for this key."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))  # type: ignore[arg-type]
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.kind == "loguniform")  # type: ignore[arg-type]


def _value(text: str) -> Any:
    """A number where the text is one (``1e-5`` too, which YAML 1.1 reads as a string), else YAML."""
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def _values(text: str) -> list[Any]:
    return [_value(part.strip()) for part in text.split(",") if part.strip()]


def parse_dimension(key: str, text: Any, where: str) -> Dimension | None:
    """A Dimension when ``text`` is a search expression, None for a plain value; RecipeError when
    it looks like one but is malformed."""
    if not isinstance(text, str):
        return None
    match = _FORM.match(text)
    if match is None:
        return None
    kind, inner = match.group(1), match.group(2)
    values = _values(inner)
    problem = None
    if kind == "choice":
        if len(values) < 2:
            problem = "choice(...) needs at least two values, e.g. choice(concat, gated)"
        else:
            return Dimension(key, kind, choices=tuple(values))
    elif len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        problem = f"{kind}(low, high) needs two numbers, e.g. {kind}(1e-5, 1e-2)" if kind != "int" else "int(low, high) needs two integers, e.g. int(1, 4)"
    elif values[0] >= values[1]:
        problem = f"{kind}({values[0]}, {values[1]}): low must be below high"
    elif kind == "loguniform" and values[0] <= 0:
        problem = "loguniform needs a positive low bound"
    elif kind == "int" and not all(isinstance(v, int) for v in values):
        problem = "int(low, high) needs two integers"
    else:
        return Dimension(key, kind, low=values[0], high=values[1])
    raise RecipeError([Problem(key, problem, None, where)], where)


def split_search_overrides(overrides: list[str]) -> tuple[list[str], list[Dimension]]:
    """Plain overrides (applied to every trial) and searched dimensions."""
    plain, dimensions = [], []
    for text in overrides:
        key, sep, value = text.partition("=")
        dimension = parse_dimension(key.strip(), value, f"override '{text}'") if sep else None
        if dimension is None:
            plain.append(text)
        else:
            dimensions.append(dimension)
    return plain, dimensions
