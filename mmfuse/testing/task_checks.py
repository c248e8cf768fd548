"""The task conformance suite: :func:`check_task`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from pydantic import BaseModel

from mmfuse.contracts import EncoderOutput, Task
from mmfuse.registry import ComponentSpec, Registry
from mmfuse.testing.batches import FEATURE_DIMS, random_features, select_rows, vector_values
from mmfuse.testing.harness import Subject, assert_close, assert_finite, expect_gradients, resolve_subject
from mmfuse.testing.model_checks import output_tensors
from mmfuse.testing.report import CheckRunner, ConformanceReport, expect
from mmfuse.testing.samples import component_targets
from mmfuse.testing.suite import SaveLoadValues, build_checked, check_agree, check_bf16, evaluating, run_suite

__all__ = ["check_task", "FUSED_DIM"]

#: width of the fused vector given to the task under test
FUSED_DIM = 6


class _Inputs:
    """The tiny batch a task sees: fused vectors, encoder features, presence, encoded targets."""

    def __init__(self, task: Task, targets: Sequence[Any]) -> None:
        self.size = len(targets)
        generator = torch.Generator().manual_seed(3)
        self.fused = torch.randn(self.size, FUSED_DIM, generator=generator)
        self.features = random_features(self.size)
        right = torch.ones(self.size, dtype=torch.bool)
        right[-1] = False
        self.present = {"left": torch.ones(self.size, dtype=torch.bool), "right": right}
        self.targets = (
            task.collate_targets([task.encode_target(value) for value in targets]) if task.needs_target else None
        )

    def rows(self, index: int) -> tuple[torch.Tensor, dict[str, EncoderOutput], dict[str, torch.Tensor]]:
        present = {name: mask[index : index + 1] for name, mask in self.present.items()}
        return self.fused[index : index + 1], select_rows(self.features, [index]), present


def check_task(
    name_or_spec: str | ComponentSpec,
    config: BaseModel | Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    *,
    targets: Sequence[Any] | None = None,
    folder: str | Path | None = None,
) -> ConformanceReport:
    """Run every task check; raise :class:`ConformanceError` listing all failures.

    ``targets``: raw target values, one per sample (default: the config's
    ``conformance_targets()`` hint, else a guess). A config with ``fit_targets`` is fitted to them
    first, as the data pipeline does with the training split.
    """
    subject = resolve_subject("task", name_or_spec, config, registry)
    raw_targets = list(targets) if targets is not None else component_targets(subject.config)
    fit = getattr(subject.config, "fit_targets", None)
    if callable(fit):
        subject = Subject(subject.spec, fit(raw_targets))

    def checks(runner: CheckRunner, task: Task, path: Path) -> SaveLoadValues | None:
        return _checks(runner, subject, task, raw_targets)

    return run_suite(subject, folder, _build, checks)


def _build(subject: Subject) -> Task:
    return build_checked(subject, Task, output_dim=False, fused_dim=FUSED_DIM, encoder_dims=dict(FEATURE_DIMS))


def _checks(runner: CheckRunner, subject: Subject, task: Task, targets: list[Any]) -> SaveLoadValues | None:
    inputs = runner.run("targets", lambda: _encode(task, targets))
    if inputs is None:
        return None
    outputs = runner.run("forward", lambda: _check_forward(task, inputs))
    if outputs is None:
        return None
    runner.run("loss_and_gradients", lambda: _check_loss_and_gradients(task, inputs))
    runner.run("metrics", lambda: _check_metrics(task, outputs, inputs))
    runner.run("metric_names", lambda: _check_metric_names(subject, task))
    runner.run("predict", lambda: _check_predict(task, outputs, inputs.size))
    runner.run("label_names", lambda: _check_label_names(task, outputs))
    per_sample = all(t.ndim > 0 and t.shape[0] == inputs.size for _, t in output_tensors(outputs))
    if per_sample:
        runner.run("batch_size_invariance", lambda: _check_batch_invariance(task, inputs))
    else:
        runner.skip("batch_size_invariance", "outputs are batch-level (not one row per sample)")
    runner.run("determinism", lambda: _check_determinism(task, inputs))
    runner.run("bf16_autocast", lambda: check_bf16(task, lambda: _loss_twice(task, inputs), "loss"))
    values = {"left": vector_values(4, len(targets), seed=1), "right": vector_values(3, len(targets), seed=2)}
    return values, {"subject": targets}


def _check_metric_names(subject: Subject, task: Task) -> None:
    """The metric keys a config declares (``metric_names``, read by `mmfuse validate` to check
    monitors) are exactly the keys its metrics produce."""
    declared = getattr(type(subject.config), "metric_names", None)
    if declared is None:
        return
    built = sorted(task.build_metrics().keys())
    expect(
        sorted(declared) == built,
        f"config declares metric_names {sorted(declared)} but build_metrics() gives {built}",
    )


def _encode(task: Task, targets: list[Any]) -> _Inputs:
    inputs = _Inputs(task, targets)
    if inputs.targets is not None:
        expect(
            isinstance(inputs.targets, torch.Tensor) and inputs.targets.shape[0] == inputs.size,
            f"collate_targets of {inputs.size} targets must give a tensor with {inputs.size} rows",
        )
    return inputs


def _eval_outputs(task: Task, fused: torch.Tensor, features: Any, present: Any) -> Any:
    with evaluating(task):
        return task(fused, features, present)


def _check_forward(task: Task, inputs: _Inputs) -> Any:
    task.train()
    outputs = task(inputs.fused, inputs.features, inputs.present)
    tensors = output_tensors(outputs)
    expect(bool(tensors), f"forward returned no tensor ({type(outputs).__name__})")
    for path, tensor in tensors:
        assert_finite(tensor, path)
    return outputs


def _check_loss_and_gradients(task: Task, inputs: _Inputs) -> None:
    task.train()
    task.zero_grad(set_to_none=True)
    fused = inputs.fused.clone().requires_grad_(True)
    pooled = {name: out.pooled.clone().requires_grad_(True) for name, out in inputs.features.items()}
    features = {name: EncoderOutput(out.tokens, out.mask, pooled[name]) for name, out in inputs.features.items()}
    loss = task.loss(task(fused, features, inputs.present), inputs.targets)
    expect(isinstance(loss, torch.Tensor) and loss.ndim == 0, f"loss must be a 0-dim tensor, got {getattr(loss, 'shape', loss)!r}")
    expect(bool(torch.isfinite(loss)), f"loss is {loss.item()}")
    loss.backward()
    expect_gradients(task, " from the loss")
    reached = fused.grad is not None or any(p.grad is not None for p in pooled.values())
    expect(reached, "the loss does not depend on the fused vector nor on the encoders' features")
    task.zero_grad(set_to_none=True)


def _check_metrics(task: Task, outputs: Any, inputs: _Inputs) -> None:
    metrics = task.build_metrics()
    task.update_metrics(metrics, _detach(outputs), inputs.targets)
    values = metrics.compute()
    expect(bool(values), "build_metrics() computes no metric")
    for name, value in values.items():
        expect(bool(torch.isfinite(torch.as_tensor(value)).all()), f"metric '{name}' is {value}")


def _detach(outputs: Any) -> Any:
    if isinstance(outputs, torch.Tensor):
        return outputs.detach()
    if isinstance(outputs, dict):
        return {key: _detach(value) for key, value in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_detach(value) for value in outputs)
    return outputs


def _check_predict(task: Task, outputs: Any, size: int) -> None:
    predictions = task.predict(_detach(outputs))
    expect(isinstance(predictions, list) and len(predictions) == size, f"predict must return a list of {size} items")
    probabilities = task.probabilities(_detach(outputs))
    if probabilities is not None:
        expect(probabilities.shape[0] == size, f"probabilities have {probabilities.shape[0]} rows, expected {size}")
        expect(bool((probabilities >= 0).all()), "probabilities hold negative values")


def _check_label_names(task: Task, outputs: Any) -> None:
    """``label_names()`` is a list of distinct str/int labels naming each probability column, and
    holds every label ``predict`` returns; a vocabulary kept elsewhere must be declared through it."""
    names = task.label_names()
    if names is None:
        stored = getattr(task, "labels", None)
        expect(
            not (isinstance(stored, (list, tuple)) and stored),
            f"the task keeps labels in .labels ({list(stored or [])[:5]}) but label_names() returns None: return "
            f"them from label_names(), the one place labels.json, exports and predict_proba read labels from",
        )
        return
    expect(isinstance(names, (list, tuple)), f"label_names() must return a list or None, got {type(names).__name__}")
    odd = [name for name in names if not isinstance(name, (str, int)) or isinstance(name, bool)]
    expect(not odd, f"label_names() entries must be str or int (they become JSON keys), got {odd[:5]}")
    expect(len({str(n) for n in names}) == len(names), f"label_names() repeats a label: {list(names)}")
    probabilities = task.probabilities(_detach(outputs))
    if probabilities is not None:
        expect(
            probabilities.shape[-1] == len(names),
            f"label_names() has {len(names)} labels but probabilities() has {probabilities.shape[-1]} columns; "
            f"entry i must name column i",
        )
    known = {str(name) for name in names}
    predicted = [label for row in task.predict(_detach(outputs)) for label in (row if isinstance(row, list) else [row])]
    unknown = sorted({repr(label) for label in predicted if str(label) not in known})
    expect(not unknown, f"predict() returns labels {unknown[:5]} that label_names() {list(names)[:10]} does not hold")


def _check_batch_invariance(task: Task, inputs: _Inputs) -> None:
    together = output_tensors(_eval_outputs(task, inputs.fused, inputs.features, inputs.present))
    for row in range(inputs.size):
        alone = output_tensors(_eval_outputs(task, *inputs.rows(row)))
        for (path, batched), (_, single) in zip(together, alone):
            assert_close(single[0], batched[row], f"{path} of sample {row} alone vs in a batch of {inputs.size}")


def _check_determinism(task: Task, inputs: _Inputs) -> None:
    first = output_tensors(_eval_outputs(task, inputs.fused, inputs.features, inputs.present))
    second = output_tensors(_eval_outputs(task, inputs.fused, inputs.features, inputs.present))
    check_agree(first, second, "two eval-mode forwards")


def _loss_twice(task: Task, inputs: _Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    loss = task.loss(task(inputs.fused, inputs.features, inputs.present), inputs.targets)
    return loss, loss
