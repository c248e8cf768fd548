"""Command-line overrides of a recipe: ``a.b.c=value`` (the value is parsed as YAML).

``key=null`` removes the key: a default applies again, or a component slot disappears
(``encoders.text=null`` trains without the text encoder). An override may add a component slot
only by giving its ``type`` too; one that would create a half-built slot (``encoders.txt.model=x``
on a recipe with no ``txt`` encoder, often a misspelt name) is an error with a did-you-mean.
Imports no torch.
"""

from __future__ import annotations

from typing import Any

import yaml

from mmfuse.recipe_problems import Problem, RecipeSource
from mmfuse.registry import suggest

__all__ = ["apply_overrides", "SLOT_SECTIONS"]

#: sections whose entries are component slots (a mapping with a ``type``), by the depth of a slot
SLOT_SECTIONS = {"encoders": 2, "tasks": 2, "fusion": 1, "callbacks": 2}


def _slot_path(parts: list[str]) -> tuple[str, ...] | None:
    depth = SLOT_SECTIONS.get(parts[0]) if parts else None
    if depth is None or len(parts) < depth:
        return None
    return tuple(parts[:depth])


def _get(raw: Any, path: tuple[str, ...]) -> Any:
    node = raw
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: RecipeSource | None = None) -> list[Problem]:
    """Apply ``a.b.c=value`` overrides to ``raw`` in place; return the problems found."""
    problems: list[Problem] = []
    created: dict[tuple[str, ...], list[str]] = {}  # slot path -> overrides that created it
    for text in overrides:
        key, sep, value_text = text.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(
                Problem(key or text, f"override '{text}' is not of the form key.path=value (e.g. trainer.epochs=3)")
            )
            continue
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else ""
        except yaml.YAMLError as exc:
            problems.append(Problem(key, f"override '{text}': value is not valid YAML ({exc})"))
            continue
        parts = key.split(".")
        slot = _slot_path(parts)
        if slot is not None and value is not None and _get(raw, slot) is None:
            created.setdefault(slot, []).append(text)
        problem = _set(raw, parts, value, text)
        if problem is not None:
            problems.append(problem)
            continue
        if source is not None:
            source.overrides[tuple(parts)] = text
    for slot, texts in created.items():
        value = _get(raw, slot)
        if isinstance(value, dict) and "type" not in value:
            problems.append(_half_built_slot(raw, slot, texts))
            if len(slot) == 2 and isinstance(raw.get(slot[0]), dict):
                del raw[slot[0]][slot[1]]  # reported here; its own validation would only repeat it
    return problems


def _set(raw: dict[str, Any], parts: list[str], value: Any, text: str) -> Problem | None:
    """Set (or, for ``None``, remove) the value at ``parts``; a Problem when the path is blocked."""
    key = ".".join(parts)
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            return Problem(key, f"override '{text}': '{'.'.join(parts[:depth])}' is not a mapping")
        if value is None and part not in node:
            return None  # removing something that is not there: nothing to do
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        if value is None:
            node.pop(int(last))
        else:
            node[int(last)] = value
    elif isinstance(node, dict):
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    else:
        return Problem(key, f"override '{text}': '{'.'.join(parts[:-1])}' is not a mapping")
    return None


def _half_built_slot(raw: dict[str, Any], slot: tuple[str, ...], texts: list[str]) -> Problem:
    path = ".".join(slot)
    overrides = ", ".join(f"'{t}'" for t in texts)
    if len(slot) == 1:
        message = f"override {overrides} sets '{path}', which the recipe does not have; add {path}.type=... too"
        return Problem(path, message, None, f"override '{texts[0]}'")
    section, name = slot
    existing = raw.get(section)
    names = [str(n) for n in existing if n != name] if isinstance(existing, dict) else []
    message = f"override {overrides} would create {section}.{name}, which the recipe does not have"
    if names:
        message += f" ({section}: {', '.join(names)})"
    hint = suggest(name, names)
    message += f". Did you mean '{section}.{hint}'?" if hint else "."
    message += f" To add it, give its component too: {path}.type=<component> (see `mmfuse plugins`)"
    return Problem(path, message, None, f"override '{texts[0]}'")
