"""Save and load a trained FusedModel as a portable model folder (safetensors, no pickle).

A model folder holds::

    model.safetensors    the weights (state dict; tied tensors stored once, see mmfuse.json)
    recipe.yaml          the resolved recipe: label vocabularies, encoder configs rewritten by
                         ``Encoder.export_assets`` so the folder rebuilds offline
    assets/<encoder>/    files an encoder needs to rebuild itself (model config, tokenizer files)
    preprocessing.json   each encoder's column, modality and ``preprocessor().settings()``
    labels.json          label vocabularies of the tasks that have them (for people)
    mmfuse.json          the manifest: format version, versions (mmfuse, torch, python, each
                         plugin), the components and the distribution that provided each, and the
                         SHA-256 of every other file (mmfuse.folder_manifest verifies them on load)

Loading rebuilds the model from the recipe through the registry (``parse_recipe`` +
``build_fused_model``) and loads the weights strictly. Compatibility policy: a folder written by
a different *major* version of mmfuse, or by a *newer minor* version than the one installed, is
refused; a plugin distribution of a different major version than the one that built the folder is
refused. Older minors and any patch version load.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

import mmfuse
from mmfuse.model import FusedModel, build_fused_model
from mmfuse.recipe import Recipe, RecipeError, parse_recipe
from mmfuse.registry import ComponentLoadError, Registry, UnknownComponentError
from mmfuse.atomic import replace_folder, write_text_synced
from mmfuse.folder_manifest import (
    ASSETS_DIR,
    FORMAT_VERSION,
    MANIFEST_FILE,
    RECIPE_FILE,
    WEIGHTS_FILE,
    ModelFolderError,
    check_folder,
    record_files,
    resolve_model_dir,
)
from mmfuse.folder_manifest import read_manifest as _read_folder_manifest
from mmfuse.weights import WeightsError, load_state_strictly, read_state_dict, write_state_dict

__all__ = [
    "FORMAT_VERSION",
    "ModelFolderError",
    "save",
    "load_model",
    "resolve_model_dir",
    "read_manifest",
]

PREPROCESSING_FILE = "preprocessing.json"
LABELS_FILE = "labels.json"


# --------------------------------------------------------------------------- save


def save(model: FusedModel, path: str | os.PathLike[str], recipe: Recipe, registry: Registry | None = None) -> Path:
    """Write ``model`` and its resolved ``recipe`` as a model folder at ``path``; return the path.

    The folder is written into a temporary sibling and renamed into place, so a reader never sees
    a half-written folder. An existing model folder at ``path`` is replaced; any other non-empty
    folder is left alone and an error is raised.
    """
    target = Path(path).absolute()
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be shared
    try:
        raw, asset_paths = _recipe_with_assets(model, recipe, staging)
        weights = {"file": WEIGHTS_FILE, **write_state_dict(model, staging / WEIGHTS_FILE)}
        write_text_synced(staging / RECIPE_FILE, yaml.safe_dump(raw, sort_keys=False))
        _write_json(staging / PREPROCESSING_FILE, _preprocessing(model, recipe))
        _write_json(staging / LABELS_FILE, _labels(model))
        components = _components(model, recipe, registry)
        manifest = {
            "format": FORMAT_VERSION,
            "versions": _versions(components),
            "components": components,
            "weights": weights,
            "asset_paths": asset_paths,
            "files": record_files(staging),  # last: every other file is written by now
        }
        quantization = getattr(model, "mmfuse_quantization", None)  # set by mmfuse.compression.quantize
        if quantization:
            manifest["quantization"] = quantization
        _write_json(staging / MANIFEST_FILE, manifest)
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _check_replaceable(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise ModelFolderError(f"{target} exists and is not a folder; choose another path")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_FILE).is_file():
        raise ModelFolderError(
            f"{target} is a non-empty folder that is not an mmfuse model folder; refusing to replace "
            f"it. Choose an empty or new path."
        )


def _recipe_with_assets(model: FusedModel, recipe: Recipe, folder: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The resolved recipe with each encoder's ``export_assets`` overrides folded in; path values
    are stored relative to the model folder and listed in ``asset_paths`` (dotted recipe key ->
    relative path) so loading can resolve them back."""
    raw = recipe.to_dict()
    asset_paths: dict[str, str] = {}
    for name, encoder in model.encoders.items():
        encoder_dir = folder / ASSETS_DIR / name
        encoder_dir.mkdir(parents=True)
        overrides = dict(encoder.export_assets(str(encoder_dir)) or {})
        if name in recipe.encoders and overrides:
            params = recipe.encoders[name].params
            # validate now: a bad override should fail at save time, not when someone loads it
            type(params).model_validate({**params.model_dump(mode="json"), **overrides})
        for key, value in overrides.items():
            relative = _relative_inside(value, folder)
            if relative is not None:
                asset_paths[f"encoders.{name}.{key}"] = relative
                value = relative
            raw["encoders"][name][key] = value
        if not any(encoder_dir.iterdir()):
            encoder_dir.rmdir()
    for name, task in model.tasks.items():  # tasks wrapping a pretrained model (a causal LM)
        export = getattr(task, "export_assets", None)
        if export is None or name not in recipe.tasks:
            continue
        task_dir = folder / ASSETS_DIR / f"task-{name}"
        task_dir.mkdir(parents=True)
        overrides = dict(export(str(task_dir)) or {})
        if overrides:
            params = recipe.tasks[name].params
            type(params).model_validate({**params.model_dump(mode="json"), **overrides})
        for key, value in overrides.items():
            relative = _relative_inside(value, folder)
            if relative is not None:
                asset_paths[f"tasks.{name}.{key}"] = relative
                value = relative
            raw["tasks"][name][key] = value
        if not any(task_dir.iterdir()):
            task_dir.rmdir()
    assets = folder / ASSETS_DIR
    if assets.is_dir() and not any(assets.iterdir()):
        assets.rmdir()
    return raw, asset_paths


