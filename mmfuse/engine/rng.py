"""Seeding and the RNG state a checkpoint carries (Python, NumPy, torch CPU and CUDA).

States are converted to tensors and plain containers so the checkpoint loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

__all__ = ["seed_everything", "make_deterministic", "capture_rng_state", "restore_rng_state", "restore_rank_rng"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_deterministic() -> None:
    """Deterministic kernels where PyTorch has them (warn where it does not)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def capture_rng_state() -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(
        (numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_rank_rng(states: list[dict[str, Any]], rank: int, world_size: int, fallback_seed: int) -> bool:
    """Give this rank its own saved RNG stream (``states`` holds one per rank, in rank order);
    return False when ``states`` was saved by another number of processes (or by mmfuse 0.1, one
    state for all) and each rank was reseeded from ``fallback_seed + rank`` instead."""
    if len(states) == world_size:
        restore_rng_state(states[rank])
        return True
    seed_everything(fallback_seed + rank)
    return False
