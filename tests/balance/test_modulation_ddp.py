"""Gradient modulation under DDP (2 gloo processes on CPU): every rank applies the same
coefficients, those of one process holding the whole batch, and the same noise."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmfuse.balance.config import GradientModulationConfig
from mmfuse.balance.modulation import GradientModulation
from mmfuse.engine.distributed import DistributedContext
from tests.balance import tiny

RECIPE = dict(task={"unimodal_aux": {"weight": 0.3}}, fusion={"dropout": 0.0})


def _shard(batch: dict, rows: slice) -> dict:
    return {
        "inputs": {n: {k: v[rows] for k, v in t.items()} for n, t in batch["inputs"].items()},
        "present": {n: m[rows] for n, m in batch["present"].items()},
        "targets": {n: t[rows] for n, t in batch["targets"].items()},
    }


def _run(batch: dict, context: DistributedContext, noise: bool) -> tuple[dict, dict]:
    model = tiny.model(tiny.recipe(**RECIPE), seed=2).train()
    total, _ = model.compute_loss(model(batch), batch["targets"])
    total.backward()
    if context.is_distributed:  # what DDP does before the optimizer step: average the gradients
        for param in model.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad /= context.world_size
    trainer = SimpleNamespace(model=model, global_step=4, context=context, seed=3)
    callback = GradientModulation(GradientModulationConfig(alpha=0.8, noise=noise))
    callback.on_fit_start(trainer)
    callback.on_before_optimizer_step(trainer)
    coefficients = {k: v.item() for k, v in callback.last_coefficients.items()}
    return coefficients, {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("encoders.")}


def _worker(rank: int, world: int, folder: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        torch.set_num_threads(1)
        batch = _shard(tiny.batch(size=12, seed=3), slice(rank * 6, rank * 6 + 6))
        context = DistributedContext(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))
        coefficients, _ = _run(batch, context, noise=False)
        _, noisy = _run(batch, context, noise=True)
        torch.save({"coefficients": coefficients, "noisy": noisy}, f"{folder}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_and_match_one_process(tmp_path: Path):
    spawned = mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 180
    while not spawned.join(timeout=5):
        if time.monotonic() > deadline:
            for process in spawned.processes:
                process.kill()
            pytest.fail("DDP workers hung")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    single = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    expected, _ = _run(tiny.batch(size=12, seed=3), single, noise=False)
    assert min(expected.values()) < 1.0, "the test needs a dominant modality"
    for rank in ranks:
        assert rank["coefficients"] == pytest.approx(expected, rel=1e-5)
    for name, value in ranks[0]["noisy"].items():
        assert torch.equal(value, ranks[1]["noisy"][name]), f"ranks applied different noise to {name}"
