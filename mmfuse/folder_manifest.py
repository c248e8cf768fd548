"""The manifest of a model folder (``mmfuse.json``): its schema, a digest of every file in the
folder, and the check that the folder still holds exactly what was saved. Imports no torch, so
``mmfuse verify`` stays fast.

What this protects against: accidental and partial changes (a file deleted, truncated, edited by
hand, an incomplete copy, a stray file dropped into ``assets/``). It is not a signature: whoever can
write the folder can also rewrite ``mmfuse.json`` to match. docs/deploy.md says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "RECIPE_FILE",
    "ASSETS_DIR",
    "ModelFolderError",
    "FolderManifest",
    "FolderCheck",
    "resolve_model_dir",
    "read_manifest",
    "record_files",
    "check_folder",
    "inside_folder",
    "sha256_of",
]

#: 2: ``files`` (a digest of every file) is required; folders of format 1 had only the weights'
FORMAT_VERSION = 2
MANIFEST_FILE = "mmfuse.json"
WEIGHTS_FILE = "model.safetensors"
RECIPE_FILE = "recipe.yaml"
ASSETS_DIR = "assets"

_FIX = (
    "Copy the whole model folder again from where it was saved, or save the model again "
    "(mmfuse.save, or the run's `mmfuse train`). `mmfuse verify FOLDER` lists every problem."
)


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded: missing plugin, incompatible version, bad weights,
    a file that is missing, altered or not in the manifest."""


class FileDigest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class WeightsEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str = WEIGHTS_FILE
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int | None = Field(None, ge=0)
    aliases: dict[str, str] = Field(default_factory=dict)


class ComponentEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    slot: str
    type: str
    plugin: str | None = None
    distribution: str | None = None
    version: str | None = None


class FolderManifest(BaseModel):
    """The schema of ``mmfuse.json``; ``files`` maps each path (relative, POSIX) to its digest.
    Other keys (e.g. ``quantization``) belong to the features that write them."""

    model_config = ConfigDict(extra="allow")

    format: int = Field(strict=True)
    versions: dict[str, Any]
    components: list[ComponentEntry]
    weights: WeightsEntry
    asset_paths: dict[str, str] = Field(default_factory=dict)
    files: dict[str, FileDigest]


