"""Built-in training callbacks a recipe can name under ``callbacks:``. Registration only; no torch.

The CSV logger, checkpointing and progress display are always on; early stopping is also
configured by ``trainer.early_stopping`` and TensorBoard by ``trainer.tensorboard``. Naming them
here lets a recipe add them explicitly (with their own settings).
"""

from __future__ import annotations

from mmfuse.chain_config import InitFromConfig
from mmfuse.compression import PruningConfig
from mmfuse.engine.config import EarlyStoppingConfig, TensorBoardConfig
from mmfuse.hookspecs import hookimpl

__all__: list[str] = []


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
