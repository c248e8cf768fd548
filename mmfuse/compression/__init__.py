"""Making trained models smaller: post-training quantization (:mod:`.quantize`, torchao) and
magnitude pruning followed by fine-tuning (:mod:`.pruning`, ``torch.nn.utils.prune``).

Both need optional packages only when used: ``pip install 'mmfuse[compress]'`` for torchao.
"""

#: quantization method -> torchao config class name (here so the CLI lists them without torch)
QUANTIZATION_METHODS: dict[str, str] = {
    "int8-dynamic": "Int8DynamicActivationInt8WeightConfig",
    "int8-weight-only": "Int8WeightOnlyConfig",
}

from typing import Literal  # noqa: E402 - the config below is the only other torch-free piece

from pydantic import BaseModel, ConfigDict, Field, model_validator  # noqa: E402


class PruningConfig(BaseModel):
    """``callbacks: [{type: prune, at_epoch: 2, amount: 0.5, method: global}]``: prune once, at a
    given epoch or step, then keep fine-tuning with the pruned weights held at zero."""

    model_config = ConfigDict(extra="forbid")

    at_epoch: int | None = Field(None, ge=0, description="prune at the start of this epoch (0-based)")
    at_step: int | None = Field(None, ge=0, description="prune after this optimizer step")
    method: Literal["magnitude", "structured", "global"] = Field(
        "magnitude",
        description="magnitude: L1 per layer; structured: whole output channels by L2 norm per layer; "
        "global: L1 over all selected layers together (amount is then the global sparsity)",
    )
    amount: float = Field(0.5, gt=0, lt=1, description="fraction of each layer's (or all) weights to prune")
    modules: list[str] = Field(
        default_factory=list, description="module name prefixes to prune (e.g. encoders.text, fusion); default: all"
    )
    layers: list[Literal["linear", "conv"]] = Field(default_factory=lambda: ["linear", "conv"])

    @model_validator(mode="after")
    def _one_trigger(self) -> "PruningConfig":
        if (self.at_epoch is None) == (self.at_step is None):
            raise ValueError("pruning needs exactly one of 'at_epoch' or 'at_step'")
        return self
