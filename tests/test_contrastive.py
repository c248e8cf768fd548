"""The contrastive task: InfoNCE against a hand computation, incomplete pairs, temperature,
retrieval recall, and negatives gathered across two gloo processes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmfuse.contracts import EncoderOutput, Task
from mmfuse.plugin_host import load_registry
from tests.test_tasks import FUSED, build, log_softmax



def identity_contrastive(dim: int = 2, **params) -> Task:
    task = build("mmfuse/contrastive", {"img": dim, "txt": dim}, encoders=["img", "txt"], embed_dim=dim, **params)
    with torch.no_grad():
        for projection in task.projections.values():
            projection.weight.copy_(torch.eye(dim))
    return task


def pooled_features(vectors: dict[str, list[list[float]]]) -> dict[str, EncoderOutput]:
    features = {}
    for name, rows in vectors.items():
        pooled = torch.tensor(rows)
        features[name] = EncoderOutput(pooled.unsqueeze(1), torch.ones(len(rows), 1, dtype=torch.bool), pooled)
    return features


def info_nce_by_hand(left: list[list[float]], right: list[list[float]], scale: float) -> float:
    """Symmetric InfoNCE over unit-normalised rows, with explicit sums."""

    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    left, right = [unit(v) for v in left], [unit(v) for v in right]
    cos = [[sum(a * b for a, b in zip(l, r)) for r in right] for l in left]
    n = len(left)
    forward = sum(-log_softmax([scale * c for c in cos[i]])[i] for i in range(n)) / n
    backward = sum(-log_softmax([scale * cos[j][i] for j in range(n)])[i] for i in range(n)) / n
    return (forward + backward) / 2


def test_contrastive_loss_by_hand_excludes_incomplete_pairs():
    task = identity_contrastive(temperature=0.5)
    img = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [5.0, -3.0]]
    txt = [[1.0, 0.2], [0.3, 1.0], [-1.0, 1.0], [0.0, 1.0]]
    present = {"img": torch.tensor([True, True, False, True]), "txt": torch.tensor([True, True, True, True])}
    outputs = task(torch.zeros(4, FUSED), pooled_features({"img": img, "txt": txt}), present)
    assert outputs["valid"].tolist() == [True, True, False, True]
    expected = info_nce_by_hand([img[0], img[1], img[3]], [txt[0], txt[1], txt[3]], scale=2.0)
    assert task.loss(outputs, None).item() == pytest.approx(expected, rel=1e-5)
    assert task.needs_target is False


def test_contrastive_logit_scale_is_learned_and_clamped():
    task = identity_contrastive(temperature=0.001, max_logit_scale=50.0)
    assert task.logit_scale().item() == pytest.approx(50.0)
    learnable = identity_contrastive()
    assert learnable.log_logit_scale.requires_grad
    assert learnable.logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    frozen = identity_contrastive(learn_temperature=False)
    assert not any(p is frozen.log_logit_scale for p in frozen.parameters())


def test_contrastive_without_any_complete_pair_is_zero_and_differentiable():
    task = identity_contrastive()
    present = {"img": torch.tensor([True, False]), "txt": torch.tensor([False, True])}
    outputs = task(torch.zeros(2, FUSED), pooled_features({"img": [[1.0, 0], [0, 1]], "txt": [[1.0, 0], [0, 1]]}), present)
    loss = task.loss(outputs, None)
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in task.parameters() if p.grad is not None)


def test_contrastive_recall_on_a_fixed_example():
    task = identity_contrastive()
    img = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]]
    txt = [[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, 1.0]]
    # the 4th pair is incomplete: were it a candidate, it would outrank partners of rows 2 and 3
    present = {"img": torch.tensor([True, True, True, True]), "txt": torch.tensor([True, True, True, False])}
    outputs = task(torch.zeros(4, FUSED), pooled_features({"img": img, "txt": txt}), present)
    metrics = task.build_metrics()
    task.update_metrics(metrics, outputs, None)
    values = {k: v.item() for k, v in metrics.compute().items()}
    # img->txt: row 0 rank 0, row 1 rank 1, row 2 rank 1; txt->img: 0, 2, 1 -> 2 hits of 6 at k=1
    assert values["recall@1"] == pytest.approx(2 / 6)
    assert values["recall@5"] == pytest.approx(1.0)
    predicted = task.predict(outputs)
    assert predicted[3]["txt"] is None and len(predicted[3]["img"]) == 2


def test_contrastive_names_unknown_encoders():
    with pytest.raises(ValueError, match=r"encoders \['sound'\] are not in this recipe"):
        build("mmfuse/contrastive", {"img": 2, "txt": 2}, encoders=["img", "sound"])
    spec = load_registry().get("task", "mmfuse/contrastive")
    with pytest.raises(ValueError, match="exactly two different encoders"):
        spec.config(encoders=["img", "img"])


def contrastive_shards() -> list[tuple[list[list[float]], list[list[float]], list[bool]]]:
    """Two processes' batches of different sizes; the second row of shard 0 lacks its text."""
    generator = torch.Generator().manual_seed(3)
    img, txt = torch.randn(5, 3, generator=generator).tolist(), torch.randn(5, 3, generator=generator).tolist()
    has_txt = [True, False, True, True, True]
    return [(img[:3], txt[:3], has_txt[:3]), (img[3:], txt[3:], has_txt[3:])]


