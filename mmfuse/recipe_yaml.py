"""Reading recipe files safely: YAML with line numbers, bounded alias expansion, no duplicate
keys, and composition of a recipe from ``base:`` files. Imports no torch.

* **Bounded aliases.** YAML anchors and aliases let ten lines describe a billion nodes ("billion
  laughs"). The composer counts the nodes each alias expands to while it reads, and stops at
  :data:`MAX_EXPANDED_NODES` with the line of the alias that went over; a recursive alias is an
  error too. Nothing is expanded before the count says it is small.
* **Duplicate keys** (``trainer:`` twice, a key repeated in a mapping) are reported with both
  lines instead of the YAML default of silently keeping the last one.
* **Composition.** ``base: other.yaml`` (or a list, applied in order) names recipes this one
  builds on, relative to this file. Mappings merge key by key, anything else is replaced, and
  ``key: null`` removes the key (the default applies again, or a slot disappears). Every value
  keeps the file and line it came from, so errors point into the right file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mmfuse.recipe_problems import Problem, RecipeError, RecipeSource

__all__ = ["MAX_EXPANDED_NODES", "MAX_BASE_DEPTH", "read_yaml", "read_recipe_file", "deep_merge"]

#: a recipe expanded through its aliases may hold at most this many YAML nodes (the largest shipped
#: recipe has about 100; a label list of tens of thousands of classes still fits)
MAX_EXPANDED_NODES = 200_000

#: ``base:`` chains deeper than this are refused (a cycle is reported as a cycle before that)
MAX_BASE_DEPTH = 16

#: data paths are relative to the recipe file that names them; a base file's are made absolute
_DATA_PATH_KEYS = ("train", "val", "test", "root")


class _AliasBombError(Exception):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message, self.line = message, line


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader whose composer counts the expanded size of the document as it reads it."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it stands for, once fully composed
        self._expanded = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D401 - PyYAML hook
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            line = event.start_mark.line + 1
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    raise _AliasBombError(f"alias *{event.anchor} refers to itself (a recursive alias)", line)
                self._count(size, line, f"alias *{event.anchor}")
            return super().compose_node(parent, index)
        node = super().compose_node(parent, index)
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes.get(id(item), 1) for item in node.value)
        else:
            size = 1
        self._sizes[id(node)] = size
        self._count(1, node.start_mark.line + 1, "this value")
        return node

    def _count(self, size: int, line: int, what: str) -> None:
        self._expanded += size
        if self._expanded > MAX_EXPANDED_NODES:
            raise _AliasBombError(
                f"{what} expands the recipe past {MAX_EXPANDED_NODES:,} YAML nodes (nested anchors and "
                "aliases multiply); a recipe needs far fewer: write the values out or use fewer aliases",
                line,
            )


def _duplicate_keys(node: yaml.Node, file: str | None, path: tuple[str, ...] = (), seen: set[int] | None = None) -> list[Problem]:
    """Keys that appear twice in one mapping (YAML would keep the last one silently)."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an aliased node is checked once
        return []
    seen.add(id(node))
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key != "<<":
                if key in first_line:
                    problems.append(
                        Problem(
                            ".".join(path + (key,)),
                            f"'{key}' is given twice (lines {first_line[key]} and {line}); YAML would keep "
                            "only the last one: merge them into one entry",
                            line,
                            file,
                        )
                    )
                else:
                    first_line[key] = line
            problems += _duplicate_keys(value_node, file, path + (key,), seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _duplicate_keys(item, file, path + (str(index),), seen)
    return problems


def _record_lines(node: yaml.Node, path: tuple[str, ...], source: RecipeSource, file: str | None) -> None:
    source.record(path, node.start_mark.line + 1, file)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value)
            _record_lines(value_node, path + (key,), source, file)
            source.record(path + (key,), key_node.start_mark.line + 1, file, replace=True)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, path + (str(index),), source, file)


def read_yaml(text: str, file: str | None, source: RecipeSource | None = None) -> tuple[Any, RecipeSource]:
    """Parse one YAML document with the safety checks above; record each path's line."""
    source = source or RecipeSource(file=file)
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        problems = _duplicate_keys(node, file) if node is not None else []
        if problems:
            raise RecipeError(problems, file)
        data = loader.construct_document(node) if node is not None else None
    except _AliasBombError as exc:
        raise RecipeError([Problem("", exc.message, exc.line, file)], file) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise RecipeError([Problem("", f"invalid YAML: {exc}", line, file)], file) from exc
    finally:
        loader.dispose()
    if node is not None:
        _record_lines(node, (), source, file)
    return data, source


def deep_merge(base: Any, update: Any) -> Any:
    """``update`` laid over ``base``: mappings merge key by key, ``None`` removes a key, anything
    else replaces. Neither argument is modified."""
    if not isinstance(base, dict) or not isinstance(update, dict):
        return _copy(update)
    merged = {key: _copy(value) for key, value in base.items()}
    for key, value in update.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = _copy(value)
    return merged


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def read_recipe_file(path: str | Path) -> tuple[Any, RecipeSource]:
    """Read a recipe file and the ``base:`` files it builds on; return the merged raw recipe and
    where each value came from (file and line)."""
    path = Path(path)
    source = RecipeSource(file=str(path))
    raw = _read_composed(path, source, chain=())
    return raw, source


def _read_text(path: Path, chain: tuple[Path, ...]) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        where = f" (named by 'base:' in {chain[-1]})" if chain else ""
        named_in = str(chain[-1]) if chain else str(path)
        raise RecipeError(
            [Problem("base" if chain else "", f"cannot read recipe {path}{where}: {exc.strerror or exc}", None, named_in)],
            named_in,
        ) from exc
    except UnicodeDecodeError as exc:
        raise RecipeError([Problem("", f"recipe is not UTF-8 text ({exc.reason} at byte {exc.start})", None, str(path))], str(path)) from exc


def _read_composed(path: Path, source: RecipeSource, chain: tuple[Path, ...]) -> Any:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise RecipeError([Problem("base", f"'base:' files form a cycle: {cycle}", None, str(chain[-1]))], str(path))
    if len(chain) >= MAX_BASE_DEPTH:
        raise RecipeError([Problem("base", f"'base:' chain deeper than {MAX_BASE_DEPTH} files", None, str(path))], str(path))
    own = RecipeSource(file=str(path))
    data, own = read_yaml(_read_text(path, chain), str(path), own)
    if not isinstance(data, dict) or "base" not in data:
        _absolutise_data_paths(data, path, chain)
        source.absorb(own)
        return data
    bases = data.pop("base")
    names = [bases] if isinstance(bases, str) else bases
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        line, _ = own.locate(("base",))
        raise RecipeError(
            [Problem("base", f"'base' must be a file name or a list of file names, got {bases!r}", line, str(path))],
            str(path),
        )
    merged: Any = {}
    for name in names:
        base_path = Path(name).expanduser()
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        merged = deep_merge(merged, _read_composed(base_path, source, chain + (resolved,)))
    _absolutise_data_paths(data, path, chain)
    source.absorb(own)
    return deep_merge(merged, data)


def _absolutise_data_paths(data: Any, path: Path, chain: tuple[Path, ...]) -> None:
    """Data paths in a base file are relative to that file; make them absolute so they keep
    pointing at the same files from the recipe that builds on it."""
    if not chain or not isinstance(data, dict) or not isinstance(data.get("data"), dict):
        return
    section = data["data"]
    for key in _DATA_PATH_KEYS:
        value = section.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            section[key] = str((path.parent / value).resolve())
