"""Samplers and DataLoaders the engine builds from ``recipe.data``, and moving batches to a device.

The engine owns the sampler so that it can (1) split data across ranks the way
``DistributedSampler`` does and (2) resume inside an epoch: the order of epoch ``e`` is a
permutation seeded by ``(seed, e)`` alone, and a resumed run skips the samples already seen.
DataLoader workers get seeds derived from ``(seed, epoch, rank, worker)``, never from the global
RNG, so creating a loader does not disturb the training RNG stream.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mmfuse.data.augmentation import SampleIndex
from mmfuse.data.config import DataConfig
from mmfuse.data.workers import LoaderPlan, plan_loader

__all__ = ["ResumableDistributedSampler", "loader_plan_for", "build_loader", "batches_per_epoch", "start_epoch", "move_to_device"]


class ResumableDistributedSampler(Sampler[int]):
    """``DistributedSampler`` semantics (rank ``r`` takes every ``world_size``-th index of a seeded
    per-epoch permutation, padded so every rank gets as many samples) plus ``start``: the number of
    this rank's samples to skip, for resuming inside an epoch.

    ``pad=False`` (evaluation) gives each rank its share without duplicates; counts may differ by one.
    """

    def __init__(
        self,
        size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        pad: bool = True,
    ) -> None:
        self.size = size
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.pad = pad
        self.epoch = 0
        self.start = 0
        if not pad:
            self.per_rank = len(range(rank, size, world_size))
        elif drop_last:
            self.per_rank = size // world_size
        else:
            self.per_rank = math.ceil(size / world_size)
        self.total = self.per_rank * world_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select epoch ``epoch``'s order and skip this rank's first ``start`` samples."""
        self.epoch = epoch
        self.start = start

    def _order(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if not self.pad:
            return order[self.rank :: self.world_size]
        if self.total > self.size and order:
            order += (order * math.ceil(self.total / self.size))[: self.total - self.size]
        return order[: self.total][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        # indices carry the epoch to the workers: augmentation is seeded by (seed, epoch, index)
        return (SampleIndex(index, self.epoch) for index in self._order()[self.start :])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


class _WorkerSeeder:
    """Seeds Python and NumPy in each worker from the torch seed the DataLoader gave it."""

    def __call__(self, worker_id: int) -> None:
        seed = torch.initial_seed() % 2**32
        random.seed(seed)
        np.random.seed(seed)


def loader_plan_for(dataset: Dataset, data: DataConfig, *, train: bool = True) -> LoaderPlan:
    """The worker settings of ``dataset``'s loader: the plan :func:`~mmfuse.data.dataset.build_dataset`
    chose from the data and its cache, else one from ``data`` and the machine alone."""
    plan = getattr(dataset, "loader_plan", None)
    if isinstance(plan, LoaderPlan):  # workers persist between epochs of training only
        return replace(plan, persistent_workers=bool(plan.num_workers and train and data.persistent_workers))
    return plan_loader(data, rows=len(dataset), decodes_files=None, train=train)  # type: ignore[arg-type]


def build_loader(
    dataset: Dataset,
    collate: Callable[[list[Any]], dict[str, Any]],
    data: DataConfig,
    *,
    train: bool,
    rank: int,
    world_size: int,
    seed: int,
    plan: LoaderPlan | None = None,
) -> DataLoader:
    """A DataLoader over this rank's share of ``dataset``; call :func:`start_epoch` before each epoch.
    ``plan``: its worker settings (default :func:`loader_plan_for`)."""
    plan = plan or loader_plan_for(dataset, data, train=train)
    batch_size = data.batch_size if train else (data.eval_batch_size or data.batch_size)
    sampler = ResumableDistributedSampler(
        len(dataset),  # type: ignore[arg-type]
        rank=rank,
        world_size=world_size,
        shuffle=train and data.shuffle,
        seed=seed,
        drop_last=train and data.drop_last,
        pad=train,
    )
    workers = plan.num_workers
    options: dict[str, Any] = {}
    if workers > 0:
        options = {
            "prefetch_factor": plan.prefetch_factor,
            "persistent_workers": plan.persistent_workers,
            "worker_init_fn": _WorkerSeeder(),
        }
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=data.pin_memory and torch.cuda.is_available(),
        drop_last=train and data.drop_last,
        generator=torch.Generator(),
        **options,
    )
    start_epoch(loader, 0)
    return loader


def batches_per_epoch(loader: DataLoader, data: DataConfig) -> int:
    """Batches one rank trains on per epoch; a ValueError when that is none."""
    sampler: ResumableDistributedSampler = loader.sampler  # type: ignore[assignment]
    batch = data.batch_size
    count = sampler.per_rank // batch if data.drop_last else math.ceil(sampler.per_rank / batch)
    if count == 0:
        raise ValueError(
            f"the training set ({sampler.size} samples over {sampler.world_size} process(es)) "
            f"is smaller than one batch ({batch}) with data.drop_last=true; lower data.batch_size"
        )
    return count


def start_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Select the epoch's sample order, skip ``start_batch`` batches already trained on, and seed
    the workers from ``(seed, epoch, rank)`` (with persistent workers, only the first epoch's
    seed is used: the pool keeps its RNG streams)."""
    sampler: ResumableDistributedSampler = loader.sampler  # type: ignore[assignment]
    sampler.set_epoch(epoch, start_batch * (loader.batch_size or 1))
    mixed = (sampler.seed * 1_000_003 + epoch) * 65_537 + sampler.rank
    loader.generator.manual_seed(mixed % 2**63)  # type: ignore[union-attr]


def move_to_device(value: Any, device: torch.device) -> Any:
    """Nested dicts / lists of tensors -> the same structure on ``device`` (non-blocking)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {key: move_to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(move_to_device(item, device) for item in value)
    return value
