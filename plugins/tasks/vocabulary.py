"""Label vocabularies of the built-in tasks (classification, multilabel, distillation), in one home:
validating a configured label list, learning one from training targets, and looking labels up.

Torch-free: the config classes in ``__init__`` use it, and ``mmfuse validate`` imports those
without torch.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence, Union

__all__ = ["Label", "LabelVocabulary", "check_vocabulary", "sorted_labels"]

#: a label as written in a recipe or a manifest
Label = Union[int, str]


def check_vocabulary(
    task: str, labels: Sequence[Any] | None, minimum: int, weights_field: str, weights: dict[str, float] | None
) -> None:
    """A configured label list: long enough, unique, and the per-label weights name its labels."""
    if labels is None:
        return
    if len(labels) < minimum:
        raise ValueError(f"{task} needs at least {minimum} label{'s' if minimum > 1 else ''}")
    names = {str(label) for label in labels}
    if len(names) != len(labels):
        raise ValueError(f"labels must be unique, got {list(labels)}")
    unknown = set(weights or {}) - names
    if unknown:
        raise ValueError(f"{weights_field} names unknown labels {sorted(unknown)}")


def sorted_labels(values: Iterable[Any]) -> list[Any]:
    """The distinct labels among ``values`` (None skipped), numbers first in numeric order, then
    strings; stable, so the same training targets always give the same vocabulary."""
    unique = {str(value): value for value in values if value is not None}
    return [unique[key] for key in sorted(unique, key=_sort_key)]


def _sort_key(text: str) -> tuple[int, Any]:
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


class LabelVocabulary:
    """Labels in output-index order, looked up by their string form (``3`` and ``"3"`` match)."""

    def __init__(self, labels: Sequence[Label]) -> None:
        self.labels = list(labels)
        self._index = {str(label): index for index, label in enumerate(self.labels)}

    def __len__(self) -> int:
        return len(self.labels)

    def index_of(self, label: Any) -> int:
        """The output index of ``label``; an unknown label is a SampleError listing known ones."""
        index = self._index.get(str(label))
        if index is None:
            # imported here: mmfuse.contracts imports torch, and config modules import this file
            from mmfuse.contracts import SampleError

            known = ", ".join(repr(known) for known in self.labels[:10])
            more = f" (and {len(self.labels) - 10} more)" if len(self.labels) > 10 else ""
            raise SampleError(f"unknown label {label!r}; known labels: {known}{more}")
        return index

    def decode(self, indices: Iterable[int]) -> list[Label]:
        """Output indices -> labels."""
        return [self.labels[index] for index in indices]
