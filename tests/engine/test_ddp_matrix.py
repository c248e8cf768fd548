"""DDP test matrix: 2 gloo processes on the CPU, all cases in one torchrun launch (with a
timeout, so a hang fails instead of stalling), compared with each other and with one process.

Cases (``tests/engine/ddp_matrix.py``): classification, contrastive (negatives gathered across
processes), multi-task; staged unfreezing at a step and at an epoch; uneven training and
validation splits; an all-skipped batch and a NaN loss on one rank; a mid-epoch resume with
``num_workers: 2``. Where the processes see the same global batches as one process, weights must
match within 1e-5; where the data differ by design (padding of an uneven split), the ranks must
hold identical weights and finish.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.engine.ddp_matrix import CASES, fit_case, summary
from tests.engine.torchrun_cases import launch_cases

#: generous for 2 busy cores; a hang in a collective is what it catches
LAUNCH_TIMEOUT_S = 420

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[str, list[dict]]:
    return launch_cases("tests.engine.ddp_matrix", tmp_path_factory.mktemp("ddp"), list(CASES), LAUNCH_TIMEOUT_S)


def one_process(name: str, tmp_path: Path) -> dict:
    return summary(*fit_case(name, 1, tmp_path / name))


def assert_ranks_identical(pair: list[dict]) -> None:
    first, second = pair
    assert first["step"] == second["step"]
    for key, tensor in first["weights"].items():
        assert torch.equal(tensor, second["weights"][key]), f"ranks differ in {key}"


def assert_weights_close(ddp: dict, single: dict) -> None:
    assert ddp["step"] == single["step"]
    for key, tensor in single["weights"].items():
        torch.testing.assert_close(ddp["weights"][key], tensor, atol=1e-5, rtol=0, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("name", ["classification", "contrastive", "multitask", "stages"])
def test_two_processes_match_one_process(ranks, tmp_path, name):
    assert_ranks_identical(ranks[name])
    single = one_process(name, tmp_path)
    assert_weights_close(ranks[name][0], single)
    if name == "classification":
        # validation (9 rows: 5 + 4 per rank) and the logged train/loss are every rank's, not rank 0's
        for key in ("val/loss", "val/label/accuracy", "val/label/f1"):
            assert ranks[name][0]["metrics"][key] == pytest.approx(single["metrics"][key], abs=1e-5), key
        assert ranks[name][0]["logged"] == pytest.approx(single["logged"], abs=1e-5)
        assert ranks[name][1]["logged"] == ranks[name][0]["logged"]
    if name in ("contrastive", "multitask"):
        # the contrastive validation (uneven: 5 and 4 rows) finished and agrees across ranks
        assert ranks[name][0]["metrics"]["val/align/recall@1"] == ranks[name][1]["metrics"]["val/align/recall@1"]


def test_uneven_splits_finish_with_identical_ranks(ranks):
    pair = ranks["uneven"]
    assert_ranks_identical(pair)
    assert pair[0]["step"] == 8  # 30 rows -> 15 per rank (one padded) -> 4 batches of 4 per epoch
    assert math.isfinite(pair[0]["metrics"]["val/loss"])
    assert pair[0]["metrics"] == pair[1]["metrics"]


def test_an_all_skipped_batch_on_one_rank_joins_the_collectives(ranks):
    pair = ranks["skipped_batch"]
    assert_ranks_identical(pair)
    assert pair[0]["step"] == 8
    # rank 1's first batch of each epoch was skipped; the count is summed over the ranks
    assert pair[0]["skipped"] == pair[1]["skipped"] == [4, 4]


def test_a_nan_on_one_rank_skips_the_step_on_every_rank(ranks):
    pair = ranks["nan_on_one_rank"]
    assert_ranks_identical(pair)
    assert pair[0]["nonfinite"] == pair[1]["nonfinite"] == 2  # one poisoned batch per epoch
    assert all(torch.isfinite(tensor).all() for tensor in pair[0]["weights"].values())


def test_a_mid_epoch_resume_with_workers_is_exact_on_every_rank(ranks):
    pair = ranks["resume_workers"]
    assert_ranks_identical(pair)
    for rank in pair:  # dropout draws from each rank's own RNG stream, restored per rank
        for key, tensor in rank["uninterrupted"].items():
            assert torch.equal(rank["weights"][key], tensor), key
