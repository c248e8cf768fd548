"""Built-in logging callbacks: CSV (always), TensorBoard (when installed), progress display."""

from __future__ import annotations

import csv
import importlib.util
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mmfuse.engine.callbacks import Callback
from mmfuse.engine.config import TensorBoardConfig

if TYPE_CHECKING:
    from mmfuse.engine.trainer import FitResult, Trainer

__all__ = [
    "CSVLogger",
    "TensorBoardLogger",
    "ProgressLogger",
    "tensorboard_available",
    "build_tensorboard",
]


class _CSVFile:
    """A CSV file whose header grows when new columns appear (metrics added by a later eval)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def keep_first(self, count: int) -> None:
        """On resume: keep the rows written before the checkpoint, drop any written after it."""
        rows: list[dict[str, Any]] = []
        if self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        self.rows = rows[:count]
        self._write()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [key for key in row if key not in columns]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".csv.tmp")
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        temporary.replace(self.path)


class CSVLogger(Callback):
    """``metrics.csv``: one row per epoch; ``evals.csv``: one row per evaluation (rank 0 only)."""

    def __init__(self) -> None:
        self.epochs: _CSVFile | None = None
        self.evals: _CSVFile | None = None
        self._resume_counts: tuple[int, int] | None = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        if not trainer.is_main:
            return
        self.epochs = _CSVFile(trainer.run_dir / "metrics.csv")
        self.evals = _CSVFile(trainer.run_dir / "evals.csv")
        epochs, evals = self._resume_counts or (0, 0)
        self.epochs.keep_first(epochs)
        self.evals.keep_first(evals)

    def on_validation_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if self.evals is not None:
            self.evals.append({"epoch": trainer.epoch, "step": trainer.global_step, **metrics})

    def on_train_epoch_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if self.epochs is not None:
            self.epochs.append(metrics)

    def state_dict(self) -> dict[str, Any]:
        if self.epochs is None or self.evals is None:
            return {"epochs": 0, "evals": 0}
        return {"epochs": len(self.epochs.rows), "evals": len(self.evals.rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume_counts = (int(state["epochs"]), int(state["evals"]))


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLogger(Callback):
    """Every logged metric as a TensorBoard scalar, indexed by optimizer step (rank 0 only)."""

    def __init__(self, config: TensorBoardConfig | None = None, writer_factory: Callable[[str], Any] | None = None) -> None:
        self.config = config or TensorBoardConfig()
        self.writer_factory = writer_factory
        self.writer: Any = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        if not trainer.is_main:
            return
        log_dir = self.config.log_dir or str(trainer.run_dir / "tensorboard")
        factory = self.writer_factory
        if factory is None:
            if not tensorboard_available():
                raise RuntimeError(
                    "the mmfuse/tensorboard callback needs the 'tensorboard' package: pip install tensorboard "
                    "(or set trainer.tensorboard=off and remove the callback)"
                )
            from torch.utils.tensorboard import SummaryWriter

            factory = SummaryWriter
        self.writer = factory(log_dir)

    def _write(self, metrics: dict[str, float], step: int, skip: tuple[str, ...] = ()) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if key not in skip and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)

    def on_log(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        self._write(metrics, trainer.global_step, skip=("step", "epoch"))

    def on_validation_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        self._write(metrics, trainer.global_step)

    def on_train_epoch_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        self._write({f"epoch/{k}": v for k, v in metrics.items() if not k.startswith("val/")}, trainer.global_step)

    def on_fit_end(self, trainer: "Trainer", result: "FitResult") -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_exception(self, trainer: "Trainer", exception: BaseException) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def build_tensorboard(config: TensorBoardConfig) -> TensorBoardLogger:
    """Builder of the ``mmfuse/tensorboard`` callback."""
    return TensorBoardLogger(config)


class ProgressLogger(Callback):
    """A tqdm bar with live loss and throughput on a terminal; plain log lines otherwise."""

    def __init__(self, mode: str = "auto") -> None:
        self.use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.bar: Any = None

    def on_train_epoch_start(self, trainer: "Trainer") -> None:
        if not (trainer.is_main and self.use_bar):
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=trainer.steps_per_epoch,
            initial=trainer.steps_done_in_epoch,
            desc=f"epoch {trainer.epoch + 1}/{trainer.config.epochs}",
            unit="step",
            leave=False,
            dynamic_ncols=True,
        )

    def on_train_batch_end(self, trainer: "Trainer", loss: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if not trainer.is_main:
            return
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{metrics['train/loss']:.4g}", lr=f"{metrics['lr']:.3g}", sps=f"{metrics['samples_per_sec']:.0f}"
            )
            return
        print(
            f"{time.strftime('%H:%M:%S')} epoch {trainer.epoch + 1} step {trainer.global_step}: "
            f"loss {metrics['train/loss']:.4f}  lr {metrics['lr']:.3g}  {metrics['samples_per_sec']:.0f} samples/s",
            flush=True,
        )

    def on_validation_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if trainer.is_main:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            self._print(f"step {trainer.global_step}: {shown}")

    def on_train_epoch_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if trainer.is_main:
            self._print(f"epoch {trainer.epoch + 1} done: train/loss {metrics['train/loss']:.4f}")

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def on_fit_end(self, trainer: "Trainer", result: "FitResult") -> None:
        self._close()

    def on_exception(self, trainer: "Trainer", exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