def _relative_inside(value: Any, folder: Path) -> str | None:
    if not isinstance(value, (str, os.PathLike)):
        return None
    candidate = Path(value)
    if not candidate.is_absolute():
        return None
    try:
        return candidate.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return None


def _preprocessing(model: FusedModel, recipe: Recipe) -> dict[str, Any]:
    settings = {}
    for name, encoder in model.encoders.items():
        preprocessor = encoder.preprocessor()
        settings[name] = {
            "column": recipe.column_of(name) if name in recipe.encoders else name,
            "modality": preprocessor.modality,
            "reads_files": preprocessor.reads_files,
            "settings": _plain(preprocessor.settings()),
        }
    return settings


def _labels(model: FusedModel) -> dict[str, list[Any]]:
    """Each task's ``label_names()`` (the Task contract's one source of label names)."""
    labels = {}
    for name, task in model.tasks.items():
        vocabulary = task.label_names()
        if vocabulary is not None:
            labels[name] = list(vocabulary)
    return labels


def _versions(components: list[dict[str, Any]]) -> dict[str, Any]:
    plugins = {c["distribution"]: c["version"] for c in components if c["distribution"]}
    return {
        "mmfuse": mmfuse.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "plugins": dict(sorted(plugins.items())),
    }


def _components(model: FusedModel, recipe: Recipe, registry: Registry | None) -> list[dict[str, Any]]:
    """Each component slot with the plugin, distribution and version that provided it."""
    if registry is None:
        from mmfuse.plugin_host import get_registry

        registry = get_registry()
    slots = [("encoder", f"encoders.{n}", s.type, model.encoders[n]) for n, s in recipe.encoders.items()]
    slots.append(("fusion", "fusion", recipe.fusion.type, model.fusion))
    slots += [("task", f"tasks.{n}", s.type, model.tasks[n]) for n, s in recipe.tasks.items()]
    components = []
    for kind, slot, type_name, module in slots:
        try:
            provenance = registry.get(kind, type_name).provenance
            plugin, dist, version = provenance.plugin, provenance.distribution, provenance.version
        except UnknownComponentError:
            plugin, dist, version = None, None, None
        if dist is None:
            dist, version = _distribution_of(type(module).__module__)
        components.append(
            {"kind": kind, "slot": slot, "type": type_name, "plugin": plugin, "distribution": dist, "version": version}
        )
    return components


def _distribution_of(module_name: str) -> tuple[str | None, str | None]:
    top = module_name.split(".", 1)[0]
    for dist in metadata.packages_distributions().get(top, []):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None, None


