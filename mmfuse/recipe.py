"""Recipe schema and all-errors-at-once validation against the component registry.

A recipe names the components to assemble. Each component slot (an encoder, the fusion head, a
task, a callback) holds ``type`` plus host keys (``column``, ``lr``, ...) plus the component's own
parameters, which the component's pydantic config class validates. The schema is therefore built
from the registry: ``mmfuse validate`` checks a plugin's parameters too. Imports no torch.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmfuse.balance.config import ModalityDropoutConfig, UnimodalAuxConfig
from mmfuse.data.config import DataConfig
from mmfuse.engine.config import OptimizerConfig, SchedulerConfig, TrainerConfig
from mmfuse.peft_config import PeftSettings
from mmfuse.recipe_overrides import apply_overrides
from mmfuse.recipe_problems import Problem, RecipeError, RecipeSource, pydantic_problems
from mmfuse.recipe_references import reference_problems, stratify_problem
from mmfuse.recipe_yaml import read_recipe_file
from mmfuse.registry import ComponentLoadError, ComponentSpec, Registry, UnknownComponentError, suggest

__all__ = [
    "Problem",
    "RecipeError",
    "EncoderSlot",
    "FusionSlot",
    "TaskSlot",
    "CallbackSlot",
    "Recipe",
    "TrainerCheckpointingDeprecation",
    "load_recipe",
    "parse_recipe",
    "apply_overrides",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


# --------------------------------------------------------------------------- schema


class EncoderSlot(_Strict):
    """Host keys of an encoder slot; the rest of the slot is the encoder's own config."""

    type: str
    column: str | None = Field(None, description="manifest column; default: the slot name")
    freeze: bool = False
    trainable_layers: int | None = Field(
        None, ge=0, description="train only the last N layer groups (implies freeze of the rest)"
    )
    lr: float | None = Field(None, gt=0, description="default: optimizer.lr")
    weight_decay: float | None = Field(None, ge=0, description="default: optimizer.weight_decay")
    peft: PeftSettings | None = Field(
        None, description="train adapters (LoRA, IA3) or virtual tokens (prompt, p- and prefix tuning) instead of the encoder's weights; docs/pretraining.md"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute the encoder's activations in the backward pass: less memory, more compute"
    )
    params: Any = None


class FusionSlot(_Strict):
    type: str
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    modality_dropout: ModalityDropoutConfig | None = Field(
        None, description="drop whole modalities of training rows: {p: 0.2, min_present: 1}"
    )
    params: Any = None


class TaskSlot(_Strict):
    type: str
    target: str | None = Field(None, description="target column; default: the task name")
    weight: float = Field(1.0, ge=0, description="loss weight in the weighted sum")
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    unimodal_aux: UnimodalAuxConfig | None = Field(
        None, description="a head per encoder with this task's loss: {weight: 0.3}"
    )
    params: Any = None


class CallbackSlot(_Strict):
    type: str
    params: Any = None


#: slot model, registry kind
_SLOT_KINDS: dict[str, tuple[type[_Strict], str]] = {
    "encoders": (EncoderSlot, "encoder"),
    "fusion": (FusionSlot, "fusion"),
    "tasks": (TaskSlot, "task"),
    "callbacks": (CallbackSlot, "callback"),
}


class _RawRecipe(_Strict):
    """Top-level shape; component slots stay raw and are validated slot by slot (so a bad slot
    is reported once, by the slot's own validation)."""

    name: str = "mmfuse-run"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    encoders: dict[str, Any]
    fusion: Any
    tasks: dict[str, Any]
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    callbacks: list[Any] = Field(default_factory=list)
    output_dir: str = Field("runs", description="run folders are created under this folder")


