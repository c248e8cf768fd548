"""CPU thread settings of a training process (``trainer.num_threads``, ``trainer.interop_threads``).

PyTorch's default is one intra-op thread per core, whatever else runs: with DataLoader workers
decoding media on the same cores, or several developers on one machine, the threads fight and a
step can take 30x longer. ``auto`` takes the cores this process may use (its CPU affinity),
shares them between the processes torchrun starts on this machine, and leaves one core per
DataLoader worker (workers run single-threaded: PyTorch sets them to one thread). An explicit
``OMP_NUM_THREADS`` in the environment is honoured by ``auto``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from mmfuse.data.workers import available_cores, local_processes

__all__ = ["ThreadPlan", "available_cores", "plan_threads", "apply_thread_settings"]


@dataclass(frozen=True)
class ThreadPlan:
    intra_op: int
    inter_op: int
    reason: str


def plan_threads(
    num_threads: int | str, interop_threads: int | str, num_workers: int, *,
    cores: int | None = None, processes: int | None = None, environ: dict[str, str] | None = None,
) -> ThreadPlan:
    """The thread counts for ``trainer.num_threads`` / ``interop_threads`` (``"auto"`` or a number)."""
    environ = os.environ if environ is None else environ
    cores = available_cores() if cores is None else cores
    processes = local_processes(environ) if processes is None else processes
    if num_threads != "auto":
        intra, reason = int(num_threads), "trainer.num_threads"
    elif environ.get("OMP_NUM_THREADS", "").isdigit() and int(environ["OMP_NUM_THREADS"]) > 0:
        intra, reason = int(environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        share = max(1, cores // max(1, processes))
        intra = max(1, share - num_workers)
        reason = f"auto: {cores} core(s)"
        reason += f" / {processes} processes" if processes > 1 else ""
        reason += f" - {num_workers} loader worker(s)" if num_workers else ""
    inter = int(interop_threads) if interop_threads != "auto" else max(1, min(4, intra))
    return ThreadPlan(intra, inter, reason)


def apply_thread_settings(trainer_config: Any, num_workers: int, log: Callable[[str], None]) -> ThreadPlan:
    """Set torch's intra- and inter-op thread counts for this process and print them;
    ``num_workers``: the training loader's workers (as chosen, :mod:`mmfuse.data.workers`)."""
    plan = plan_threads(
        getattr(trainer_config, "num_threads", "auto"), getattr(trainer_config, "interop_threads", "auto"), num_workers,
    )
    torch.set_num_threads(plan.intra_op)
    inter = f"{plan.inter_op} inter-op"
    if torch.get_num_interop_threads() != plan.inter_op:
        try:
            torch.set_num_interop_threads(plan.inter_op)
        except RuntimeError:  # only settable before the first inter-op parallel work of the process
            inter = f"{torch.get_num_interop_threads()} inter-op (already started; set before any parallel work)"
    log(f"threads: {plan.intra_op} intra-op, {inter} ({plan.reason}; trainer.num_threads to change)")
    return plan
