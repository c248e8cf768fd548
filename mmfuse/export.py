"""Export a model folder's FusedModel to ONNX or a torch.export program (``.pt2``).

Only the module is exported; preprocessing (tokenizers, image decoding, audio resampling) stays
in Python: run ``Predictor.collate`` (or each encoder's preprocessor + collate) to make the inputs.

The exported graph takes flat tensors instead of the batch dict, in this order and with these names:

* ``inputs.<encoder>.<tensor>`` for each encoder (recipe order) and each tensor its preprocessor's
  ``collate`` returns (sorted by name), then
* ``present.<encoder>`` — bool ``[B]``, False where the sample lacks that modality.

Outputs are the task outputs in recipe order: ``<task>`` for a tensor output (e.g. logits),
``<task>.<key>`` / ``<task>.<index>`` for dict / tuple outputs. Every dimension that is neither 0
nor 1 in the example batch and that the model does not fix (batch size, sequence length) stays
dynamic. So the export is traced on a batch whose rows differ in size, and is then checked on a
second batch of another batch size (and other lengths, where the samples allow): a dimension the
exporter fixed from the example is an ExportError naming the input, not an export that rejects
every real input. A ``<out>.json`` file next to the export lists the names, shapes and label
vocabularies and the parity measured against eager PyTorch on both batches.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from mmfuse.artifact import load_model, resolve_model_dir
from mmfuse.model import FusedModel
from mmfuse.recipe import Recipe

__all__ = ["FORMATS", "PARITY_TOLERANCE", "ExportError", "FlatFusedModel", "export_model", "example_batch"]

log = logging.getLogger("mmfuse.export")

FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The model could not be exported, or the export does not match eager PyTorch."""