class Recipe(_Strict):
    """A validated recipe. Component slots carry their validated config in ``params``."""

    name: str
    seed: int
    data: DataConfig
    encoders: dict[str, EncoderSlot]
    fusion: FusionSlot
    tasks: dict[str, TaskSlot]
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig
    trainer: TrainerConfig
    callbacks: list[CallbackSlot]
    output_dir: str
    source_path: Path | None = None

    def column_of(self, encoder_name: str) -> str:
        return self.encoders[encoder_name].column or encoder_name

    def target_of(self, task_name: str) -> str:
        return self.tasks[task_name].target or task_name

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with each slot's params folded back in: what a resolved recipe file holds."""

        def slot(s: _Strict) -> dict[str, Any]:
            host = s.model_dump(mode="json", exclude={"params"}, exclude_defaults=True)
            host["type"] = s.type
            params = s.params.model_dump(mode="json") if isinstance(s.params, BaseModel) else {}
            return {**host, **params}

        return {
            "name": self.name,
            "seed": self.seed,
            "output_dir": self.output_dir,
            "data": self.data.model_dump(mode="json"),
            "encoders": {k: slot(v) for k, v in self.encoders.items()},
            "fusion": slot(self.fusion),
            "tasks": {k: slot(v) for k, v in self.tasks.items()},
            "optimizer": self.optimizer.model_dump(mode="json"),
            "scheduler": self.scheduler.model_dump(mode="json"),
            "trainer": self.trainer.model_dump(mode="json"),
            "callbacks": [slot(c) for c in self.callbacks],
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- validation


def _validate_slot(
    raw: Any,
    path: tuple[str, ...],
    slot_model: type[_Strict],
    kind: str,
    registry: Registry,
    source: RecipeSource,
) -> tuple[_Strict | None, list[Problem]]:
    if not isinstance(raw, dict):
        line, where = source.locate(path)
        return None, [Problem(".".join(path), f"expected a mapping with a 'type' key, got {raw!r}", line, where)]
    type_name = raw.get("type")
    if not isinstance(type_name, str):
        line, where = source.locate(path + ("type",))
        names = ", ".join(registry.names(kind)[:12])
        problems = [Problem(".".join(path + ("type",)), f"missing {kind} type; one of: {names}", line, where)]
        host_keys = set(slot_model.model_fields) - {"params"}
        for key in raw:
            if key not in host_keys and suggest(str(key), ["type"]) == "type":
                key_line, key_where = source.locate(path + (str(key),))
                problems.append(
                    Problem(".".join(path + (str(key),)), f"unknown key '{key}'. Did you mean 'type'?", key_line, key_where)
                )
        return None, problems
    try:
        spec: ComponentSpec = registry.get(kind, type_name)
    except (UnknownComponentError, ComponentLoadError) as exc:
        line, where = source.locate(path + ("type",))
        return None, [Problem(".".join(path + ("type",)), str(exc), line, where)]

    host_keys = set(slot_model.model_fields) - {"params"}
    host = {k: v for k, v in raw.items() if k in host_keys}
    params = {
        k: _relative_to_recipe(v, source, path + (k,)) for k, v in raw.items() if k not in host_keys
    }
    host["type"] = spec.name
    problems: list[Problem] = []
    config = None
    try:
        config = spec.config.model_validate(params)
    except ValidationError as exc:
        problems += pydantic_problems(exc, path, source, spec.config, extra_fields=sorted(host_keys))
    slot = None
    try:
        slot = slot_model.model_validate(host)
    except ValidationError as exc:
        problems += pydantic_problems(exc, path, source, slot_model)
    if slot is not None and config is not None:
        slot.params = config
        return slot, problems
    return None, problems


_SLOT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

#: a component parameter that is a path relative to the recipe file: './x' or '../x', optionally
#: after a scheme prefix such as timm's 'local-dir:'
_RECIPE_RELATIVE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+_-]*:)?(?P<path>\.\.?/.*)$")


def _relative_to_recipe(value: Any, source: RecipeSource, path: tuple[str, ...]) -> Any:
    """Resolve './' and '../' paths in a component's parameters against the recipe's folder, so
    a recipe works from any working directory. Values given as command-line overrides stay
    relative to the working directory; hub names and absolute paths are left alone."""
    if isinstance(value, list):
        return [_relative_to_recipe(item, source, path) for item in value]
    file = source.file_of(path)
    if not isinstance(value, str) or file is None or path in source.overrides:
        return value
    match = _RECIPE_RELATIVE.match(value)
    if match is None:
        return value
    resolved = (Path(file).resolve().parent / match["path"]).resolve()
    return f"{match['scheme'] or ''}{resolved}"

