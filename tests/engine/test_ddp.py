"""2-process gloo DDP on CPU trains to the same weights as one process with the same global batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from mmfuse.engine.trainer import Trainer
from tests.engine.ddp_worker import ddp_recipe, train, train_with_a_nan_on_one_rank, train_with_an_empty_batch
from tests.engine.tiny import SyntheticRows, TinyCollate, tiny_model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    mp.spawn(train, args=(2, free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in range(2)]

    recipe = ddp_recipe(batch_size=8)  # the same global batch on one process
    model = tiny_model(recipe)
    single = Trainer(model, recipe, SyntheticRows(32), TinyCollate(model), val_dataset=SyntheticRows(9, seed=1), run_dir=tmp_path / "one")
    result = single.fit()

    assert ranks[0]["step"] == ranks[1]["step"] == result.global_step == 8
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(ranks[0]["weights"][name], tensor, atol=1e-5, rtol=0)
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name
    # validation is split across ranks (5 + 4 samples) and reduced: the same numbers as one process
    for key in ("val/loss", "val/label/accuracy", "val/label/f1"):
        assert ranks[0]["metrics"][key] == pytest.approx(result.metrics[key], abs=1e-5), key
    # only rank 0 wrote the run folder
    assert len((tmp_path / "ddp" / "metrics.csv").read_text().splitlines()) == 3
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir())[0].startswith("best")


@pytest.mark.slow
def test_an_empty_batch_on_one_rank_keeps_the_ranks_in_step(tmp_path):
    mp.spawn(train_with_an_empty_batch, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] == 8  # no rank dropped a step (or hung in a collective)
    assert ranks[0]["skipped"] == [0, 0] and ranks[1]["skipped"] == [4, 4]  # the same order each epoch
    for name, tensor in ranks[0]["weights"].items():
        assert torch.equal(tensor, ranks[1]["weights"][name]), name


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    mp.spawn(train_with_a_nan_on_one_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] == 8
    for name, tensor in ranks[0]["weights"].items():
        assert torch.isfinite(tensor).all(), name  # the averaged NaN gradient was never applied
        assert torch.equal(tensor, ranks[1]["weights"][name]), name