class FlatFusedModel(nn.Module):
    """A FusedModel with flat tensor inputs and outputs (see the module docstring for names)."""

    def __init__(self, model: FusedModel, input_keys: Mapping[str, Sequence[str]], output_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.input_keys = {name: list(keys) for name, keys in input_keys.items()}
        self.output_names = list(output_names)

    @property
    def input_names(self) -> list[str]:
        names = [f"inputs.{enc}.{key}" for enc, keys in self.input_keys.items() for key in keys]
        return names + [f"present.{enc}" for enc in self.input_keys]

    def flatten_batch(self, batch: Mapping[str, Any]) -> tuple[Tensor, ...]:
        """Batch dict -> the positional tensors this module takes."""
        tensors = [batch["inputs"][enc][key] for enc, keys in self.input_keys.items() for key in keys]
        return tuple(tensors) + tuple(batch["present"][enc] for enc in self.input_keys)

    def forward(self, *flat: Tensor) -> tuple[Tensor, ...]:
        position = 0
        inputs: dict[str, dict[str, Tensor]] = {}
        for enc, keys in self.input_keys.items():
            inputs[enc] = {key: flat[position + i] for i, key in enumerate(keys)}
            position += len(keys)
        present = {enc: flat[position + i] for i, enc in enumerate(self.input_keys)}
        return tuple(_flatten_outputs(self.model({"inputs": inputs, "present": present})).values())


def _flatten_outputs(outputs: Mapping[str, Any]) -> dict[str, Tensor]:
    flat: dict[str, Tensor] = {}
    for task, value in outputs.items():
        if isinstance(value, Tensor):
            flat[task] = value
        elif isinstance(value, Mapping):
            flat.update({f"{task}.{key}": item for key, item in value.items() if isinstance(item, Tensor)})
        elif isinstance(value, (tuple, list)):
            flat.update({f"{task}.{index}": item for index, item in enumerate(value) if isinstance(item, Tensor)})
        else:
            raise ExportError(f"task '{task}' returns {type(value).__name__}; only tensors, dicts and tuples of tensors export")
    return flat


def example_batch(model: FusedModel, recipe: Recipe, samples: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """A CPU batch dict to trace with: from raw ``samples`` through the Predictor's preprocessing,
    or, without samples, each preprocessor's padding rows for a batch of 2, marked present.

    Dimensions of size 0 or 1 in the example are fixed in the export: give samples with a batch of
    at least 2 and sequences of different lengths to keep those dimensions dynamic."""
    from mmfuse.predict import Predictor

    predictor = Predictor(model, recipe, device="cpu", batch_size=max(1, len(samples or ())))
    if samples:
        return predictor.collate(samples)
    inputs = {name: pre.collate([None, None]) for name, pre in predictor.preprocessors.items()}
    present = {name: torch.ones(2, dtype=torch.bool) for name in inputs}
    return {"inputs": inputs, "present": present}


def example_batches(
    model: FusedModel, recipe: Recipe, example: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trace batch, check batch): the check batch has another batch size and, where the samples
    differ in length, other sequence lengths, so the export is checked on a shape it was not traced on.

    ``example`` None: three generated rows (``mmfuse.testing.samples``: texts, images, clips of
    different sizes) when every encoder's modality has them, else the padding rows of
    :func:`example_batch` (with a warning: their lengths are all alike)."""
    if isinstance(example, Mapping):
        trace = {"inputs": example["inputs"], "present": example["present"]}
        return trace, _other_batch_size(trace)
    samples = list(example) if example else None
    with tempfile.TemporaryDirectory(prefix="mmfuse-export-") as folder:
        if samples is None:
            samples = _generated_samples(model, recipe, Path(folder))
        if not samples:
            trace = example_batch(model, recipe, None)
            return trace, _other_batch_size(trace)
        trace = example_batch(model, recipe, samples)
        # fewer rows (and so, usually, shorter sequences); two rows given: one more row instead
        check_rows = samples[: len(samples) - 1] if len(samples) >= 3 else [*samples, samples[0]]
        return trace, example_batch(model, recipe, check_rows)


def _generated_samples(model: FusedModel, recipe: Recipe, folder: Path) -> list[dict[str, Any]]:
    from mmfuse.testing.samples import component_samples

    values: dict[str, list[Any]] = {}
    for name, encoder in model.encoders.items():
        modality = encoder.preprocessor().modality
        params = recipe.encoders[name].params if name in recipe.encoders else None
        try:
            values[recipe.column_of(name)] = component_samples(params, modality, folder)[:3]
        except (ValueError, OSError, ImportError) as exc:
            log.warning(
                "export: no sample %s values for encoder '%s' (%s); tracing on padding rows, whose lengths "
                "are all alike. Pass samples (--samples FILE.jsonl) to keep its dimensions dynamic.",
                modality, name, exc,
            )
            return []
    count = min(len(column) for column in values.values())
    return [{column: column_values[row] for column, column_values in values.items()} for row in range(count)]


def _other_batch_size(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The same batch with one row fewer (three rows or more) or one row repeated."""
    size = next(iter(batch["present"].values())).shape[0]
    rows = torch.arange(size - 1) if size >= 3 else torch.tensor([*range(size), 0])
    return {
        "inputs": {enc: {key: t.index_select(0, rows) for key, t in tensors.items()} for enc, tensors in batch["inputs"].items()},
        "present": {enc: t.index_select(0, rows) for enc, t in batch["present"].items()},
    }


def export_model(
    model_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    format: str = "onnx",
    example: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    registry: Any = None,
) -> Path:
    """Export the model of a model folder (or run folder) to ``out``; return ``out``.

    ``example`` is a batch dict (``inputs``/``present``), a list of raw samples, or None (see
    :func:`example_batches`). The export is checked against eager PyTorch on the example and on a
    batch of another size; a max abs difference above ``PARITY_TOLERANCE``, or an export that
    rejects the second batch, raises ExportError. ``registry``: default, the installed plugins.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    model_dir = resolve_model_dir(model_dir)
    model, recipe = load_model(model_dir, registry=registry, device="cpu")
    batch, check_batch = example_batches(model, recipe, example)
    input_keys = {enc: sorted(batch["inputs"][enc]) for enc in model.encoders if enc in batch["inputs"]}
    with torch.inference_mode():
        eager = _flatten_outputs(model(batch))
        eager_check = _flatten_outputs(model(check_batch))
    flat_model = FlatFusedModel(model, input_keys, list(eager)).eval()
    args = tuple(t.detach().cpu() for t in flat_model.flatten_batch(batch))
    check_args = tuple(t.detach().cpu() for t in flat_model.flatten_batch(check_batch))
    _warn_fixed_dimensions(flat_model.input_names, args, check_args)
    dynamic = (tuple({dim: torch.export.Dim.AUTO for dim in range(t.ndim)} for t in args),)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if format == "onnx":
            run_exported = _export_onnx(flat_model, args, dynamic, out)
        else:
            run_exported = _export_program(flat_model, args, dynamic, out)
        exported = run_exported(args)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"exporting {model_dir} to {format} failed: {type(exc).__name__}: {exc}") from exc
    try:
        exported_check = run_exported(check_args)
    except Exception as exc:
        raise ExportError(_rejects_other_shapes(out, format, flat_model.input_names, args, check_args, exc)) from exc
    difference = max(_max_difference(eager, exported), _max_difference(eager_check, exported_check))
    _write_sidecar(out, format, flat_model, args, eager, recipe, difference, model_dir, check_args)
    if difference > PARITY_TOLERANCE:
        raise ExportError(
            f"{out}: the {format} export differs from eager PyTorch by {difference:.3g} "
            f"(tolerance {PARITY_TOLERANCE}) on the example batches"
        )
    return out


def _max_difference(eager: Mapping[str, Tensor], exported: Sequence[Any]) -> float:
    return max((float((a - torch.as_tensor(b)).abs().max()) for a, b in zip(eager.values(), exported)), default=0.0)


def _warn_fixed_dimensions(names: Sequence[str], args: Sequence[Tensor], check_args: Sequence[Tensor]) -> None:
    """A size-1 dimension the check batch does not vary either: the export fixes it untested."""
    for name, traced, checked in zip(names, args, check_args):
        fixed = [dim for dim in range(1, traced.ndim) if traced.shape[dim] == 1 and checked.shape[dim] == 1]
        if fixed:
            log.warning(
                "export: %s has size 1 in dimension %s of the example (shape %s); the exporter fixes such a "
                "dimension, so inputs where it is longer will be rejected. Trace with samples where it varies.",
                name, ", ".join(map(str, fixed)), list(traced.shape),
            )


def _rejects_other_shapes(
    out: Path, format: str, names: Sequence[str], args: Sequence[Tensor], check_args: Sequence[Tensor], exc: Exception
) -> str:
    changed = [
        f"{name} (traced {list(a.shape)}, checked {list(b.shape)})"
        for name, a, b in zip(names, args, check_args)
        if a.shape != b.shape
    ]
    ones = [name for name, a in zip(names, args) if any(size == 1 for size in a.shape[1:])]
    hint = f" Inputs with a dimension of size 1 in the example, which the exporter fixes: {', '.join(ones)}." if ones else ""
    return (
        f"{out}: the {format} export rejects a batch of another shape, so it would reject real inputs: "
        f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. Inputs whose "
        f"shape changed: {', '.join(changed) or 'none'}.{hint} Trace with samples whose values differ in "
        f"length (--samples FILE.jsonl, at least two rows)."
    )


def _export_onnx(module: FlatFusedModel, args: tuple[Tensor, ...], dynamic: Any, out: Path):
    import onnxruntime

    parameter_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    program = torch.onnx.export(
        module,
        args,
        input_names=module.input_names,
        output_names=module.output_names,
        dynamic_shapes=dynamic,
        dynamo=True,
        verbose=False,
    )
    # ONNX protobufs cannot exceed 2 GB: large weights go to a side file next to the model
    program.save(str(out), external_data=parameter_bytes > (1 << 30))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])

    def run(flat: tuple[Tensor, ...]) -> list[Any]:
        feeds = {name: tensor.numpy() for name, tensor in zip(module.input_names, flat)}
        return session.run(module.output_names, feeds)

    return run


def _export_program(module: FlatFusedModel, args: tuple[Tensor, ...], dynamic: Any, out: Path):
    program = torch.export.export(module, args, dynamic_shapes=dynamic)
    torch.export.save(program, str(out))
    reloaded = torch.export.load(str(out)).module()

    def run(flat: tuple[Tensor, ...]) -> list[Any]:
        with torch.inference_mode():
            return list(reloaded(*flat))

    return run


def _write_sidecar(
    out: Path,
    format: str,
    module: FlatFusedModel,
    args: tuple[Tensor, ...],
    eager: Mapping[str, Tensor],
    recipe: Recipe,
    difference: float,
    model_dir: Path,
    check_args: Sequence[Tensor] = (),
) -> None:
    labels = {name: list(task.label_names() or []) for name, task in module.model.tasks.items()}
    info = {
        "format": format,
        "model_folder": str(model_dir.absolute()),
        "inputs": [
            {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "example_shape": list(t.shape)}
            for name, t in zip(module.input_names, args)
        ],
        "outputs": [
            {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "example_shape": list(t.shape)}
            for name, t in eager.items()
        ],
        "columns": {enc: recipe.column_of(enc) for enc in module.input_keys},
        "labels": {name: values for name, values in labels.items() if values},
        "parity_max_abs_diff": difference,
        "parity_checked_on": [
            {name: list(t.shape) for name, t in zip(module.input_names, shapes)} for shapes in (args, check_args) if shapes
        ],
        "preprocessing": "in Python: mmfuse.load(model_folder).collate(samples) gives the inputs",
    }
    Path(f"{out}.json").write_text(json.dumps(info, indent=2) + "\n")
