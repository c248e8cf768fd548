"""A map-style Dataset over a manifest: each item is one row preprocessed by every encoder's
preprocessor, in the DataLoader worker that fetches it.

Cheap checks run once, up front, in the main process (columns exist, targets present and known,
media files exist), so most bad data is reported before training starts; files that exist but
cannot be decoded are found when a worker reads them. Either way the error names the manifest,
the line and the column; with ``on_bad_sample: skip`` the row is dropped instead and counted in
its batch's ``"skipped"``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from torch import Tensor
from torch.utils.data import Dataset

from mmfuse.contracts import ExtraInput, Preprocessor, SampleError, Task
from mmfuse.data.augmentation import SampleIndex, augment_inputs
from mmfuse.data.errors import DataError
from mmfuse.data.manifest import Manifest, Row

__all__ = ["Sample", "Skipped", "ManifestDataset", "build_dataset", "READ_ERRORS"]

log = logging.getLogger("mmfuse.data")

#: exceptions that mean "this value cannot be read" (decoders raise OSError / ValueError /
#: RuntimeError subclasses: PIL.UnidentifiedImageError, av.error.*, soundfile.LibsndfileError);
#: anything else is a bug in a preprocessor and propagates unchanged
READ_ERRORS: tuple[type[BaseException], ...] = (SampleError, OSError, ValueError, RuntimeError, EOFError)

#: skipped rows logged per dataset and process; the rest are only counted
_LOGGED_SKIPS = 5


@dataclass
class Sample:
    """One preprocessed row: ``inputs[encoder]`` is None where the row lacks that modality;
    ``task_inputs[task][name]`` likewise for the inputs a task reads (``Task.extra_inputs``)."""

    inputs: dict[str, dict[str, Tensor] | None]
    targets: dict[str, Tensor]
    index: int = -1  # position in the dataset, so predictions can be matched back to rows
    task_inputs: dict[str, dict[str, dict[str, Tensor] | None]] = field(default_factory=dict)


@dataclass
class Skipped:
    """A row dropped under ``on_bad_sample: skip``; the collate function counts it."""

    reason: str


class ManifestDataset(Dataset):
    """Rows of a manifest -> :class:`Sample` (or :class:`Skipped`)."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        columns: Mapping[str, str],
        preprocessors: Mapping[str, Preprocessor],
        targets: Mapping[str, tuple[str, Task]] | None = None,
        extra_inputs: Mapping[str, Mapping[str, ExtraInput]] | None = None,
        on_bad_sample: Literal["error", "skip"] = "error",
        check_files: bool = True,
        check_columns: bool = True,
    ) -> None:
        """``columns``: encoder -> manifest column; ``targets``: task -> (column, task);
        ``extra_inputs``: task -> its ``Task.extra_inputs()`` (a row must have one of each task's
        columns, as a model's own prediction needs one of its input columns).

        ``check_columns``: an input column that no row has is an error (a typo, or an encoder that
        would never train); off for evaluation / prediction files, which may lack a modality."""
        self.manifest = manifest
        self.columns = dict(columns)
        self.preprocessors = dict(preprocessors)
        self.extra_inputs = {task: dict(specs) for task, specs in (extra_inputs or {}).items() if specs}
        self.on_bad_sample = on_bad_sample
        self._target_columns = {name: column for name, (column, _) in (targets or {}).items()}
        self._skip_reasons: dict[int, str] = {}
        self._targets: list[dict[str, Tensor]] = []
        self._logged = 0
        self._paths: dict[str, str] = {}
        #: set on the training split only: seed of ``Preprocessor.augment`` (mmfuse.data.augmentation)
        self.augmentation_seed: int | None = None
        #: a :class:`mmfuse.cache.samples.SampleCache` consulted before a preprocessor runs
        self.sample_cache: Any = None
        #: the DataLoader settings chosen for this dataset (:mod:`mmfuse.data.workers`), set by
        #: :func:`build_dataset`; None: the loader chooses from the machine alone
        self.loader_plan: Any = None
        self._check_columns(check_columns)
        problems = self._encode_targets(targets or {})
        problems += self._check_rows(check_files)
        self._handle(problems)

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, index: int) -> Sample | Skipped:
        reason = self._skip_reasons.get(index)
        if reason is not None:
            return Skipped(reason)
        row = self.manifest.rows[index]
        inputs: dict[str, dict[str, Tensor] | None] = {}
        task_inputs: dict[str, dict[str, dict[str, Tensor] | None]] = {}
        try:
            for name, column in self.columns.items():
                inputs[name] = self._preprocess(name, self.preprocessors[name], row, column)
            for task, specs in self.extra_inputs.items():
                # cached under the task's namespace: a teacher's 'text' is not the student's 'text'
                task_inputs[task] = {
                    name: self._preprocess(f"{task}.{name}", spec.preprocessor, row, spec.column)
                    for name, spec in specs.items()
                }
        except DataError as error:
            if self.on_bad_sample == "error":
                raise
            self._log_skip(error)
            return Skipped(str(error))
        if self.augmentation_seed is not None:  # after the deterministic (cacheable) preprocessing
            inputs = augment_inputs(inputs, self.preprocessors, index, self.augmentation_seed)
        # a SampleIndex keeps its epoch (the collate function passes it on for per-sample masking)
        position = index if isinstance(index, SampleIndex) else int(index)
        return Sample(inputs=inputs, targets=self._targets[index], index=position, task_inputs=task_inputs)

    def distinct_values(self) -> dict[str, int]:
        """Encoder -> how many distinct values its column holds (what a full cache stores)."""
        values: dict[str, set[str]] = {name: set() for name in self.columns}
        for row in self.manifest.rows:
            for name, column in self.columns.items():
                value = row.values.get(column)
                if value is not None:
                    values[name].add(str(value))
        return {name: len(found) for name, found in values.items()}

    # ------------------------------------------------------------------ reading one value

    def _preprocess(self, name: str, preprocessor: Preprocessor, row: Row, column: str) -> dict[str, Tensor] | None:
        value = row.values.get(column)
        if value is None:
            return None
        if preprocessor.reads_files and isinstance(value, str):
            value = self._resolved_path(value)
        try:
            if self.sample_cache is not None:
                return self.sample_cache.fetch(name, preprocessor, value, lambda: preprocessor(value))
            return preprocessor(value)
        except SampleError as exc:  # the preprocessor's own message already says what is wrong
            raise self._error(row, column, str(exc)) from exc
        except READ_ERRORS as exc:
            # existence is checked after a failure, not before every read (one stat less per
            # file and epoch; the up-front check_files pass has already reported missing files)
            if preprocessor.reads_files and isinstance(value, str) and not Path(value).is_file():
                raise self._error(row, column, _not_a_file(Path(value))) from exc
            what = f"cannot read {preprocessor.modality} file {value}" if preprocessor.reads_files else f"bad {preprocessor.modality} value"
            raise self._error(row, column, f"{what}: {type(exc).__name__}: {exc}") from exc

    def _resolved_path(self, value: str) -> str:
        """A row's media path made absolute against the data root (remembered: rows repeat every epoch)."""
        resolved = self._paths.get(value)
        if resolved is None:
            resolved = self._paths[value] = str(self.manifest.resolve(value))
        return resolved

    def _error(self, row: Row, column: str | None, reason: str) -> DataError:
        return DataError(reason, manifest=self.manifest.path, line=row.line, column=column)

    def _log_skip(self, error: DataError) -> None:
        if self._logged < _LOGGED_SKIPS:
            log.warning("skipping bad sample: %s", error)
        self._logged += 1

    # ------------------------------------------------------------------ up-front checks

    def _check_columns(self, inputs_too: bool) -> None:
        present = self.manifest.columns()
        wanted = [("encoder", name, column) for name, column in self.columns.items()] if inputs_too else []
        wanted += [("task", name, column) for name, column in self._target_columns.items()]
        for kind, name, column in wanted:
            if column not in present:
                where = "encoders" if kind == "encoder" else "tasks"
                key = "column" if kind == "encoder" else "target"
                raise DataError(
                    f"no row has column '{column}' ({kind} '{name}'); the manifest's columns are "
                    f"{sorted(present)}. Set {where}.{name}.{key} to the right column.",
                    manifest=self.manifest.path,
                )

    def _encode_targets(self, targets: Mapping[str, tuple[str, Task]]) -> list[tuple[int, DataError]]:
        problems: list[tuple[int, DataError]] = []
        for index, row in enumerate(self.manifest.rows):
            encoded: dict[str, Tensor] = {}
            for name, (column, task) in targets.items():
                value = row.values.get(column)
                if value is None:
                    problems.append((index, self._error(row, column, f"missing target for task '{name}'")))
                    continue
                try:
                    encoded[name] = task.encode_target(value)
                except (SampleError, ValueError, TypeError) as exc:
                    problems.append((index, self._error(row, column, f"bad target for task '{name}': {exc}")))
            self._targets.append(encoded)
        return problems

    def _check_rows(self, check_files: bool) -> list[tuple[int, DataError]]:
        problems: list[tuple[int, DataError]] = []
        file_columns = {column for name, column in self.columns.items() if self.preprocessors[name].reads_files}
        file_columns |= {
            spec.column for specs in self.extra_inputs.values() for spec in specs.values() if spec.preprocessor.reads_files
        }
        extra_columns = {task: sorted({spec.column for spec in specs.values()}) for task, specs in self.extra_inputs.items()}
        for index, row in enumerate(self.manifest.rows):
            if all(row.values.get(column) is None for column in self.columns.values()):
                columns = sorted(set(self.columns.values()))
                problems.append((index, self._error(row, None, f"row has none of the input columns {columns}")))
                continue
            lacking = [task for task, columns in extra_columns.items() if all(row.values.get(c) is None for c in columns)]
            if lacking:
                task = lacking[0]
                reason = f"row has none of the columns {extra_columns[task]} that task '{task}' reads"
                problems.append((index, self._error(row, None, reason)))
                continue
            if not check_files:
                continue
            for column in sorted(file_columns):
                value = row.values.get(column)
                if isinstance(value, str) and not self.manifest.resolve(value).is_file():
                    problems.append((index, self._error(row, column, _not_a_file(self.manifest.resolve(value)))))
        return problems

    def _handle(self, problems: list[tuple[int, DataError]]) -> None:
        if not problems:
            return
        if self.on_bad_sample == "error":
            raise DataError.combine(
                [error for _, error in problems],
                hint="Fix these rows, or skip bad samples (recipe: data.on_bad_sample=skip; eval / predict: --on-bad-sample skip).",
            )
        for index, error in problems:
            self._skip_reasons.setdefault(index, str(error))
        log.warning(
            "%s: %d of %d rows will be skipped (data.on_bad_sample=skip); first: %s",
            self.manifest.path, len(self._skip_reasons), len(self.manifest), problems[0][1],
        )


