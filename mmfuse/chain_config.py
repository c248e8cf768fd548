"""Schema of a chain file (stages run in order, weights carried between them) and of
``init_from`` (which weights a run starts from). Imports no torch: ``mmfuse validate``-style
checks of a chain run without building a model.

A chain file::

    name: clip-then-classify
    output_dir: runs                 # the chain folder is <output_dir>/<name>-<time>
    stages:
      - name: pretrain
        recipe: contrastive.yaml     # a recipe file (relative to this file) or an inline mapping
        overrides: [trainer.epochs=2]
      - name: finetune
        recipe: classify.yaml
        init_from:
          source: pretrain           # an earlier stage's name, or a run / model folder
          map: {encoders.text: encoders.text, encoders.image: encoders.image}
      - name: distil
        recipe: student.yaml         # a distillation task without 'teacher'
        teacher_from: finetune       # an earlier stage's model is its teacher

Every stage is an ordinary recipe trained by :func:`mmfuse.run.train` into its own run folder
``<chain folder>/<stage name>``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["InitFromConfig", "StageSpec", "ChainSpec", "module_prefixes", "MODULE_PREFIX"]

#: a mapped weight prefix: a FusedModel top-level part, optionally with a dotted sub-path
MODULE_PREFIX = re.compile(r"^(encoders\.[A-Za-z][A-Za-z0-9_]*|fusion|tasks\.[A-Za-z][A-Za-z0-9_]*|loss_weighting)(\.[A-Za-z0-9_.]+)?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InitFromConfig(_Strict):
    """Start a run from another run's weights, module by module.

    ``map`` pairs a weight prefix of the source model with one of this model
    (``{encoders.text: encoders.text}``); a list ``[encoders.text]`` maps names to themselves.
    Every target weight under a mapped prefix must find a source weight of the same shape, and
    every source weight under a mapped prefix must find a target: anything else is listed, and is
    an error unless ``strict: false`` (then the matching weights load and the rest are listed in
    ``init_from.json`` and the log). Modules not named in ``map`` keep their fresh initialisation.
    """

    source: str = Field(..., description="run folder or model folder (in a chain: an earlier stage's name)")
    map: dict[str, str] = Field(..., description="source weight prefix -> target weight prefix")
    strict: bool = Field(True, description="error on any unmatched or shape-mismatched weight under the map")

    @field_validator("map", mode="before")
    @classmethod
    def _list_maps_to_itself(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return {str(item): str(item) for item in value}
        if isinstance(value, str):
            return {value: value}
        return value

    @field_validator("map")
    @classmethod
    def _valid_prefixes(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("map is empty: name at least one module, e.g. {encoders.text: encoders.text}")
        bad = [prefix for pair in value.items() for prefix in pair if not MODULE_PREFIX.match(prefix)]
        if bad:
            raise ValueError(
                f"{bad[0]!r} is not a module of a fused model; write encoders.<name>, fusion, tasks.<name> "
                "or loss_weighting, optionally followed by a dotted sub-module (encoders.text.model.encoder)"
            )
        targets = list(value.values())
        overlapping = [
            (a, b) for i, a in enumerate(targets) for b in targets[i + 1 :] if a == b or a.startswith(b + ".") or b.startswith(a + ".")
        ]
        if overlapping:
            a, b = overlapping[0]
            raise ValueError(f"targets {a!r} and {b!r} overlap: each target weight may come from one source only")
        return value


class StageSpec(_Strict):
    """One stage: an ordinary recipe (file or inline), its overrides, and where its weights start."""

    name: str = Field(..., description="stage name; also its run folder's name inside the chain folder")
    recipe: str | dict[str, Any] = Field(..., description="recipe file (relative to the chain file) or an inline recipe")
    overrides: list[str] = Field(default_factory=list, description="dotted overrides applied to this stage's recipe")
    init_from: InitFromConfig | None = None
    teacher_from: str | None = Field(
        None, description="an earlier stage whose trained model becomes the 'teacher' of this stage's distillation task(s)"
    )

    @field_validator("name")
    @classmethod
    def _folder_safe(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z][A-Za-z0-9_-]*$", value):
            raise ValueError(f"stage name {value!r}: use letters, digits, '_' and '-', starting with a letter")
        return value


class ChainSpec(_Strict):
    """A chain file: stages trained in order, each into ``<chain folder>/<stage name>``."""

    name: str = "mmfuse-chain"
    output_dir: str = Field("runs", description="the chain folder is created under this folder (relative to the cwd)")
    stages: list[StageSpec] = Field(..., min_length=1)


def module_prefixes(encoders: list[str], tasks: list[str]) -> list[str]:
    """The top-level weight prefixes of a fused model with these encoder and task names."""
    return [f"encoders.{n}" for n in encoders] + ["fusion"] + [f"tasks.{n}" for n in tasks] + ["loss_weighting"]
