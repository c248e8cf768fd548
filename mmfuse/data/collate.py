"""Collate :class:`~mmfuse.data.dataset.Sample` items into the batch layout of
:mod:`mmfuse.contracts`: padded inputs per encoder, presence masks, stacked targets, and the
count of skipped rows. A task with extra inputs (``Task.extra_inputs``) gets them collated the
same way, inside its targets entry. ``"index"`` holds the dataset positions of the rows in the
batch (a key the model ignores; predictions use it to match rows) and ``"epoch"`` the training
epoch they were drawn for (0 outside training): with them a ``Task.prepare_batch`` seeds its
random masks per sample, independently of process, worker and resume point."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from mmfuse.cache.samples import split_sample_keys
from mmfuse.contracts import Preprocessor, Task
from mmfuse.data.dataset import Sample, Skipped

__all__ = ["BatchCollator"]


class BatchCollator:
    """``collate_fn`` for a DataLoader over :class:`~mmfuse.data.dataset.ManifestDataset`.

    A batch whose rows were all skipped has empty ``inputs`` and ``targets`` and only counts them
    in ``"skipped"``; a training loop should step over it.
    """

    def __init__(self, preprocessors: Mapping[str, Preprocessor], tasks: Mapping[str, Task]) -> None:
        self.preprocessors = dict(preprocessors)
        self.tasks = {name: task for name, task in tasks.items() if task.needs_target}
        self.extra_inputs = {name: specs for name, task in tasks.items() if (specs := task.extra_inputs())}
        # tasks that change the batch themselves (self-supervised masking, Task.prepare_batch)
        self.batch_preparers = {
            name: task for name, task in tasks.items() if type(task).prepare_batch is not Task.prepare_batch
        }

    def __call__(self, items: Sequence[Sample | Skipped]) -> dict[str, Any]:
        samples = [item for item in items if isinstance(item, Sample)]
        skipped = len(items) - len(samples)
        if not samples:
            return {"inputs": {}, "present": {}, "targets": {}, "skipped": skipped, "index": torch.empty(0, dtype=torch.long)}
        inputs = {}
        present = {}
        sample_keys = {}
        for name, preprocessor in self.preprocessors.items():
            values, keys = split_sample_keys([sample.inputs.get(name) for sample in samples])
            inputs[name] = preprocessor.collate(values)
            if keys is not None:  # per-sample keys for the frozen-encoder feature cache
                sample_keys[name] = keys
            present[name] = torch.tensor([value is not None for value in values], dtype=torch.bool)
        targets: dict[str, Any] = {
            name: task.collate_targets([sample.targets[name] for sample in samples])
            for name, task in self.tasks.items()
        }
        for name, specs in self.extra_inputs.items():
            targets[name] = {"target": targets.get(name), **self._collate_extra(name, specs, samples)}
        index = torch.tensor([int(sample.index) for sample in samples], dtype=torch.long)
        epoch = getattr(samples[0].index, "epoch", 0)  # a SampleIndex from the engine's sampler
        batch = {"inputs": inputs, "present": present, "targets": targets, "skipped": skipped, "index": index, "epoch": epoch}
        for name, task in self.batch_preparers.items():
            task.prepare_batch(name, batch)
        if sample_keys and not self.batch_preparers:  # a task that edits inputs makes stored features stale
            batch["sample_keys"] = sample_keys
        return batch

    @staticmethod
    def _collate_extra(task: str, specs: Mapping[str, Any], samples: Sequence[Sample]) -> dict[str, Any]:
        """A task's extra inputs -> ``{"inputs": {name: tensors}, "present": {name: mask}}``."""
        inputs, present = {}, {}
        for name, spec in specs.items():
            values, _ = split_sample_keys([sample.task_inputs.get(task, {}).get(name) for sample in samples])
            inputs[name] = spec.preprocessor.collate(values)
            present[name] = torch.tensor([value is not None for value in values], dtype=torch.bool)
        return {"inputs": inputs, "present": present}
