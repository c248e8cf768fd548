"""Encoders see only the rows that have their modality (mmfuse/present_rows.py): present rows'
features do not depend on absent rows (train-mode BatchNorm included), absent rows cost no compute,
a batch without the modality skips the encoder but still joins autograd (DDP), and the static path
(every row) gives the same model outputs."""

from __future__ import annotations

import copy
import datetime
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from mmfuse import hookimpl
from mmfuse.contracts import Encoder, EncoderOutput, Preprocessor
from mmfuse.model import FusedModel, build_fused_model
from mmfuse.recipe import parse_recipe


class NormConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_dim: int = 3
    output_dim: int = 4


class NormPreprocessor(Preprocessor):
    modality = "vector"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def __call__(self, value: Any) -> dict[str, Tensor]:
        return {"values": torch.tensor(value, dtype=torch.float32)}

    def collate(self, items) -> dict[str, Tensor]:
        return {"values": torch.stack([torch.zeros(self.dim) if i is None else i["values"] for i in items])}


class NormEncoder(Encoder):
    """Linear -> trainable BatchNorm: in train mode every row's output depends on the whole batch.
    Records the batch size of every forward call."""

    modality = "vector"

    def __init__(self, config: NormConfig) -> None:
        super().__init__()
        self.input_dim = config.input_dim
        self.output_dim = config.output_dim
        self.linear = nn.Linear(config.input_dim, config.output_dim)
        self.norm = nn.BatchNorm1d(config.output_dim)
        self.calls: list[int] = []

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        self.calls.append(int(inputs["values"].shape[0]))
        pooled = self.norm(self.linear(inputs["values"]))
        return EncoderOutput(pooled.unsqueeze(1), torch.ones(pooled.shape[0], 1, dtype=torch.bool), pooled)

    def preprocessor(self) -> NormPreprocessor:
        return NormPreprocessor(self.input_dim)


class NormPlugin:
    @hookimpl
    def mmfuse_register_encoders(self, register) -> None:
        register("toy/norm", builder=NormEncoder, config=NormConfig)


def _registry():
    from mmfuse.plugin_host import load_registry

    return load_registry(plugins=[("toynorm", NormPlugin())])


def _model(seed: int = 0, norm: bool = True) -> FusedModel:
    right = {"type": "toy/norm"} if norm else {"type": "vector", "input_dim": 3, "hidden_dim": 5, "output_dim": 4}
    raw = {
        "encoders": {"left": {"type": "vector", "input_dim": 2, "hidden_dim": 4, "output_dim": 4}, "right": right},
        "fusion": {"type": "concat", "projection_dim": 4, "hidden_dims": [], "output_dim": 4, "dropout": 0.0},
        "tasks": {"score": {"type": "regression"}},
    }
    registry = _registry()
    torch.manual_seed(seed)
    return build_fused_model(parse_recipe(raw, registry), registry)


def _batch(right_rows: list[list[float] | None], seed: int = 1) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    size = len(right_rows)
    blank = [0.0, 0.0, 0.0]
    return {
        "inputs": {
            "left": {"values": torch.randn(size, 2, generator=generator)},
            "right": {"values": torch.tensor([blank if row is None else row for row in right_rows])},
        },
        "present": {"left": torch.ones(size, dtype=torch.bool), "right": torch.tensor([r is not None for r in right_rows])},
        "targets": {"score": torch.randn(size, 1, generator=generator)},
    }


ROWS = [[1.0, 2.0, -1.0], [0.5, -3.0, 2.0], [-2.0, 0.0, 1.5]]


def test_present_rows_do_not_depend_on_absent_rows_in_train_mode():
    model = _model().train()
    alone = model.encode(_batch(ROWS))[0]["right"]
    mixed_rows = [None, ROWS[0], None, ROWS[1], ROWS[2], None]
    mixed, present = model.encode(_batch(mixed_rows))
    kept = torch.tensor([1, 3, 4])
    assert torch.equal(mixed["right"].pooled[kept], alone.pooled)
    assert torch.equal(mixed["right"].tokens[kept], alone.tokens)
    absent = torch.tensor([0, 2, 5])
    assert not mixed["right"].mask[absent].any() and mixed["right"].mask[kept].all()
    assert torch.equal(mixed["right"].pooled[absent], torch.zeros(3, 4))
    assert present["right"].tolist() == [False, True, False, True, True, False]
    # the defect this replaces: run on every row, the blank rows shift the BatchNorm statistics
    model.gather_present_rows = False
    shifted = model.encode(_batch(mixed_rows))[0]["right"].pooled[kept]
    assert (shifted - alone.pooled).abs().max() > 0.1


def test_absent_rows_cost_no_compute_and_an_empty_modality_skips_the_encoder():
    model = _model().train()
    encoder = model.encoders["right"]
    model(_batch([None, ROWS[0], None, ROWS[1]]))
    model(_batch(ROWS))
    assert encoder.calls == [2, 3]
    encoder.calls.clear()
    outputs = model(_batch([None, None, None]))
    assert encoder.calls == []
    assert torch.isfinite(outputs["score"]).all()


def test_a_skipped_encoder_joins_autograd_with_zero_gradients():
    model = _model().train()
    batch = _batch([None, None])
    features, _ = model.encode(batch)
    assert torch.equal(features["right"].pooled, torch.zeros(2, 4)) and not features["right"].mask.any()
    loss, _ = model.compute_loss(model(batch), batch["targets"])
    loss.backward()
    grads = {name: p.grad for name, p in model.encoders["right"].named_parameters()}
    assert all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in grads.values()), grads
    with torch.no_grad():
        assert not model.encode(batch)[0]["right"].pooled.requires_grad
    model.encoders["right"].requires_grad_(False)
    assert not model.encode(batch)[0]["right"].pooled.requires_grad  # frozen: nothing to tie


