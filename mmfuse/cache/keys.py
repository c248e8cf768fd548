"""What a cached sample is keyed by: the content of its raw value, and who preprocessed it how.

``content_digest`` hashes a file's bytes (or an inline value's text): a changed file gets a new
key, the same file under two names shares one. Hashing reads the whole file, so the digest is
remembered per process by ``(path, size, mtime_ns, inode)``: later epochs pay one ``stat``.

``preprocessor_identity`` names the preprocessing: the class, its ``settings()``, a digest of a
tokenizer's vocabulary where it has one, and the versions of mmfuse, the plugin's package and the
decoding libraries. Any change gives a new namespace, so stale tensors are never returned.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["content_digest", "preprocessor_identity", "identity_digest", "cacheable_value"]

#: libraries whose version can change decoded or transformed tensors
_DECODING_LIBRARIES = ("torch", "torchvision", "pillow", "numpy", "timm", "transformers", "tokenizers", "av", "soundfile", "torchaudio")

_file_digests: dict[tuple[str, int, int, int], str] = {}
_text_digests: dict[str, str] = {}


def cacheable_value(value: Any) -> bool:
    """Only plain values are keyed: paths / inline text, numbers and lists of numbers (an
    in-memory image or array is preprocessed directly)."""
    if isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(isinstance(item, (int, float, bool, str)) for item in value)
    return False


def content_digest(value: Any, *, is_file: bool) -> str:
    """Hex digest of a file's bytes (``is_file``) or of an inline value."""
    hasher = hashlib.blake2b(digest_size=16)
    if is_file:
        path = str(value)
        stat = os.stat(path)
        memo = (path, stat.st_size, stat.st_mtime_ns, stat.st_ino)
        known = _file_digests.get(memo)
        if known is not None:
            return known
        hasher.update(b"file:" + Path(path).suffix.lower().encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
        digest = hasher.hexdigest()
        _file_digests[memo] = digest
        return digest
    if isinstance(value, str):  # a text: immutable, so its digest is remembered (it repeats every epoch)
        known = _text_digests.get(value)
        if known is None:
            hasher.update(b"value:" + json.dumps(value, ensure_ascii=False).encode())
            known = _text_digests[value] = hasher.hexdigest()
        return known
    hasher.update(b"value:" + json.dumps(value, sort_keys=True, ensure_ascii=False).encode())
    return hasher.hexdigest()


@lru_cache(maxsize=None)
def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _plugin_version(preprocessor: Any) -> str | None:
    module = sys.modules.get(type(preprocessor).__module__)
    version = getattr(module, "__version__", None)
    if version is not None:
        return str(version)
    # the distribution usually carries the top-level package's name (mapping every installed
    # distribution to its modules costs half a second per process, in every DataLoader worker)
    top = type(preprocessor).__module__.split(".")[0]
    if top in ("mmfuse", "mmfuse_plugins"):
        return None  # versioned by mmfuse itself
    return _version(top) or _version(top.replace("_", "-"))


def _tokenizer_digest(preprocessor: Any) -> str | None:
    """Token ids depend on the vocabulary, which ``settings()`` does not list."""
    tokenizer = getattr(preprocessor, "tokenizer", None)
    vocab = getattr(tokenizer, "get_vocab", None)
    if vocab is None:
        return None
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(type(tokenizer).__name__.encode())
    hasher.update(json.dumps(sorted(vocab().items()), ensure_ascii=False).encode())
    hasher.update(json.dumps(getattr(tokenizer, "init_kwargs", {}).get("do_lower_case")).encode())
    return hasher.hexdigest()


def preprocessor_identity(preprocessor: Any) -> dict[str, Any]:
    """Plain data naming one preprocessing exactly (see the module docstring)."""
    from mmfuse import __version__

    own = getattr(preprocessor, "cache_identity", None)
    return {
        "preprocessor": f"{type(preprocessor).__module__}.{type(preprocessor).__qualname__}",
        "modality": getattr(preprocessor, "modality", "unknown"),
        "settings": preprocessor.settings(),
        "extra": own() if callable(own) else None,
        "tokenizer": _tokenizer_digest(preprocessor),
        "versions": {
            "mmfuse": __version__,
            "plugin": _plugin_version(preprocessor),
            **{name: _version(name) for name in _DECODING_LIBRARIES},
        },
    }


def identity_digest(identity: dict[str, Any]) -> str:
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