def seeded_contrastive() -> Task:
    torch.manual_seed(0)
    return build("mmfuse/contrastive", {"img": 3, "txt": 3}, encoders=["img", "txt"], embed_dim=4)


def contrastive_step(task: Task, img, txt, has_txt, metrics) -> torch.Tensor:
    present = {"img": torch.ones(len(img), dtype=torch.bool), "txt": torch.tensor(has_txt)}
    outputs = task(torch.zeros(len(img), FUSED), pooled_features({"img": img, "txt": txt}), present)
    task.update_metrics(metrics, outputs, None)
    loss = task.loss(outputs, None)
    loss.backward()
    return loss


def _contrastive_worker(rank: int, world: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        task = seeded_contrastive()
        metrics = task.build_metrics()
        loss = contrastive_step(task, *contrastive_shards()[rank], metrics)
        grads = {}
        for name, parameter in task.named_parameters():
            dist.all_reduce(parameter.grad)  # what DDP does: average the gradients
            grads[name] = parameter.grad / world
        values = {k: v.item() for k, v in metrics.compute().items()}  # synchronised by torchmetrics
        torch.save({"loss": loss.item(), "grads": grads, "metrics": values}, f"{folder}/rank{rank}.pt")
        dist.barrier()  # gloo aborts a process whose peer tears down while it is still connected
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_contrastive_gathers_negatives_across_processes(tmp_path: Path):
    """Two gloo processes give the loss, DDP-averaged gradients and recall of one process that
    holds the concatenated batch."""
    mp.spawn(_contrastive_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    shards = contrastive_shards()
    single = seeded_contrastive()
    whole = [sum((list(shard[i]) for shard in shards), []) for i in range(3)]
    loss = contrastive_step(single, *whole, single.build_metrics())
    per_shard_metrics = single.build_metrics()
    for shard in shards:
        present = {"img": torch.ones(len(shard[0]), dtype=torch.bool), "txt": torch.tensor(shard[2])}
        outputs = single(torch.zeros(len(shard[0]), FUSED), pooled_features({"img": shard[0], "txt": shard[1]}), present)
        single.update_metrics(per_shard_metrics, outputs, None)
    expected_metrics = {k: v.item() for k, v in per_shard_metrics.compute().items()}
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["loss"] == pytest.approx(loss.item(), rel=1e-5)
        for name, parameter in single.named_parameters():
            torch.testing.assert_close(result["grads"][name], parameter.grad, rtol=1e-4, atol=1e-6)
        assert result["metrics"] == pytest.approx(expected_metrics)
