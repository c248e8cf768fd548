"""``trainer.compile: true``: ``torch.compile`` the fused model in place, and say what did not compile.

``nn.Module.compile`` compiles the module's call in place, so the module object, its state dict
keys, its DDP wrapper and its checkpoints stay as they are. Compilation happens at the first
step. A plugin that TorchDynamo cannot trace causes a *graph break*: that part runs eagerly, the
rest stays compiled. If compiling a frame fails outright, TorchDynamo is told to fall back to
eager execution for it (``suppress_errors``) instead of ending the run. After the first step the
callback prints how many graphs were compiled and the graph-break reasons, so a slow plugin can be
found and fixed.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from mmfuse.engine.callbacks import Callback

if TYPE_CHECKING:
    from mmfuse.engine.trainer import Trainer

__all__ = ["CompileModel", "compile_summary"]

_SHOWN_REASONS = 3


def graph_breaks() -> Counter[str]:
    """Graph-break reasons with counts, from TorchDynamo's counters."""
    from torch._dynamo.utils import counters

    return Counter({str(reason).splitlines()[0][:160]: int(count) for reason, count in counters["graph_break"].items()})


class _CountingBackend:
    """A TorchDynamo backend that calls the named one and counts the graphs it compiled and the
    failures it raised (TorchDynamo then runs that graph eagerly)."""

    def __init__(self, name: str) -> None:
        from torch._dynamo import lookup_backend

        self.name = name
        self.backend = lookup_backend(name)
        self.graphs = 0
        self.failures: list[str] = []

    def __call__(self, graph: Any, example_inputs: Any) -> Any:
        try:
            compiled = self.backend(graph, example_inputs)
        except Exception as exc:
            self.failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
            raise
        self.graphs += 1
        return compiled


class CompileModel(Callback):
    """Compiles ``trainer.model`` at the start of the fit; reports the outcome after the first step."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = dict(options or {})
        self.reported = False
        self.backend: _CountingBackend | None = None
        self.breaks: Counter[str] = Counter()
        self.fell_back = False

    def on_fit_start(self, trainer: "Trainer") -> None:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True  # a frame that fails to compile runs eagerly
        torch._dynamo.reset()
        from torch._dynamo.utils import counters

        counters.clear()  # the report counts this fit's frames only
        options = dict(self.options)
        backend = options.get("backend", "inductor")
        if isinstance(backend, str) and "mode" not in options and "options" not in options:
            # mode / options configure inductor's own wrapper; otherwise count what the backend does
            self.backend = options["backend"] = _CountingBackend(backend)
        trainer.model.compile(**options)
        trainer.log(f"torch.compile: compiling the fused model ({backend}) at the first step")

    def on_train_batch_end(self, trainer: "Trainer", loss: Any) -> None:
        if self.reported:
            return
        self.reported = True
        self.breaks = graph_breaks()
        if self.backend is None:
            from torch._dynamo.utils import counters

            compiled, failures = int(counters["stats"].get("unique_graphs", 0)), []
        else:
            compiled, failures = self.backend.graphs, self.backend.failures
        if compiled == 0:
            self.fell_back = True
            why = f" ({failures[0]})" if failures else ""
            trainer.log(
                f"torch.compile: nothing could be compiled{why}; the model runs eagerly (as without trainer.compile). "
                "TORCH_LOGS=graph_breaks,dynamo shows more."
            )
            return
        line = f"torch.compile: {compiled} compiled graph(s)"
        if failures:
            line += f", {len(failures)} that failed to compile and run eagerly (first: {failures[0]})"
        if self.breaks:
            total = sum(self.breaks.values())
            reasons = "; ".join(f"{reason} (x{count})" for reason, count in self.breaks.most_common(_SHOWN_REASONS))
            line += f"; {total} graph break(s), the code around them runs eagerly. Most common: {reasons}. TORCH_LOGS=graph_breaks shows where"
        else:
            line += ", no graph breaks"
        trainer.log(line)
