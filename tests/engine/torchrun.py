"""Launch ``mmfuse train`` under torchrun (2 gloo processes on the CPU) for a test, with a timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def stop_launch(process: subprocess.Popen) -> None:
    """torchrun forwards SIGTERM to its workers and waits for them; then kill whatever is left."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def train_under_torchrun(arguments: list[str], cwd: Path, timeout: float = 300) -> str:
    """Run ``mmfuse train ARGUMENTS`` in 2 processes; return the output, fail the test if it hangs
    or fails."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "mmfuse", "train", *arguments,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = cwd / "torchrun.log"
    with open(log, "w") as handle:  # a file, not a pipe: a hung worker cannot block the read
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_launch(process)
            pytest.fail(f"torchrun hung; output:\n{log.read_text()[-4000:]}")
    output = log.read_text()
    assert process.returncode == 0, output[-6000:]
    return output
