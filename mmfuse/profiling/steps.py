"""Run a recipe's training step for a number of steps and measure where the time goes.

The loop does what the engine's step does — batches from the same DataLoader (cache, workers,
sampler), forward under the recipe's autocast, weighted loss, backward, one optimizer step — and
times each phase. It trains a throw-away copy of the model: nothing is saved.
"""

from __future__ import annotations

import os
import resource
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from mmfuse.profiling.clock import ModuleClock

__all__ = ["ProfileReport", "profile_recipe"]


@dataclass
class ProfileReport:
    """Seconds per phase over the measured steps (after the warm-up), and what they add up to."""

    steps: int
    samples: int
    wall: float
    data_wait: float
    forward: float
    backward: float
    optimizer: float
    modules_forward: dict[str, float] = field(default_factory=dict)
    encoders_backward: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float = 0.0
    peak_memory_kind: str = "process peak RSS"
    device: str = "cpu"
    settings: dict[str, Any] = field(default_factory=dict)  # cache, workers, precision... as run
    cache_hits: int = 0
    cache_misses: int = 0
    frozen_encoders: list[str] = field(default_factory=list)

    @property
    def samples_per_sec(self) -> float:
        return self.samples / self.wall if self.wall > 0 else 0.0

    @property
    def data_wait_share(self) -> float:
        return self.data_wait / self.wall if self.wall > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "samples_per_sec": self.samples_per_sec, "data_wait_share": self.data_wait_share}


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "peak CUDA memory allocated"
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1 if os.uname().sysname == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "process peak RSS"


def profile_recipe(recipe: Any, *, steps: int = 200, warmup: int = 5, registry: Any = None) -> ProfileReport:
    """Train ``recipe``'s model for ``warmup + steps`` optimizer steps (no accumulation) and time them."""
    from mmfuse.cache.features import FeatureStore
    from mmfuse.engine.assembly import autocast_for
    from mmfuse.engine.distributed import resolve_device
    from mmfuse.engine.loading import build_loader, move_to_device, start_epoch
    from mmfuse.engine.rng import seed_everything
    from mmfuse.optim import build_optimizer
    from mmfuse.run import prepare

    prepared = prepare(recipe, registry)
    device = resolve_device(recipe.trainer.device)
    model = prepared.model.to(device)
    model.train()
    seed_everything(recipe.seed)
    if recipe.data.feature_cache != "off":
        FeatureStore(model).install()
    optimizer = build_optimizer(model, recipe)
    autocast = autocast_for(recipe.trainer.precision, device)
    loader = build_loader(prepared.train, prepared.collate, recipe.data, train=True, rank=0, world_size=1, seed=recipe.seed)
    clock = ModuleClock(model, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    totals = {"data_wait": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    samples = 0
    epoch = 0
    batches = iter(loader)
    started = clock.now()
    for step in range(warmup + steps):
        if step == warmup:  # the warm-up (first batches, worker start-up, lazy inits) is not counted
            clock.reset()
            totals = dict.fromkeys(totals, 0.0)
            samples = 0
            started = clock.now()
        before = clock.now()
        batch = None
        while batch is None:
            try:
                batch = next(batches)
            except StopIteration:
                epoch += 1
                start_epoch(loader, epoch)
                batches = iter(loader)
                continue
            if not batch["inputs"]:
                batch = None  # every row skipped as bad
        batch.pop("skipped", None)
        batch = move_to_device(batch, device)
        fetched = clock.now()
        with autocast():
            outputs = model(batch)
            loss, _ = model.compute_loss(outputs, batch.get("targets", {}))
        forwarded = clock.now()
        loss.backward()
        backwarded = clock.now()
        clock.end_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stepped = clock.now()
        totals["data_wait"] += fetched - before
        totals["forward"] += forwarded - fetched
        totals["backward"] += backwarded - forwarded
        totals["optimizer"] += stepped - backwarded
        samples += len(batch["index"])
    wall = clock.now() - started
    clock.remove()
    peak, kind = _peak_memory(device)
    cache = getattr(prepared.train, "sample_cache", None)
    frozen = [name for name, encoder in model.encoders.items() if not any(p.requires_grad for p in encoder.parameters())]
    data = recipe.data
    return ProfileReport(
        steps=steps,
        samples=samples,
        wall=wall,
        modules_forward=dict(clock.forward),
        encoders_backward=dict(clock.backward),
        peak_memory_mb=peak,
        peak_memory_kind=kind,
        device=str(device),
        settings={
            "data.cache": data.cache,
            "data.feature_cache": data.feature_cache,
            "data.num_workers": loader.num_workers,
            "data.batch_size": data.batch_size,
            "trainer.precision": recipe.trainer.precision,
            "cpus": os.cpu_count() or 1,
        },
        cache_hits=cache.hits if cache is not None else 0,
        cache_misses=cache.misses if cache is not None else 0,
        frozen_encoders=frozen,
        **totals,
    )


