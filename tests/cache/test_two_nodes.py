"""Multi-node training with torchrun's c10d rendezvous, as two local "nodes": two launchers with
``--nnodes=2`` on the loopback interface, one process each (gloo on CPU). Their disk sample cache
is one folder, shared as a network file system would share it between real nodes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from mmfuse.cache.shards import SHARD_SUFFIX

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """torchrun forwards SIGTERM to its workers and waits for them; then kill whatever is left."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.slow
def test_two_nodes_train_one_model_through_a_c10d_rendezvous(demo_folder, tmp_path):
    from mmfuse.demo.runner import default_recipe_path, demo_overrides

    endpoint = f"127.0.0.1:{_free_port()}"
    run_id = f"mmfuse-test-{uuid.uuid4().hex[:8]}"
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launches, logs = [], []
    for node in (0, 1):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--node_rank", str(node), "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", run_id,
            "--max_restarts", "0",
            "-m", "mmfuse", "train", str(default_recipe_path()), *demo_overrides(demo_folder),
            "data.num_workers=0", "data.batch_size=3", "trainer.epochs=1", "trainer.device=cpu",
            "data.cache=disk", f"data.cache_dir={cache}", "--run-dir", str(run_dir),
        ]
        log = tmp_path / f"node{node}.log"
        logs.append(log)
        with open(log, "w") as handle:  # a file, not a pipe: a hung worker cannot block the read
            launches.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=handle,
                                             stderr=subprocess.STDOUT, start_new_session=True))
    try:
        for launch in launches:
            launch.wait(timeout=300)
    except subprocess.TimeoutExpired:
        for launch in launches:
            _stop(launch)
        pytest.fail("a node hung; output:\n" + "\n".join(log.read_text()[-3000:] for log in logs))
    for launch, log in zip(launches, logs):
        assert launch.returncode == 0, log.read_text()[-6000:]
    assert (run_dir / "model" / "mmfuse.json").is_file()
    from mmfuse.engine.checkpoint import find_resumable

    state = find_resumable(run_dir).state
    assert len(state["rng"]) == 2  # one RNG state per rank: both nodes trained
    assert state["global_step"] == 2  # 12 rows: 6 per rank, batch 3, 1 epoch
    # both ranks filled the one disk cache, each with shards of its own
    writers = {shard.name.split("-")[2] for shard in cache.rglob(f"*{SHARD_SUFFIX}")}
    assert len(writers) >= 2
