"""Built-in training callbacks a recipe can name under ``callbacks:``. Registration only; no torch.

The CSV logger, checkpointing and progress display are always on; early stopping is also
configured by ``trainer.early_stopping`` and TensorBoard by ``trainer.tensorboard``. Naming them
here lets a recipe add them explicitly (with their own settings).
"""

from __future__ import annotations

from mmfuse.chain_config import InitFromConfig
from mmfuse.compression import PruningConfig
from mmfuse.engine.config import EarlyStoppingConfig, TensorBoardConfig
from pydantic import BaseModel, ConfigDict, Field

from mmfuse.hookspecs import hookimpl

__all__ = ["MLflowConfig"]


class MLflowConfig(BaseModel):
    """``mmfuse/mlflow``: log parameters, metrics and the run's files to MLflow."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default: a file store in <run_dir>/mlruns")
    experiment: str = Field("mmfuse", min_length=1)
    run_name: str | None = Field(None, description="default: the run folder's name")
    log_params: bool = Field(True, description="log the resolved recipe as flattened parameters")
    log_artifacts: bool = Field(True, description="log metrics.csv, evals.csv and recipe.yaml at the end")


@hookimpl
def mmfuse_register_callbacks(register) -> None:
    register(
        "mmfuse/early_stopping",
        builder="mmfuse.engine.callbacks:build_early_stopping",
        config=EarlyStoppingConfig,
        description="stop when a monitored metric stops improving",
    )
    register(
        "mmfuse/tensorboard",
        builder="mmfuse.engine.loggers:build_tensorboard",
        config=TensorBoardConfig,
        description="log metrics to TensorBoard (needs the tensorboard package)",
    )
    register(
        "mmfuse/mlflow",
        builder="mmfuse.engine.mlflow_logger:build_mlflow",
        config=MLflowConfig,
        description="log parameters, metrics and run files to MLflow (needs mlflow-skinny: mmfuse[mlflow])",
    )
    register(
        "mmfuse/prune",
        builder="mmfuse.compression.pruning:build_pruning",
        config=PruningConfig,
        description="magnitude pruning (torch.nn.utils.prune) at an epoch or step, then fine-tuning with pruned weights held at zero",
    )
    register(
        "mmfuse/init_from",
        builder="mmfuse.weight_transfer:build_init_from",
        config=InitFromConfig,
        description="start from another run's weights, module by module (map), listing anything not loaded",
    )