# --------------------------------------------------------------------------- load


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """The validated ``mmfuse.json`` of ``model_dir`` as plain data (see mmfuse.folder_manifest)."""
    return _read_folder_manifest(model_dir).model_dump()


def load_model(
    path: str | os.PathLike[str], registry: Registry | None = None, device: str | torch.device = "cpu"
) -> tuple[FusedModel, Recipe]:
    """Rebuild the FusedModel of a model folder (or run folder) in eval mode on ``device``.

    Every file is checked against the manifest's digests first; any problem (a file missing,
    altered, or extra under ``assets/``) is a ModelFolderError naming the file.

    A sharded training checkpoint (``trainer.strategy: fsdp``), or a run folder that has sharded
    checkpoints but no ``model/``, is consolidated into a whole model on this one process (see
    :func:`_load_sharded_checkpoint`)."""
    from mmfuse.engine.sharded_checkpoint import sharded_checkpoint_to_load

    sharded = sharded_checkpoint_to_load(Path(path))
    if sharded is not None:
        return _load_sharded_checkpoint(sharded, registry, device)
    model_dir = resolve_model_dir(path)
    checked = _read_folder_manifest(model_dir)
    check_folder(model_dir, checked).raise_if_bad()
    manifest = checked.model_dump()
    _check_versions(manifest, model_dir)
    if registry is None:
        from mmfuse.plugin_host import get_registry

        registry = get_registry()
    _check_components(manifest, registry, model_dir)
    recipe = _read_recipe(model_dir, manifest, registry)
    try:
        model = build_fused_model(recipe, registry)
    except ComponentLoadError as exc:
        raise ModelFolderError(f"{model_dir}: {exc}") from exc
    except (OSError, ValueError, RuntimeError, ImportError, KeyError, TypeError) as exc:
        # a builder reading the folder's assets (a tokenizer, a config, weights it should not load)
        raise ModelFolderError(
            f"{model_dir / RECIPE_FILE}: cannot rebuild the model from the saved recipe and "
            f"{ASSETS_DIR}/: {type(exc).__name__}: {exc}"
        ) from exc
    _quantize_like_saved(model, manifest, model_dir)
    info = manifest["weights"]
    file = model_dir / info["file"]
    try:
        # the checksum was verified with every other file just above
        load_state_strictly(model, read_state_dict(file, None, info["aliases"]), file)
    except WeightsError as exc:
        raise ModelFolderError(str(exc)) from exc
    return model.to(device).eval(), recipe


def _load_sharded_checkpoint(
    checkpoint: Path, registry: Registry | None, device: str | torch.device
) -> tuple[FusedModel, Recipe]:
    """The model of a sharded checkpoint: rebuilt from its run folder's ``recipe.yaml`` (the
    resolved recipe ``mmfuse train`` writes: labels and learned preprocessing included), its
    weights consolidated from the shards by torch.distributed.checkpoint without a process group."""
    from mmfuse.engine.checkpoint import CheckpointError
    from mmfuse.engine.sharded_checkpoint import load_full_weights

    recipe_file = checkpoint.parent.parent / RECIPE_FILE
    if not recipe_file.is_file():
        raise ModelFolderError(
            f"{checkpoint} is a sharded training checkpoint; rebuilding its model needs the run folder's "
            f"{RECIPE_FILE} ({recipe_file}), which is missing"
        )
    if registry is None:
        from mmfuse.plugin_host import get_registry

        registry = get_registry()
    try:
        recipe = parse_recipe(yaml.safe_load(recipe_file.read_text(encoding="utf-8")), registry, file=str(recipe_file))
        model = build_fused_model(recipe, registry)
        load_full_weights(checkpoint, model)
    except (RecipeError, CheckpointError, ComponentLoadError, yaml.YAMLError) as exc:
        raise ModelFolderError(f"cannot load the sharded checkpoint {checkpoint}: {exc}") from exc
    return model.to(device).eval(), recipe


def _quantize_like_saved(model: FusedModel, manifest: dict[str, Any], model_dir: Path) -> None:
    """A quantized folder: quantize the rebuilt model's same layers the same way before its saved
    int8 tensors are copied in (see mmfuse.compression.quantize)."""
    quantization = manifest.get("quantization")
    if not quantization:
        return
    from mmfuse.compression.quantize import QuantizationError, quantize_model

    try:
        quantize_model(model, quantization["method"], quantization["modules"])
    except (QuantizationError, KeyError, TypeError) as exc:
        raise ModelFolderError(f"{model_dir / MANIFEST_FILE}: cannot rebuild the quantized model: {exc}") from exc


