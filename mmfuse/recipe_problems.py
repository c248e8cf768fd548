"""Where recipe problems come from and how they are reported.

A :class:`Problem` names the dotted path, the message, and where the value came from: the YAML
line (recorded from the composed node tree) or the command-line override that set it. This module
turns pydantic validation errors into Problems with did-you-mean suggestions; reading YAML lives in
:mod:`mmfuse.recipe_yaml`, overrides in :mod:`mmfuse.recipe_overrides`. Imports no torch.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from mmfuse.registry import suggest

__all__ = ["Problem", "RecipeError", "RecipeSource", "pydantic_problems"]


@dataclass
class Problem:
    """One recipe problem: dotted path, message, and where it came from."""

    path: str
    message: str
    line: int | None = None
    source: str | None = None  # file name, or "override 'a.b=c'"

    def __str__(self) -> str:
        where = []
        if self.source:
            where.append(self.source)
        if self.line is not None:
            where.append(f"line {self.line}")
        location = f" ({', '.join(where)})" if where else ""
        return f"{self.path or '<recipe>'}{location}: {self.message}"


class RecipeError(ValueError):
    """A recipe (or its overrides) is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        super().__init__(self._format())

    def _format(self) -> str:
        name = self.source or "recipe"
        count = len(self.problems)
        head = f"{name}: {count} problem{'s' if count != 1 else ''}"
        return head + "".join(f"\n  - {p}" for p in self.problems)


@dataclass
class RecipeSource:
    """Where each dotted path of the raw recipe came from: a file and line, or an override.

    ``file`` is the recipe named on the command line; a value read from a ``base:`` file records
    that file in ``files``."""

    file: str | None = None
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)
    overrides: dict[tuple[str, ...], str] = field(default_factory=dict)
    files: dict[tuple[str, ...], str] = field(default_factory=dict)

    def record(self, path: tuple[str, ...], line: int, file: str | None, replace: bool = False) -> None:
        """Remember that ``path`` was written at ``line`` of ``file`` (first record wins unless ``replace``)."""
        if replace or path not in self.lines:
            self.lines[path] = line
            if file is not None:
                self.files[path] = file

    def absorb(self, other: "RecipeSource") -> None:
        """Take ``other``'s records over these (a recipe file laid over its bases)."""
        self.lines.update(other.lines)
        self.files.update(other.files)

    def file_of(self, path: tuple[str, ...]) -> str | None:
        """The file the value at ``path`` came from (the nearest recorded parent's file)."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.files:
                return self.files[path[:end]]
        return self.file

    def locate(self, path: tuple[str, ...]) -> tuple[int | None, str | None]:
        for key, text in self.overrides.items():
            if path and key[: len(path)] == path:
                return None, f"override '{text}'"
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            if prefix in self.overrides:
                return None, f"override '{self.overrides[prefix]}'"
            if prefix in self.lines:
                return self.lines[prefix], self.files.get(prefix, self.file)
        return None, self.file


def _field_names(model: Any) -> list[str]:
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _model_at(model: Any, loc: tuple[Any, ...]) -> Any:
    """Follow a pydantic error location through nested models, dicts, lists and Optionals."""
    for part in loc:
        if isinstance(model, type) and issubclass(model, BaseModel):
            info = model.model_fields.get(str(part))
            if info is None:
                return None
            model = info.annotation
        else:
            args = [a for a in typing.get_args(model) if a is not type(None)]
            origin = typing.get_origin(model)
            if origin in (dict, list) and args:
                model = args[-1]
            elif args:
                model = args[0]
                return _model_at(model, (part,)) if isinstance(part, str) else model
            else:
                return None
    args = [a for a in typing.get_args(model) if a is not type(None)]
    if args and not (isinstance(model, type) and issubclass(model, BaseModel)):
        for a in args:
            if isinstance(a, type) and issubclass(a, BaseModel):
                return a
    return model


def pydantic_problems(
    exc: ValidationError,
    prefix: tuple[str, ...],
    source: RecipeSource,
    model: Any,
    extra_fields: list[str] = (),  # type: ignore[assignment]
) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # drop union-branch tags pydantic inserts (e.g. 'EarlyStoppingConfig')
        loc = tuple(p for p in loc if not (p[:1].isupper() and p.endswith("Config")))
        path = prefix + loc
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            parent = _model_at(model, tuple(err["loc"][:-1]))
            candidates = _field_names(parent) + (list(extra_fields) if len(loc) == 1 else [])
            message = f"unknown key '{loc[-1]}'"
            hint = suggest(loc[-1], [c for c in candidates if c != "params"])
            if hint:
                message += f". Did you mean '{hint}'?"
            elif candidates:
                message += f". Allowed keys: {', '.join(c for c in candidates if c != 'params')}"
        elif err["type"] == "missing":
            message = f"missing required key '{loc[-1]}'"
        elif "input" in err and err["type"] not in ("model_type", "dict_type"):
            message += f" (got {err['input']!r})"
        line, where = source.locate(path)
        problems.append(Problem(".".join(path), message, line, where))
    return problems
