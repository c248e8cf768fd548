"""Both sides of a test matrix run in ONE torchrun launch of 2 gloo processes (process start-up
dominates the cost, so the cases share it): :func:`launch_cases` starts it from a test (with a
timeout, so a hang fails instead of stalling), :func:`run_cases` is each process's main loop.
Case ``<name>`` of process ``r`` saves ``OUT/<name>-rank<r>.pt``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from tests.engine.torchrun import REPO, stop_launch


def launch_cases(module: str, out: Path, cases: list[str], timeout_s: int) -> dict[str, list[dict]]:
    """Run ``python -m torch.distributed.run --standalone --nproc_per_node 2 -m <module> OUT CASE...``
    and return each case's results of rank 0 and rank 1; fail the test on a hang or an error."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", module, str(out), *cases,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = out / "torchrun.log"
    with open(log, "w") as handle:  # a file, not a pipe: a hung worker cannot block the read
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_launch(process)
            pytest.fail(f"{module} hung (no end after {timeout_s} s); last output:\n{log.read_text()[-4000:]}")
    output = log.read_text()
    assert process.returncode == 0, output[-6000:]
    return {name: [torch.load(out / f"{name}-rank{r}.pt", weights_only=True) for r in range(2)] for name in cases}


def run_cases(out: str, names: list[str], run_case: Callable[[str, Path], dict[str, Any]]) -> None:
    """One process's share of the launch: each case in turn, its result saved for the test."""
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    for name in names:
        print(f"rank {rank}: {name}", flush=True)
        result = run_case(name, Path(out))
        torch.save(result, Path(out) / f"{name}-rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
