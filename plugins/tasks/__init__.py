"""Built-in tasks (head + loss + metrics). Config classes and registration only."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmfuse.hookspecs import hookimpl

__all__ = ["ClassificationConfig", "RegressionConfig"]

Label = Union[int, str]


class ClassificationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[Label] | None = Field(
        None, description="class labels in index order; default: learned from the training split"
    )
    hidden_dim: int | None = Field(None, gt=0, description="optional hidden layer in the head")
    dropout: float = Field(0.0, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: dict[str, float] | None = Field(None, description="label -> loss weight")

    @model_validator(mode="after")
    def _check(self) -> "ClassificationConfig":
        if self.labels is not None:
            if len(self.labels) < 2:
                raise ValueError("classification needs at least 2 labels")
            if len({str(label) for label in self.labels}) != len(self.labels):
                raise ValueError(f"labels must be unique, got {self.labels}")
            if self.class_weights:
                unknown = set(self.class_weights) - {str(label) for label in self.labels}
                if unknown:
                    raise ValueError(f"class_weights names unknown labels {sorted(unknown)}")
        return self

    def fit_targets(self, values: list[Any]) -> "ClassificationConfig":
        """Learn the label vocabulary from the training targets (sorted, stable)."""
        if self.labels is not None:
            return self
        unique = {str(v): v for v in values if v is not None}
        labels = [unique[key] for key in sorted(unique, key=_label_sort_key)]
        return self.model_copy(update={"labels": labels})


def _label_sort_key(text: str) -> tuple[int, Any]:
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


class RegressionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output_dim: int = Field(1, gt=0, description="number of regressed values")
    loss: Literal["mse", "huber"] = "mse"
    huber_delta: float = Field(1.0, gt=0)
    hidden_dim: int | None = Field(None, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


@hookimpl
def mmfuse_register_tasks(register) -> None:
    register(
        "mmfuse/classification",
        builder="mmfuse_plugins.tasks.classification:build_classification",
        config=ClassificationConfig,
        description="single-label classification: cross-entropy; accuracy, macro P/R/F1",
    )
    register(
        "mmfuse/regression",
        builder="mmfuse_plugins.tasks.regression:build_regression",
        config=RegressionConfig,
        description="regression: MSE or Huber; MAE, RMSE, R2",
    )