def _not_a_file(path: Any) -> str:
    if path.is_dir():
        return f"{path} is a folder, not a file; name the media file inside it"
    return f"file not found: {path}"


def build_dataset(
    manifest: Manifest,
    recipe: Any,
    model: Any,
    *,
    preprocessors: Mapping[str, Preprocessor] | None = None,
    with_targets: bool = True,
    training: bool = False,
) -> ManifestDataset:
    """The dataset of ``manifest`` for a FusedModel built from ``recipe`` (columns, targets and
    the ``data`` options come from the recipe; preprocessors from the model's encoders).
    ``training``: every input column must appear in some row."""
    if preprocessors is None:
        preprocessors = {name: encoder.preprocessor() for name, encoder in model.encoders.items()}
    targets = None
    if with_targets:
        targets = {
            name: (recipe.target_of(name), task) for name, task in model.tasks.items() if task.needs_target
        }
    dataset = ManifestDataset(
        manifest,
        columns={name: recipe.column_of(name) for name in model.encoders},
        preprocessors=preprocessors,
        targets=targets,
        extra_inputs={name: task.extra_inputs() for name, task in model.tasks.items()},
        on_bad_sample=recipe.data.on_bad_sample,
        check_files=recipe.data.check_files,
        check_columns=training,
    )
    if training:  # augmentation (Preprocessor.augment) happens on the training split only
        dataset.augmentation_seed = int(getattr(recipe, "seed", 0))
    from mmfuse.cache.samples import cache_root_for, sample_cache_for, warm_on_disk
    from mmfuse.data.workers import plan_loader

    data = recipe.data
    warm = data.cache in ("auto", "disk") and warm_on_disk(
        cache_root_for(recipe), dataset.preprocessors, dataset.distinct_values()
    )
    dataset.loader_plan = plan_loader(
        data, rows=len(dataset), decodes_files=any(p.reads_files for p in dataset.preprocessors.values()),
        cache_warm=warm, train=training,
    )
    dataset.sample_cache = sample_cache_for(
        recipe, augmented=dataset.augmentation_seed is not None, num_workers=dataset.loader_plan.num_workers, warm=warm
    )
    return dataset
