"""The skeleton every conformance suite shares: check the config, build the component, run the
kind's own checks, save and reload a FusedModel holding it, report. Plus the check bodies that
are the same for every kind (eval-mode forwards, determinism, bf16 autocast)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import torch
from torch import nn

from mmfuse.testing.harness import (
    Subject,
    assert_close,
    assert_finite,
    bf16_autocast,
    check_config_roundtrip,
    expect_finite_gradients,
    in_folder,
    partner_registry,
)
from mmfuse.testing.model_checks import artifact_available, check_save_load
from mmfuse.testing.report import CheckRunner, ConformanceReport, expect

__all__ = ["SaveLoadValues", "KindChecks", "run_suite", "build_checked", "evaluating", "check_agree", "check_bf16"]

Component = TypeVar("Component", bound=nn.Module)

#: (raw input values per encoder slot, raw targets per task slot) for the save_load check
SaveLoadValues = tuple[Mapping[str, Sequence[Any]], Mapping[str, Sequence[Any]]]
#: a suite's own checks: ``(runner, component, folder) -> SaveLoadValues`` to go on with the
#: save_load check, or None when a check the rest depends on failed
KindChecks = Callable[[CheckRunner, Any, Path], "SaveLoadValues | None"]


def run_suite(
    subject: Subject,
    folder: str | Path | None,
    build: Callable[[Subject], Any],
    checks: KindChecks,
) -> ConformanceReport:
    """``config_roundtrip``, ``build``, the kind's ``checks``, then ``save_load``; raises
    ConformanceError listing every failed check, else returns the report."""

    def run(path: Path) -> ConformanceReport:
        runner = CheckRunner(subject.spec.kind, subject.label)
        torch.manual_seed(0)
        runner.run("config_roundtrip", lambda: check_config_roundtrip(subject))
        component = runner.run("build", lambda: build(subject))
        if component is None:
            return runner.finish()
        values = checks(runner, component, path)
        if values is None:
            return runner.finish()
        if artifact_available():
            inputs, targets = values
            registry = partner_registry(subject.spec)
            runner.run("save_load", lambda: check_save_load(subject, registry, inputs, targets, path / "model"))
        else:
            runner.skip("save_load", "mmfuse.artifact is not installed")
        return runner.finish()

    return in_folder(folder, run)


def build_checked(subject: Subject, contract: type[Component], *, output_dim: bool, **context: Any) -> Component:
    """Call the builder with ``context``; the result must be a ``contract`` (and, with
    ``output_dim``, state a positive int ``output_dim``)."""
    component = subject.spec.build(subject.config, **context)
    expect(
        isinstance(component, contract),
        f"builder returned {type(component).__name__}, not an mmfuse.contracts.{contract.__name__}",
    )
    if output_dim:
        dim = getattr(component, "output_dim", None)
        expect(isinstance(dim, int) and dim > 0, f"output_dim must be a positive int, got {dim!r}")
    return component


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode without autograd for the block; train mode again afterwards."""
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train()


def check_agree(first: Sequence[tuple[str, torch.Tensor]], second: Sequence[tuple[str, torch.Tensor]], what: str) -> None:
    """Named tensors of two runs agree to 1e-6 (determinism)."""
    for (path, a), (_, b) in zip(first, second):
        assert_close(b, a, f"{path} of {what}", atol=1e-6, rtol=1e-6)


def check_bf16(
    module: nn.Module, forward: Callable[[], tuple[torch.Tensor, torch.Tensor]], what: str, width: int | None = None
) -> None:
    """Under CPU bf16 autocast, ``forward() -> (output, scalar to backpropagate)`` gives a finite
    output (of last dimension ``width`` when given) and finite gradients."""
    module.train()
    module.zero_grad(set_to_none=True)
    with bf16_autocast():
        output, scalar = forward()
    if width is not None:
        expect(output.shape[-1] == width, f"{what} width {output.shape[-1]} under bf16 autocast")
    assert_finite(output, f"{what} under bf16 autocast")
    expect(bool(torch.isfinite(scalar.float())), f"{what} under bf16 autocast is {scalar.float().item()}")
    scalar.float().backward()
    expect_finite_gradients(module, " under bf16 autocast")
    module.zero_grad(set_to_none=True)