#: attribute names of torch.nn.ModuleDict: a sub-module key equal to one of them cannot be added
#: (``add_module`` raises). Kept here because recipe validation must not import torch; a test
#: checks that the set covers torch's current names.
RESERVED_SLOT_NAMES = frozenset(
    """T_destination add_module apply bfloat16 buffers call_super_init children clear compile cpu
    cuda double dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter
    get_submodule half ipu items keys load_state_dict modules mtia named_buffers named_children
    named_modules named_parameters parameters pop register_backward_hook register_buffer
    register_forward_hook register_forward_pre_hook register_full_backward_hook
    register_full_backward_pre_hook register_load_state_dict_post_hook
    register_load_state_dict_pre_hook register_module register_parameter
    register_state_dict_post_hook register_state_dict_pre_hook requires_grad_ set_extra_state
    set_submodule share_memory state_dict to to_empty train training type update values xpu
    zero_grad""".split()
)


def _check_slot_name(section: str, name: Any, source: RecipeSource) -> list[Problem]:
    """Encoder and task names become module keys, metric names and export input names."""
    path = (section, str(name))
    line, where = source.locate(path)
    if not isinstance(name, str) or not _SLOT_NAME.match(name):
        return [
            Problem(
                ".".join(path),
                f"name {name!r} is not allowed: use letters, digits and '_' and start with a letter "
                f"(e.g. '{re.sub(r'[^A-Za-z0-9_]', '_', str(name)).lstrip('_0123456789') or 'main'}')",
                line,
                where,
            )
        ]
    if name in RESERVED_SLOT_NAMES:
        return [
            Problem(
                ".".join(path),
                f"name '{name}' is reserved (it is a torch.nn.ModuleDict attribute); rename it, "
                f"e.g. '{name}_{section[:-1]}'",
                line,
                where,
            )
        ]
    return []


def parse_recipe(
    raw: Any,
    registry: Registry | None = None,
    *,
    overrides: list[str] = (),  # type: ignore[assignment]
    file: str | None = None,
    _source: RecipeSource | None = None,
) -> Recipe:
    """Validate raw recipe data (a dict) against the registry; raise RecipeError with ALL problems."""
    if registry is None:
        from mmfuse.plugin_host import get_registry

        registry = get_registry()
    source = _source or RecipeSource(file=file)
    if not isinstance(raw, dict):
        raise RecipeError([Problem("", "a recipe must be a YAML mapping", 1, source.file)], source.file)
    raw = _deep_copy(raw)
    problems = apply_overrides(raw, list(overrides), source)

    try:
        top = _RawRecipe.model_validate(raw)
    except ValidationError as exc:
        problems += pydantic_problems(exc, (), source, _RawRecipe)
        top = None

    slots: dict[str, Any] = {}
    for section, (slot_model, kind) in _SLOT_KINDS.items():
        value = raw.get(section)
        if section == "fusion":
            if value is not None:
                slot, found = _validate_slot(value, ("fusion",), slot_model, kind, registry, source)
                problems += found
                slots["fusion"] = slot
        elif section == "callbacks":
            slots["callbacks"] = []
            for index, item in enumerate(value or []):
                slot, found = _validate_slot(item, (section, str(index)), slot_model, kind, registry, source)
                problems += found
                slots["callbacks"].append(slot)
        elif isinstance(value, dict):
            slots[section] = {}
            for name, item in value.items():
                problems += _check_slot_name(section, name, source)
                slot, found = _validate_slot(item, (section, str(name)), slot_model, kind, registry, source)
                problems += found
                slots[section][name] = slot
            if not value:
                line, where = source.locate((section,))
                problems.append(Problem(section, f"at least one entry is needed under '{section}'", line, where))

    if top is not None:
        problems += _cross_reference_problems(top, slots, source, registry)
    if problems or top is None:
        raise RecipeError(problems, source.file)
    recipe = Recipe(
        name=top.name,
        seed=top.seed,
        data=top.data,
        encoders=slots["encoders"],
        fusion=slots["fusion"],
        tasks=slots["tasks"],
        optimizer=top.optimizer,
        scheduler=top.scheduler,
        trainer=top.trainer,
        callbacks=slots["callbacks"],
        output_dir=top.output_dir,
        source_path=Path(file) if file else None,
    )
    _move_trainer_checkpointing(recipe)
    return recipe


class TrainerCheckpointingDeprecation(FutureWarning):
    """``trainer.gradient_checkpointing: [names]`` is read as ``encoders.<name>.gradient_checkpointing: true``."""