def test_every_encoder_forwards_runs_an_empty_modality_without_changing_anything():
    """FSDP's mode: an encoder whose modality no row has still runs (its forward and backward are
    collectives there), on one row in eval mode, and contributes nothing: zero features, zero
    gradients, BatchNorm statistics untouched, train mode restored."""
    skipping = _model().train()
    forwarding = copy.deepcopy(skipping)
    forwarding.every_encoder_forwards = True
    encoder = forwarding.encoders["right"]
    stats = {k: v.clone() for k, v in encoder.norm.state_dict().items()}
    batch = _batch([None, None, None])
    results = []
    for model in (skipping, forwarding):
        outputs = model(batch)
        loss, _ = model.compute_loss(outputs, batch["targets"])
        loss.backward()
        results.append((outputs["score"], {n: p.grad for n, p in model.named_parameters()}))
    assert skipping.encoders["right"].calls == [] and encoder.calls == [1]
    assert encoder.training and encoder.norm.training
    assert all(torch.equal(encoder.norm.state_dict()[k], v) for k, v in stats.items())
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    for name, grad in grads_a.items():
        assert torch.equal(grads_b[name], grad), name
    assert all(torch.equal(g, torch.zeros_like(g)) for n, g in grads_b.items() if n.startswith("encoders.right"))
    # rows that have the modality are still the only ones encoded
    encoder.calls.clear()
    forwarding(_batch([None, ROWS[0], None, ROWS[1]]))
    assert encoder.calls == [2]


def test_a_one_row_sub_batch_uses_running_statistics():
    model = _model().train()
    norm = model.encoders["right"].norm
    before = norm.running_mean.clone()
    model(_batch([None, ROWS[0], None]))  # BatchNorm1d on one row in train mode would raise
    assert torch.equal(norm.running_mean, before) and norm.training
    model(_batch([ROWS[0], ROWS[1], None]))
    assert not torch.equal(norm.running_mean, before)


def test_gathered_and_static_paths_give_the_same_outputs_and_gradients():
    """With a row-independent encoder the two paths agree: the scatter puts every row back."""
    gathered = _model(seed=3, norm=False).train()
    static = copy.deepcopy(gathered)
    static.gather_present_rows = False
    batch = _batch([ROWS[0], None, ROWS[1], None, ROWS[2]])
    results = []
    for model in (gathered, static):
        outputs = model(batch)
        loss, _ = model.compute_loss(outputs, batch["targets"])
        loss.backward()
        results.append((outputs["score"], {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-6)
    assert sorted(grads_a) == sorted(grads_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-6)


def test_graph_capture_takes_the_static_path():
    model = _model(norm=False).eval()
    batch = _batch([ROWS[0], None, ROWS[1]])

    class Flat(nn.Module):
        def __init__(self, inner: FusedModel) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, left: Tensor, right: Tensor, present: Tensor) -> Tensor:
            inputs = {"left": {"values": left}, "right": {"values": right}}
            flags = {"left": torch.ones_like(present), "right": present}
            return self.inner({"inputs": inputs, "present": flags})["score"]

    args = (batch["inputs"]["left"]["values"], batch["inputs"]["right"]["values"], batch["present"]["right"])
    program = torch.export.export(Flat(model), args)
    graph = str(program.graph)
    assert "nonzero" not in graph and "index_select" not in graph
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*args), Flat(model)(*args), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- DDP

#: rank 1's batches lack modality "right" in every row: its encoder is skipped there only
DDP_SHARDS = [
    [[ROWS[0], None, ROWS[1]], [ROWS[2], ROWS[0], None]],
    [[None, None, None], [None, None]],
]
LR = 0.1


class _Loss(nn.Module):
    def __init__(self, model: FusedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any]) -> Tensor:
        return self.model.compute_loss(self.model(batch), batch["targets"])[0]


def _ddp_worker(rank: int, world: int, folder: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        torch.set_num_threads(1)
        model = _model(seed=5, norm=False).train()
        ddp = nn.parallel.DistributedDataParallel(_Loss(model), find_unused_parameters=False)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=LR)
        for step, rows in enumerate(DDP_SHARDS[rank]):
            optimizer.zero_grad(set_to_none=True)
            ddp(_batch(rows, seed=10 * rank + step)).backward()
            optimizer.step()
        torch.save({n: p.detach() for n, p in model.named_parameters()}, f"{folder}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _single_process_reference() -> dict[str, Tensor]:
    """DDP's update on one process: the average of the ranks' gradients, step by step."""
    model = _model(seed=5, norm=False).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(2):
        total: dict[str, Tensor] = {}
        for rank, shard in enumerate(DDP_SHARDS):
            model.zero_grad(set_to_none=True)
            batch = _batch(shard[step], seed=10 * rank + step)
            model.compute_loss(model(batch), batch["targets"])[0].backward()
            for name, p in model.named_parameters():
                total[name] = total.get(name, 0) + p.grad / len(DDP_SHARDS)
        for name, p in model.named_parameters():
            p.grad = total[name]
        optimizer.step()
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_ddp_with_a_modality_absent_on_one_rank(tmp_path: Path):
    """2 gloo processes, find_unused_parameters=False: the rank whose batches lack 'right' skips
    that encoder yet reduces gradients for it; no hang, ranks agree, and match one process."""
    context = mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 180
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("DDP workers hung (a skipped encoder left the gradient reduction waiting)")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    expected = _single_process_reference()
    for name, value in expected.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-5)
    initial = dict(_model(seed=5, norm=False).named_parameters())
    assert not torch.equal(expected["encoders.right.layers.0.0.weight"], initial["encoders.right.layers.0.0.weight"])
