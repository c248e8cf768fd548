"""The preprocessed-sample cache consulted by the dataset before a preprocessor runs.

``data.cache``:

- ``memory``: a dict in the process that reads the data (with DataLoader workers, each worker
  keeps its own), up to ``data.cache_memory_mb``;
- ``disk``: safetensors shards under ``data.cache_dir`` (default ``$MMFUSE_CACHE_DIR`` or
  ``~/.cache/mmfuse``), shared by DataLoader workers, DDP ranks, concurrent runs, later runs and
  ``mmfuse eval`` / ``predict``; written atomically (:mod:`mmfuse.cache.shards`);
- ``auto``: ``memory`` when the main process reads the data (``num_workers: 0``), else ``disk``;
  ``disk`` too when the disk cache already holds the data (then ``num_workers: auto`` is 0);
- ``off``: preprocess every time.

Entries are keyed by the content digest of the raw value and live in a folder named by the
preprocessor's identity (:mod:`mmfuse.cache.keys`). What is cached is the deterministic
``Preprocessor.__call__`` output; a training dataset's random ``augment`` runs after the lookup.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from mmfuse.cache.keys import cacheable_value, content_digest, identity_digest, preprocessor_identity
from mmfuse.cache.shards import ShardStore, write_identity
from mmfuse.data.augmentation import augments

__all__ = ["SampleCache", "default_cache_root", "sample_cache_for", "feature_cache_callbacks", "SAMPLE_KEY", "split_sample_keys"]

#: name under which a sample's 128-bit key travels with its tensors when keys are requested
#: (the feature cache reads it); the collate function takes it out before ``Preprocessor.collate``
SAMPLE_KEY = "__mmfuse_sample_key__"

SAMPLES_DIR = "samples"


def default_cache_root() -> Path:
    """``$MMFUSE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmfuse``, else ``~/.cache/mmfuse``."""
    explicit = os.environ.get("MMFUSE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmfuse"


def key_tensor(namespace: str, content: str) -> Tensor:
    """A sample's key as two int64 (never both zero: zero marks "no key")."""
    raw = hashlib.blake2b(f"{namespace}:{content}".encode(), digest_size=16).digest()
    value = torch.tensor(
        [int.from_bytes(raw[:8], "little", signed=True), int.from_bytes(raw[8:], "little", signed=True)],
        dtype=torch.long,
    )
    return value if bool(value.any()) else torch.tensor([1, 0], dtype=torch.long)


class _Namespace:
    """One preprocessor's part of the cache, set up lazily in each process."""

    def __init__(self, digest: str, store: ShardStore | None) -> None:
        self.digest = digest
        self.store = store
        self.memory: dict[str, dict[str, Tensor]] = {}
        #: sample keys already computed (read-only: the collate function copies them into the batch)
        self.keys: dict[str, Tensor] = {}

    def key(self, content: str) -> Tensor:
        found = self.keys.get(content)
        if found is None:
            found = self.keys[content] = key_tensor(self.digest, content)
        return found