def _check_versions(manifest: dict[str, Any], model_dir: Path) -> None:
    where = model_dir / MANIFEST_FILE
    if int(manifest["format"]) > FORMAT_VERSION:
        raise ModelFolderError(
            f"{where}: model folder format {manifest['format']} is newer than this mmfuse reads "
            f"({FORMAT_VERSION}); upgrade mmfuse (pip install -U mmfuse)"
        )
    saved = str(manifest.get("versions", {}).get("mmfuse", "0"))
    saved_mm, installed_mm = _major_minor(saved), _major_minor(mmfuse.__version__)
    if saved_mm[0] != installed_mm[0] or saved_mm > installed_mm:
        raise ModelFolderError(
            f"{where}: this model was saved by mmfuse {saved}, which is incompatible with the "
            f"installed mmfuse {mmfuse.__version__} (a different major version, or a newer minor "
            f"version, cannot be loaded). Install a matching version: "
            f"pip install 'mmfuse>={saved_mm[0]}.{saved_mm[1]},<{saved_mm[0] + 1}'"
        )


def _major_minor(version: str) -> tuple[int, int]:
    match = re.match(r"\s*v?(\d+)(?:\.(\d+))?", version)
    if match is None:
        return (0, 0)
    return int(match.group(1)), int(match.group(2) or 0)


def _check_components(manifest: dict[str, Any], registry: Registry, model_dir: Path) -> None:
    """Every component must be provided by an installed plugin of a compatible major version."""
    for component in manifest.get("components", []):
        dist, version = component.get("distribution"), component.get("version")
        built_by = f"{dist} {version}" if dist else (f"plugin '{component.get('plugin')}'" if component.get("plugin") else "an unknown plugin")
        try:
            spec = registry.get(component["kind"], component["type"])
        except UnknownComponentError as exc:
            install = f" Install it: pip install {dist}" if dist else " Install or enable the plugin that provides it."
            raise ModelFolderError(
                f"{model_dir}: {component['slot']} uses {component['kind']} '{component['type']}', which was "
                f"built by {built_by} and is not available here (plugin not installed or disabled by "
                f"MMFUSE_DISABLE_PLUGINS).{install} ({exc})"
            ) from exc
        installed = spec.provenance.version
        if dist and version and installed and spec.provenance.distribution == dist:
            if _major_minor(installed)[0] != _major_minor(version)[0]:
                raise ModelFolderError(
                    f"{model_dir}: {component['slot']} ({component['type']}) was built by {dist} {version}; "
                    f"the installed {dist} {installed} is a different major version. "
                    f"Install a compatible one: pip install '{dist}=={version}'"
                )


def _read_recipe(model_dir: Path, manifest: dict[str, Any], registry: Registry) -> Recipe:
    file = model_dir / RECIPE_FILE
    try:
        raw = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelFolderError(f"{file}: cannot read the recipe: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelFolderError(f"{file}: the recipe is not a mapping")
    for dotted, relative in manifest.get("asset_paths", {}).items():
        section, name, key = dotted.split(".", 2)
        slot = raw.get(section, {}).get(name) if isinstance(raw.get(section), dict) else None
        if not isinstance(slot, dict):
            raise ModelFolderError(
                f"{model_dir / MANIFEST_FILE}: asset path '{dotted}' names {section}.{name}, which "
                f"{RECIPE_FILE} does not have"
            )
        slot[key] = str(model_dir.absolute() / relative)  # inside the folder: check_folder made sure
    try:
        return parse_recipe(raw, registry, file=str(file))
    except RecipeError as exc:
        raise ModelFolderError(f"{file}: the saved recipe does not validate with the installed plugins:\n{exc}") from exc


# --------------------------------------------------------------------------- files


def _plain(value: Any) -> Any:
    """JSON-safe copy of preprocessor settings (tuples, paths, numpy/torch scalars)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _write_json(file: Path, data: Any) -> None:
    write_text_synced(file, json.dumps(data, indent=2, sort_keys=False) + "\n")
