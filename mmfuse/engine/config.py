"""Recipe sections that the engine reads: optimizer, scheduler, trainer. Imports no torch."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmfuse.balance.config import GradientModulationConfig, ModalityLRConfig
from mmfuse.recipe_references import EncoderName, MetricName

__all__ = [
    "OptimizerConfig",
    "SchedulerConfig",
    "EarlyStoppingConfig",
    "CheckpointConfig",
    "StageConfig",
    "TensorBoardConfig",
    "FSDPMixedPrecisionConfig",
    "FSDPConfig",
    "TrainerConfig",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimizerConfig(_Section):
    """ONE optimizer for the whole fused model; per-encoder lr / weight decay go on the encoder."""

    name: Literal["sgd", "adam", "adamw", "adagrad", "adadelta"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.0, ge=0, description="SGD only")
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    rho: float = Field(0.9, gt=0, lt=1, description="Adadelta only")
    lr_layer_decay: float | None = Field(
        None, gt=0, le=1,
        description="layer-wise lr decay over each encoder's layer groups: the last keeps the lr, each one below x this",
    )
    decay_bias_and_norm: bool = Field(
        False, description="apply weight decay to biases and normalization weights too"
    )
    implementation: Literal["auto", "fused", "foreach", "for-loop"] = Field(
        "auto", description="'auto' takes PyTorch's fused kernel where it exists, else foreach"
    )


class SchedulerConfig(_Section):
    """Learning-rate schedule, stepped once per optimizer step, after an optional linear warmup."""

    name: Literal["constant", "linear", "exponential", "cosine", "step"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="warmup as a fraction of all steps")
    gamma: float = Field(0.999, gt=0, description="exponential and step decay factor")
    step_size: int = Field(1000, gt=0, description="'step': decay every N optimizer steps")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="floor of linear / cosine decay")


class EarlyStoppingConfig(_Section):
    monitor: MetricName = "val/loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0)


class CheckpointConfig(_Section):
    keep_last: int = Field(2, ge=1)
    keep_best: bool = True
    every_steps: int | None = Field(None, gt=0, description="also checkpoint every N optimizer steps")
    monitor: MetricName | None = Field(
        None, description="metric that picks the best checkpoint; default: early_stopping.monitor or val/loss"
    )
    mode: Literal["min", "max"] | None = Field(None, description="default: early_stopping.mode or min")


class TensorBoardConfig(_Section):
    """``mmfuse/tensorboard``: write every logged metric as a TensorBoard scalar."""

    log_dir: str | None = Field(None, description="default: <run_dir>/tensorboard")


class StageConfig(_Section):
    """Staged fine-tuning: at a given epoch or step, unfreeze encoders with their own lr."""

    at_epoch: int | None = Field(None, ge=0)
    at_step: int | None = Field(None, ge=0)
    unfreeze: list[EncoderName] = Field(default_factory=list, description="encoder names")
    lr: float | None = Field(None, gt=0)
    trainable_layers: int | None = Field(None, ge=0, description="unfreeze only the last N layer groups")

    @model_validator(mode="after")
    def _one_trigger(self) -> "StageConfig":
        if (self.at_epoch is None) == (self.at_step is None):
            raise ValueError("a stage needs exactly one of 'at_epoch' or 'at_step'")
        return self


class FSDPMixedPrecisionConfig(_Section):
    """FSDP2's ``MixedPrecisionPolicy``: the dtype parameters are all-gathered in and computed
    with, and the dtype gradients are reduced in (null: the parameters' own, fp32)."""

    param_dtype: Literal["fp32", "bf16", "fp16"] | None = Field(
        None, description="dtype of the unsharded parameters in forward and backward"
    )
    reduce_dtype: Literal["fp32", "bf16", "fp16"] | None = Field(
        None, description="dtype of the gradient reduce-scatter; default: param_dtype"
    )


class FSDPConfig(_Section):
    """``trainer.strategy: fsdp``: how the fused model is sharded (FSDP2, ``fully_shard``)."""

    wrap: list[Literal["encoders", "encoder_layers", "fusion"]] = Field(
        default_factory=lambda: ["encoders"],
        description="what gets its own fully_shard before the root fused model: 'encoders' (each "
        "encoder), 'encoder_layers' (each encoder's layer groups, e.g. transformer blocks), 'fusion'",
    )
    reshard_after_forward: bool = Field(
        True, description="free the gathered parameters after forward (less memory, one more all-gather in backward)"
    )
    mixed_precision: FSDPMixedPrecisionConfig | None = None


class TrainerConfig(_Section):
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    grad_accum_steps: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    eval_every_steps: int | None = Field(None, gt=0, description="default: after every epoch")
    log_every_steps: int = Field(10, ge=1)
    early_stopping: EarlyStoppingConfig | None = None
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    nonfinite_loss: Literal["skip_step", "stop"] = "skip_step"
    stages: list[StageConfig] = Field(default_factory=list)
    loss_weighting: Literal["fixed", "uncertainty"] = "fixed"
    deterministic: bool = False
    progress: Literal["auto", "bar", "log", "off"] = Field(
        "auto", description="'auto': a tqdm bar on a terminal, plain log lines otherwise"
    )
    tensorboard: Literal["auto", "on", "off"] = Field(
        "auto", description="'auto': log to <run_dir>/tensorboard when the tensorboard package is installed"
    )
    restore_best: bool = Field(
        True,
        description="after the fit, load the best checkpoint's weights (checkpoint.keep_best) before test "
        "evaluation and export; false keeps the last weights",
    )
    num_threads: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="intra-op CPU threads of each training process; 'auto': its cores (shared between "
        "torchrun processes) minus one per data.num_workers, or OMP_NUM_THREADS when set (printed at start)",
    )
    interop_threads: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="inter-op CPU threads; 'auto': num_threads, at most 4"
    )
    slow_step_factor: float | None = Field(
        5.0, gt=1, description="warn when steps become this many times slower than the first ones; null: never"
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: 'ddp' replicates the model on every process, 'fsdp' shards "
        "parameters, gradients and optimizer state over them (FSDP2; see docs/distributed.md)",
    )
    fsdp: FSDPConfig = Field(default_factory=FSDPConfig, description="sharding settings of strategy fsdp")
    find_unused_parameters: bool = Field(
        False, description="DDP: set when some parameters get no gradient in a step (a modality absent from a batch)"
    )
    gradient_modulation: GradientModulationConfig | None = Field(
        None, description="OGM-GE: shrink the gradients of the dominant modality's encoder (needs unimodal_aux)"
    )
    compile: bool = Field(False, description="torch.compile the fused model; graph breaks and failures fall back to eager, reported after the first step")
    compile_options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of torch.compile, e.g. {backend: inductor, mode: max-autotune}"
    )
    gradient_checkpointing: list[EncoderName] = Field(
        default_factory=list,
        description="deprecated: write encoders.<name>.gradient_checkpointing: true (a recipe's list is read as that)",
    )
    channels_last: bool = Field(False, description="convolutional encoders and their image inputs in the channels-last memory format")
    modality_lr: ModalityLRConfig | None = Field(
        None, description="modality-balanced learning rates of the encoders (needs unimodal_aux)"
    )
    modality_diagnostics: bool = Field(
        True, description="per-modality table and modalities.json at the end of a multimodal fit"
    )

    @model_validator(mode="after")
    def _fsdp_combinations(self) -> "TrainerConfig":
        if self.strategy != "fsdp":
            if self.fsdp != FSDPConfig():  # a resolved recipe lists the defaults: those are fine
                raise ValueError("trainer.fsdp is set but trainer.strategy is 'ddp'; add trainer.strategy: fsdp (or drop trainer.fsdp)")
            return self
        if self.compile:
            raise ValueError(
                "trainer.compile does not combine with trainer.strategy: fsdp yet (the compiled graph would "
                "have to trace FSDP's hooks); set trainer.compile: false or trainer.strategy: ddp"
            )
        if self.stages:
            raise ValueError(
                "trainer.stages do not combine with trainer.strategy: fsdp: FSDP fixes which parameters train "
                "when it shards the model, so unfreezing an encoder later is not possible; train the stages as "
                "a chain of runs (init_from) or use trainer.strategy: ddp"
            )
        if self.precision == "fp16":
            raise ValueError(
                "trainer.precision: fp16 (GradScaler) does not combine with trainer.strategy: fsdp; use "
                "trainer.fsdp.mixed_precision: {param_dtype: bf16} (or precision: bf16)"
            )
        return self