@dataclass
class FolderCheck:
    """The result of :func:`check_folder`: ``problems`` each name a file; ``ignored`` files are
    outside the manifest where no loader reads them."""

    folder: Path
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_bad(self) -> None:
        if self.problems:
            listed = "".join(f"\n  - {problem}" for problem in self.problems[:20])
            more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
            raise ModelFolderError(
                f"{self.folder}: the model folder does not match its manifest ({MANIFEST_FILE}), so it "
                f"is not loaded:{listed}{more}\n{_FIX}"
            )

    def summary(self) -> str:
        if self.problems:
            lines = [f"{self.folder}: FAILED, {len(self.problems)} problem(s):"]
            lines += [f"  - {problem}" for problem in self.problems]
            lines.append(_FIX)
        else:
            lines = [f"{self.folder}: ok, {len(self.checked)} files match their SHA-256 in {MANIFEST_FILE}"]
            lines += [f"  {name}" for name in self.checked]
        if self.ignored:
            lines.append(f"not in the manifest and not read by the loader (ignored): {', '.join(self.ignored)}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- locating and reading


def resolve_model_dir(path: str | os.PathLike[str]) -> Path:
    """A model folder, or a run folder holding one in ``model/``. A folder that has a model's
    files but no manifest is refused, never loaded unverified."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / MANIFEST_FILE).is_file():
            return candidate
    for candidate in (path, path / "model"):
        if (candidate / WEIGHTS_FILE).exists() or (candidate / RECIPE_FILE).exists():
            raise ModelFolderError(
                f"{candidate / MANIFEST_FILE} is missing: it records the digest of every file of the "
                f"model folder, and a folder without it cannot be verified, so it is refused. {_FIX}"
            )
    if not path.exists():
        raise ModelFolderError(f"{path} does not exist")
    raise ModelFolderError(
        f"{path} is not an mmfuse model folder (no {MANIFEST_FILE}, and no model/{MANIFEST_FILE}); "
        f"pass the folder written by mmfuse.save or a run folder of `mmfuse train`"
    )


def read_manifest(model_dir: Path) -> FolderManifest:
    """``mmfuse.json`` of ``model_dir``, validated; ModelFolderError names the key that is wrong."""
    file = model_dir / MANIFEST_FILE
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelFolderError(f"{file}: cannot read the model manifest: {exc}. {_FIX}") from exc
    if not isinstance(raw, dict) or "format" not in raw:
        raise ModelFolderError(f"{file}: not an mmfuse model manifest (no 'format' key). {_FIX}")
    version = raw["format"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFolderError(f"{file}: 'format' must be a positive integer, got {version!r}. {_FIX}")
    if version > FORMAT_VERSION:
        raise ModelFolderError(
            f"{file}: model folder format {version} is newer than this mmfuse reads "
            f"({FORMAT_VERSION}); upgrade mmfuse (pip install -U mmfuse)"
        )
    if version < FORMAT_VERSION or "files" not in raw:
        raise ModelFolderError(
            f"{file}: this folder (format {version}) has no digest of its files ('files'), so nothing "
            f"but the weights could be verified; it is refused. Save the model again with this "
            f"version of mmfuse."
        )
    try:
        return FolderManifest.model_validate(raw)
    except ValidationError as exc:
        details = "; ".join(f"'{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in exc.errors()[:8])
        raise ModelFolderError(f"{file}: malformed model manifest: {details}. {_FIX}") from exc


# --------------------------------------------------------------------------- digests


def sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_files(folder: Path) -> dict[str, dict[str, Any]]:
    """The digest of every file under ``folder`` except the manifest itself, sorted by path."""
    files = {}
    for relative in _walk(folder):
        if relative == MANIFEST_FILE:
            continue
        path = folder / relative
        files[relative] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    return files


def inside_folder(folder: Path, relative: str) -> Path | None:
    """``folder / relative`` if ``relative`` is a plain relative path that stays inside ``folder``
    (also after following symlinks); None otherwise."""
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or "\\" in relative or ".." in pure.parts or relative.startswith("~"):
        return None
    path = folder / pure
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return None
    return path


def check_folder(model_dir: Path, manifest: FolderManifest) -> FolderCheck:
    """Compare the folder with ``manifest.files``: every listed file present with its size and
    SHA-256; no file under ``assets/`` that the manifest does not list (a loader given an asset
    folder reads whatever is in it); the weights entry agrees with the files table; every
    ``asset_paths`` entry stays inside the folder."""
    check = FolderCheck(folder=model_dir)
    for relative, digest in manifest.files.items():
        path = inside_folder(model_dir, relative)
        if path is None:
            check.problems.append(f"{relative}: listed in {MANIFEST_FILE} with a path outside the folder")
        elif not path.is_file():
            check.problems.append(f"{relative}: missing (listed in {MANIFEST_FILE})")
        elif path.stat().st_size != digest.bytes or sha256_of(path) != digest.sha256:
            check.problems.append(f"{relative}: altered (its size or SHA-256 differs from the one recorded at save time)")
        elif _is_pickle(path):
            check.problems.append(
                f"{relative}: a pickle file; a model folder holds no pickles (loading one can run code), "
                f"so the folder is refused"
            )
        else:
            check.checked.append(relative)
    weights = manifest.weights
    if weights.file not in manifest.files:
        check.problems.append(f"{weights.file}: the weights file is not listed in the manifest's files")
    elif manifest.files[weights.file].sha256 != weights.sha256:
        check.problems.append(f"{weights.file}: the manifest records two different SHA-256 for the weights")
    for key, relative in manifest.asset_paths.items():
        if inside_folder(model_dir, relative) is None:
            check.problems.append(f"{relative}: asset path of '{key}' points outside the model folder")
        elif key.count(".") < 2 or key.split(".", 1)[0] not in ("encoders", "tasks"):
            check.problems.append(f"{relative}: asset path key '{key}' is not of the form encoders|tasks.<name>.<key>")
    for relative in _walk(model_dir):
        if relative == MANIFEST_FILE or relative in manifest.files:
            continue
        if relative.startswith(f"{ASSETS_DIR}/"):
            check.problems.append(f"{relative}: not in the manifest (an extra file where encoders read their assets)")
        else:
            check.ignored.append(relative)
    return check


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then that many bytes of JSON."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if not 2 <= length <= min(size - 8, 100 << 20):
            return False
        header = handle.read(length)
    try:
        return isinstance(json.loads(header), dict)
    except ValueError:
        return False


def _is_pickle(path: Path) -> bool:
    """A pickle stream (PROTO opcode 0x80 + protocol 2..5), or a torch.save zip (holds a .pkl);
    what ``pretrained: true`` or an asset loader could otherwise be led to unpickle. A
    safetensors file is never one, even when its header length starts with the same two bytes
    (a header of 640, 896, 1152 or 1408 bytes begins ``80 02`` ... ``80 05``)."""
    if _is_safetensors(path):
        return False
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return True
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith(".pkl") for name in archive.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def _walk(folder: Path) -> list[str]:
    """Relative POSIX paths of the files (and symlinks) under ``folder``, without following
    symlinked folders; names starting with '.' are skipped (editor and OS litter)."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        linked = [d for d in dirs if os.path.islink(os.path.join(root, d))]  # listed, not entered
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in linked)
        for name in sorted([*files, *linked]):
            if name.startswith("."):
                continue
            found.append(Path(root, name).relative_to(folder).as_posix())
    return sorted(found)
