"""``mmfuse/mlflow``: log a run to MLflow (parameters, metrics, the run's CSV files).

Uses ``MlflowClient`` against an explicit tracking URI (default: MLflow's file store in
``<run_dir>/mlruns``, which MLflow 3 keeps in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``;
the callback sets that switch for its default only), so no server is needed; point
``tracking_uri`` at a tracking server to share runs. Logs the resolved recipe as flattened parameters at
the start, ``train/loss``, ``lr`` and ``samples_per_sec`` at every log step, every validation
metric, and each epoch's row; at the end ``metrics.csv``, ``evals.csv`` and the resolved recipe as
artifacts, and the run's status (FINISHED, FAILED, or KILLED for a signal). The MLflow run id is
callback state: a resumed training continues the same MLflow run. Rank 0 only.
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any

from mmfuse_plugins.callbacks import MLflowConfig

from mmfuse.engine.callbacks import Callback

if TYPE_CHECKING:
    from mmfuse.engine.trainer import FitResult, Trainer

__all__ = ["MLflowLogger", "build_mlflow", "mlflow_key"]

_INVALID = re.compile(r"[^A-Za-z0-9_\-. /]")


def mlflow_key(name: str) -> str:
    """An mmfuse metric name as an MLflow key (MLflow allows letters, digits, _ - . / and space)."""
    return _INVALID.sub("_", name)


def _flatten(data: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(data, dict):
        flat: dict[str, str] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): str(data)[:500]}


class MLflowLogger(Callback):
    def __init__(self, config: MLflowConfig) -> None:
        self.config = config
        self.run_id: str | None = None
        self._client: Any = None

    @property
    def state_key(self) -> str:
        return "MLflowLogger"

    def _connect(self, trainer: "Trainer") -> Any:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ImportError("the mmfuse/mlflow callback needs mlflow: pip install 'mmfuse[mlflow]' (mlflow-skinny)") from exc
        uri = self.config.tracking_uri
        if uri is None:
            # MLflow 3 keeps the file store only behind this switch; it needs no server and no
            # database, which is what a default inside the run folder must be
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (trainer.run_dir / "mlruns").resolve().as_uri()
        return MlflowClient(tracking_uri=uri)

    def on_fit_start(self, trainer: "Trainer") -> None:
        if not trainer.is_main:
            return
        self._client = self._connect(trainer)
        if self.run_id is not None:  # resumed: continue the same MLflow run
            self._client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self._client.get_experiment_by_name(self.config.experiment)
        experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(self.config.experiment)
        run = self._client.create_run(experiment_id, run_name=self.config.run_name or trainer.run_dir.name)
        self.run_id = run.info.run_id
        recipe = getattr(trainer, "recipe", None)
        if self.config.log_params and recipe is not None:
            from mlflow.entities import Param

            params = [Param(mlflow_key(k), v) for k, v in sorted(_flatten(recipe.to_dict()).items())]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self._client.log_batch(self.run_id, params=params[start : start + 100])

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if self._client is None or self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [
            Metric(mlflow_key(key), float(value), now, step)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and key not in ("step", "epoch") and value == value
        ]
        if entries:
            self._client.log_batch(self.run_id, metrics=entries)

    def on_log(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        self._log(metrics, trainer.global_step)

    def on_validation_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        self._log(metrics, trainer.global_step)

    def on_train_epoch_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        self._log({f"epoch/{k}": v for k, v in metrics.items() if k not in ("epoch", "step")}, trainer.global_step)

    def _finish(self, trainer: "Trainer", status: str) -> None:
        if self._client is None or self.run_id is None:
            return
        if self.config.log_artifacts:
            for name in ("metrics.csv", "evals.csv", "recipe.yaml"):
                path = trainer.run_dir / name
                if path.is_file():
                    self._client.log_artifact(self.run_id, str(path))
        self._client.set_terminated(self.run_id, status=status)

    def on_fit_end(self, trainer: "Trainer", result: "FitResult") -> None:
        self._finish(trainer, "KILLED" if result.stop_reason == "signal" else "FINISHED")

    def on_exception(self, trainer: "Trainer", exception: BaseException) -> None:
        self._finish(trainer, "FAILED")

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id} if self.run_id else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")


def build_mlflow(config: MLflowConfig) -> MLflowLogger:
    """Builder of the ``mmfuse/mlflow`` callback."""
    return MLflowLogger(config)