def _move_trainer_checkpointing(recipe: Recipe) -> None:
    """The deprecated trainer list becomes the encoders' own key (names were checked above), so the
    resolved recipe a run saves holds the new form."""
    names = list(recipe.trainer.gradient_checkpointing)
    if not names:
        return
    for name in names:
        recipe.encoders[name].gradient_checkpointing = True
    recipe.trainer.gradient_checkpointing = []
    keys = ", ".join(f"encoders.{name}.gradient_checkpointing: true" for name in names)
    warnings.warn(
        f"trainer.gradient_checkpointing is deprecated; it was read as {keys}. Write that instead "
        "(the list will be removed in a later version; docs/performance.md)",
        TrainerCheckpointingDeprecation,
        stacklevel=3,
    )


def _cross_reference_problems(top: _RawRecipe, slots: dict[str, Any], source: RecipeSource, registry: Registry) -> list[Problem]:
    """Names that point at other parts of the recipe (encoders, metrics, columns) and are wrong."""
    encoders = {name: slot.params if slot else None for name, slot in (slots.get("encoders") or {}).items()}
    tasks = {name: slot.params if slot else None for name, slot in (slots.get("tasks") or {}).items()}
    sections: dict[str, Any] = {"trainer": top.trainer}
    for section in ("encoders", "tasks"):
        for name, slot in (slots.get(section) or {}).items():
            if slot is not None:
                sections[f"{section}.{name}"] = slot.params
    if slots.get("fusion") is not None:
        sections["fusion"] = slots["fusion"].params
        if slots["fusion"].modality_dropout is not None:
            sections["fusion.modality_dropout"] = slots["fusion"].modality_dropout
    for index, slot in enumerate(slots.get("callbacks") or []):
        if slot is not None:
            sections[f"callbacks.{index}"] = slot.params
    problems = reference_problems(sections, encoders, tasks, source)
    problems += _shots_problems(top, slots, source)
    split = top.data.split
    if split is not None and split.stratify is not None and top.data.train is not None:
        known = {str(raw.get("column") or name) for name, raw in top.encoders.items() if isinstance(raw, dict)}
        known |= {str(raw.get("target") or name) for name, raw in top.tasks.items() if isinstance(raw, dict)}
        message = stratify_problem(split.stratify, known, lambda: _manifest_columns(top, source, registry))
        if message:
            line, where = source.locate(("data", "split", "stratify"))
            problems.append(Problem("data.split.stratify", message, line, where))
    return problems


def _shots_problems(top: _RawRecipe, slots: dict[str, Any], source: RecipeSource) -> list[Problem]:
    """``data.shots_per_class`` without ``data.shots_column`` needs exactly one classification task."""
    from mmfuse.data.shots import class_column_problem, class_columns

    if top.data.shots_per_class is None or top.data.shots_column is not None:
        return []
    targets = {
        name: (slot.target or name, slot.params) for name, slot in (slots.get("tasks") or {}).items() if slot is not None
    }
    message = class_column_problem(class_columns(targets))
    if message is None:
        return []
    line, where = source.locate(("data", "shots_per_class"))
    return [Problem("data.shots_per_class", message, line, where)]


def _manifest_columns(top: _RawRecipe, source: RecipeSource, registry: Registry) -> set[str] | None:
    """Columns of the training manifest, or None when it cannot be read (checked again at training)."""
    from mmfuse.data.errors import DataError
    from mmfuse.data.manifest import read_manifest

    assert top.data.train is not None
    path = Path(top.data.train).expanduser()
    file = source.file_of(("data", "train"))
    if not path.is_absolute() and file is not None and ("data", "train") not in source.overrides:
        path = Path(file).parent / path
    try:
        manifest = read_manifest(path, format=top.data.format, reader_options=top.data.reader_options, registry=registry)
    except (DataError, OSError):
        return None
    return set(manifest.columns())


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def load_recipe(
    path: str | Path,
    overrides: list[str] = (),  # type: ignore[assignment]
    registry: Registry | None = None,
) -> Recipe:
    """Read a recipe YAML file, apply dotted overrides, validate; raise RecipeError on problems."""
    raw, source = read_recipe_file(path)
    return parse_recipe(raw, registry, overrides=overrides, file=str(path), _source=source)