class SampleCache:
    """Looks up, or computes and stores, one encoder's preprocessed tensors for one raw value."""

    def __init__(
        self,
        mode: str,
        *,
        root: Path | None = None,
        memory_budget_mb: float = 4096,
        emit_keys: bool = False,
        flush_entries: int = 64,
    ) -> None:
        if mode not in ("memory", "disk", "off"):
            raise ValueError(f"cache mode must be memory, disk or off (auto is resolved before), got {mode!r}")
        self.mode = mode
        self.root = Path(root) if root is not None else default_cache_root()
        self.memory_budget = int(memory_budget_mb * (1 << 20))
        #: attach each sample's key (:data:`SAMPLE_KEY`) for the frozen-encoder feature cache
        self.emit_keys = emit_keys
        #: the dataset augments after the lookup: an encoder whose inputs are augmented gets no
        #: sample keys (its outputs differ every epoch, so the feature cache must not serve them)
        self.augmented = False
        #: disk mode: entries a process buffers before writing them as one shard
        self.flush_entries = flush_entries
        self.hits = 0
        self.misses = 0
        self._memory_used = 0
        self._namespaces: dict[str, _Namespace] = {}

    def __getstate__(self) -> dict[str, Any]:  # workers start with empty counters and namespaces
        state = dict(self.__dict__)
        state.update(_namespaces={}, hits=0, misses=0, _memory_used=0)
        return state

    def _namespace(self, name: str, preprocessor: Any) -> _Namespace:
        space = self._namespaces.get(name)
        if space is None:
            identity = preprocessor_identity(preprocessor)
            digest = identity_digest(identity)
            store = None
            if self.mode == "disk":
                folder = self.root / SAMPLES_DIR / digest
                folder.mkdir(parents=True, exist_ok=True)
                write_identity(folder, {**identity, "encoder": name})
                store = ShardStore(folder, flush_entries=self.flush_entries)
            space = self._namespaces[name] = _Namespace(digest, store)
        return space

    def fetch(self, name: str, preprocessor: Any, value: Any, compute: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        """``compute()`` (= ``preprocessor(value)``) through the cache; errors propagate unchanged."""
        if not getattr(preprocessor, "cacheable", True) or not cacheable_value(value):
            return compute()
        space = self._namespace(name, preprocessor)
        content = content_digest(value, is_file=bool(preprocessor.reads_files and isinstance(value, str)))
        tensors = self._lookup(space, content)
        if tensors is None:
            self.misses += 1
            tensors = compute()
            self._store(space, content, tensors)
        else:
            self.hits += 1
        if self.emit_keys and not (self.augmented and augments(preprocessor)):
            tensors = {**tensors, SAMPLE_KEY: space.key(content)}
        return tensors

    def _lookup(self, space: _Namespace, content: str) -> dict[str, Tensor] | None:
        if self.mode == "off":
            return None
        if self.mode == "memory":
            found = space.memory.get(content)
            # a copy: the caller may hand it to code that works in place
            return None if found is None else {key: tensor.clone() for key, tensor in found.items()}
        assert space.store is not None
        return space.store.get(content)

    def _store(self, space: _Namespace, content: str, tensors: dict[str, Tensor]) -> None:
        if self.mode == "off" or not all(isinstance(t, Tensor) for t in tensors.values()):
            return
        if self.mode == "disk":
            assert space.store is not None
            space.store.put(content, tensors)
            return
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self._memory_used + size > self.memory_budget:
            return  # full: later samples are preprocessed each time
        space.memory[content] = {key: tensor.detach().clone() for key, tensor in tensors.items()}
        self._memory_used += size

    def flush(self) -> None:
        """Write buffered disk entries now (they are also written when the process exits)."""
        for space in self._namespaces.values():
            if space.store is not None:
                space.store.flush()


def split_sample_keys(values: list[dict[str, Tensor] | None]) -> tuple[list[dict[str, Tensor] | None], Tensor | None]:
    """Take the :data:`SAMPLE_KEY` entries out of one encoder's batch items: (items without
    them, ``Long[B, 2]`` keys with zeros for items that have none), or (items, None)."""
    if not any(item is not None and SAMPLE_KEY in item for item in values):
        return values, None
    none = torch.zeros(2, dtype=torch.long)
    rows: list[Tensor] = []
    cleaned: list[dict[str, Tensor] | None] = []
    for item in values:
        if item is not None and SAMPLE_KEY in item:
            rows.append(item[SAMPLE_KEY])
            item = {name: tensor for name, tensor in item.items() if name != SAMPLE_KEY}
        else:
            rows.append(none)
        cleaned.append(item)
    return cleaned, torch.stack(rows)  # one copy for the batch


def resolve_mode(mode: str, *, num_workers: int, warm_on_disk: bool = False) -> str:
    """``auto`` -> disk when workers or several processes read the data (shared by them) or when
    the disk cache already holds the data (``warm_on_disk``), else memory."""
    if mode != "auto":
        return mode
    single = num_workers == 0 and int(os.environ.get("WORLD_SIZE", "1")) == 1
    return "memory" if single and not warm_on_disk else "disk"


def cache_root_for(recipe: Any) -> Path:
    """The disk cache folder ``recipe.data.cache_dir`` names (relative to the recipe), or the default."""
    if getattr(recipe.data, "cache_dir", None):
        from mmfuse.data.sources import resolve_data_path

        return Path(resolve_data_path(recipe, recipe.data.cache_dir))
    return default_cache_root()


def warm_on_disk(root: Path, preprocessors: dict[str, Any], distinct_values: dict[str, int]) -> bool:
    """Whether the disk cache under ``root`` holds at least ``distinct_values[name]`` entries for
    every cacheable preprocessor that has values (read from shard headers only; an estimate:
    entries are keyed by content, values here by name)."""
    from mmfuse.cache.shards import count_entries

    checked = False
    for name, preprocessor in preprocessors.items():
        wanted = distinct_values.get(name, 0)
        if not wanted or not getattr(preprocessor, "cacheable", True):
            continue
        folder = root / SAMPLES_DIR / identity_digest(preprocessor_identity(preprocessor))
        if not folder.is_dir() or count_entries(folder) < wanted:
            return False
        checked = True
    return checked


def sample_cache_for(
    recipe: Any, *, augmented: bool = False, num_workers: int | None = None, warm: bool = False
) -> SampleCache | None:
    """The cache ``recipe.data`` asks for, or None for ``off`` (unless the feature cache needs
    sample keys: then a cache that stores nothing and only keys the samples). ``augmented``: the
    dataset applies ``Preprocessor.augment`` (the training split); ``num_workers``: the loader's
    workers (default: ``data.num_workers``, 0 for ``auto``); ``warm``: the disk cache holds the data."""
    data = recipe.data
    if num_workers is None:
        num_workers = data.num_workers if isinstance(data.num_workers, int) else 0
    mode = resolve_mode(getattr(data, "cache", "off"), num_workers=num_workers, warm_on_disk=warm)
    keys = getattr(data, "feature_cache", "off") != "off"
    if mode == "off" and not keys:
        return None
    cache = SampleCache(
        mode, root=cache_root_for(recipe), memory_budget_mb=getattr(data, "cache_memory_mb", 2048), emit_keys=keys
    )
    cache.augmented = augmented
    return cache


def feature_cache_callbacks(recipe: Any) -> list[Any]:
    """The callback that serves frozen encoders from stored outputs, when the recipe asks for it."""
    if getattr(recipe.data, "feature_cache", "off") == "off":
        return []
    from mmfuse.cache.features import FeatureCacheCallback

    return [FeatureCacheCallback()]
