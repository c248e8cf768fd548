"""The in-app Predictor: raw samples in, decoded predictions / probabilities / embeddings out.

``mmfuse.load(path)`` returns a :class:`Predictor`. Samples are dicts keyed by the recipe's column
names (``recipe.column_of(encoder)``)::

    predictor.predict([{"text": "a cat", "image": "cat.png"}, {"text": "no picture"}])

A missing modality (absent key or ``None``) is masked, as in training. Preprocessing uses each
encoder's own ``preprocessor()`` and the data pipeline's :class:`~mmfuse.data.collate.BatchCollator`,
the same code path as training.

Thread safety: preprocessing runs in the calling thread (several threads preprocess in parallel);
the forward pass is serialised by a lock, so one Predictor may be shared by a web server's threads.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from mmfuse.contracts import Preprocessor, SampleError, Task
from mmfuse.data.collate import BatchCollator
from mmfuse.data.dataset import Sample as PreprocessedSample
from mmfuse.model import FusedModel
from mmfuse.recipe import Recipe
from mmfuse.registry import Registry

__all__ = ["Predictor", "load", "probability_labels"]

Sample = Mapping[str, Any]


class Predictor:
    """Batched, thread-safe inference over a FusedModel; ``.module`` is the plain model."""

    def __init__(
        self,
        model: FusedModel,
        recipe: Recipe,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.module = model.to(self.device).eval()
        self.recipe = recipe
        self.batch_size = batch_size
        self.preprocessors: dict[str, Preprocessor] = {
            name: encoder.preprocessor() for name, encoder in model.encoders.items()
        }
        self.columns: dict[str, str] = {name: recipe.column_of(name) for name in model.encoders}
        self._collator = BatchCollator(self.preprocessors, tasks={})
        self._lock = threading.Lock()

    @property
    def tasks(self) -> list[str]:
        return list(self.module.tasks)

    # ----------------------------------------------------------------- public API

    def predict(self, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        """One ``{task: prediction}`` per sample (labels decoded by each task)."""
        results: list[dict[str, Any]] = []
        for outputs, count in self._run(samples):
            per_task = {name: self.module.tasks[name].predict(out) for name, out in outputs.items()}
            results += [{name: values[i] for name, values in per_task.items()} for i in range(count)]
        return results

    def predict_proba(self, samples: Sequence[Sample]) -> list[dict[str, dict[Any, float]]]:
        """One ``{task: {label: probability}}`` per sample, for the tasks that have probabilities."""
        results: list[dict[str, dict[Any, float]]] = []
        for outputs, count in self._run(samples):
            per_task = {}
            for name, out in outputs.items():
                probabilities = self.module.tasks[name].probabilities(out)
                if probabilities is not None:
                    labels = probability_labels(self.module.tasks[name], probabilities.shape[-1])
                    per_task[name] = [dict(zip(labels, row)) for row in probabilities.float().cpu().tolist()]
            results += [{name: rows[i] for name, rows in per_task.items()} for i in range(count)]
        return results

    def embed(self, samples: Sequence[Sample]) -> Tensor:
        """The fused vectors ``[N, D]`` (on CPU): the fusion head's output, before task heads."""
        chunks = []
        for start in range(0, len(samples), self.batch_size):
            batch = self.collate(samples[start : start + self.batch_size], offset=start)
            with self._lock, torch.inference_mode():
                features, present = self.module.encode(batch)
                chunks.append(self.module.fusion(features, present).float().cpu())
        if not chunks:
            return torch.empty(0, int(self.module.fusion.output_dim))
        return torch.cat(chunks)

    def generate(
        self,
        samples: Sequence[Sample],
        task: str | None = None,
        prompts: Sequence[str | None] | None = None,
        **decoding: Any,
    ) -> list[str]:
        """One generated text per sample from a text-generation task (``mmfuse/generation``).

        ``task``: which one, when the model has several; ``prompts``: one per sample (``None``:
        the task's configured prompt); ``decoding`` overrides the task's settings for this call:
        ``max_new_tokens``, ``num_beams``, ``do_sample``, ``temperature``, ``top_p``."""
        name = self._generation_task(task)
        generator = self.module.tasks[name]
        if prompts is not None and len(prompts) != len(samples):
            raise ValueError(f"generate: {len(prompts)} prompts for {len(samples)} samples")
        texts: list[str] = []
        for start in range(0, len(samples), self.batch_size):
            batch = self.collate(samples[start : start + self.batch_size], offset=start)
            chunk_prompts = None if prompts is None else prompts[start : start + self.batch_size]
            with self._lock, torch.inference_mode():
                features, present = self.module.encode(batch)
                outputs = generator(self.module.fusion(features, present), features, present)
                texts += generator.generate(outputs, chunk_prompts, **decoding)
        return texts

    def _generation_task(self, task: str | None) -> str:
        generators = [name for name, module in self.module.tasks.items() if callable(getattr(module, "generate", None))]
        if task is not None:
            if task not in generators:
                raise ValueError(f"'{task}' is not a text-generation task of this model; those are {generators}")
            return task
        if len(generators) != 1:
            raise ValueError(
                f"this model has {len(generators)} text-generation tasks {generators}; "
                + ("pass task=<name>" if generators else "generate needs a task of type mmfuse/generation")
            )
        return generators[0]

    def collate(self, samples: Sequence[Sample], offset: int = 0) -> dict[str, Any]:
        """Raw samples -> the model's batch dict (``inputs`` and ``present``) on the device."""
        for index, sample in enumerate(samples):
            if not isinstance(sample, Mapping):
                raise SampleError(f"sample {offset + index}: expected a dict keyed by column, got {type(sample).__name__}")
            if not any(sample.get(column) is not None for column in self.columns.values()):
                raise SampleError(
                    f"sample {offset + index} has none of this model's input columns "
                    f"{sorted(set(self.columns.values()))}; got keys {sorted(map(str, sample))}"
                )
        preprocessed = [
            PreprocessedSample(
                inputs={name: self._preprocess(name, column, sample.get(column), offset + i) for name, column in self.columns.items()},
                targets={},
                index=offset + i,
            )
            for i, sample in enumerate(samples)
        ]
        batch = self._collator(preprocessed)
        inputs = {
            name: {key: value.to(self.device, non_blocking=True) for key, value in tensors.items()}
            for name, tensors in batch["inputs"].items()
        }
        present = {name: mask.to(self.device, non_blocking=True) for name, mask in batch["present"].items()}
        return {"inputs": inputs, "present": present}

    # ----------------------------------------------------------------- internals

    def _preprocess(self, encoder: str, column: str, value: Any, index: int) -> dict[str, Tensor] | None:
        if value is None:
            return None
        try:
            return self.preprocessors[encoder](value)
        except SampleError as exc:
            raise SampleError(f"sample {index}, column '{column}': {exc}") from exc
        except (OSError, ValueError, RuntimeError, EOFError) as exc:
            # a decoder's own error (the types the training Dataset also treats as a bad sample):
            # the caller's input is bad, which a server must answer as such, not as a crash
            raise SampleError(f"sample {index}, column '{column}': cannot read it ({type(exc).__name__}: {exc})") from exc

    def _run(self, samples: Sequence[Sample]):
        """Yield (task outputs, batch size) per internal batch."""
        for start in range(0, len(samples), self.batch_size):
            chunk = samples[start : start + self.batch_size]
            batch = self.collate(chunk, offset=start)
            with self._lock, torch.inference_mode():
                outputs = self.module(batch)
            yield outputs, len(chunk)



def probability_labels(task: Task, count: int) -> list[Any]:
    """Keys for ``count`` probability columns of ``task``: its ``label_names()``, or the column
    indices when it names none (or names a different number)."""
    labels = task.label_names()
    if labels is None or len(labels) != count:
        return list(range(count))
    return list(labels)


def load(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    registry: Registry | None = None,
) -> Predictor:
    """A Predictor over the model folder (or run folder) at ``path``."""
    from mmfuse.artifact import load_model

    model, recipe = load_model(path, registry=registry, device=device)
    return Predictor(model, recipe, device=device, batch_size=batch_size)
