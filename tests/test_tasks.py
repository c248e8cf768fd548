"""Built-in tasks: losses against hand computations, metrics on fixed examples, target encoding,
forward/backward with 1, 2 and 4 modalities and missing ones, and several tasks sharing one model
(contrastive specifics: test_contrastive.py)."""

from __future__ import annotations

import math

import pytest
import torch

from mmfuse.contracts import EncoderOutput, SampleError, Task
from mmfuse.model import build_fused_model
from mmfuse.plugin_host import load_registry
from mmfuse.recipe import parse_recipe
from mmfuse.testing import parametrize_components

#: tasks whose head comes from a bound encoder (Task.bind_encoders: its library, its input
#: layout), which random pooled features cannot stand in for; tests/pretrain/ checks them
BOUND_TO_AN_ENCODER = {"mmfuse/masked_lm", "mmfuse/masked_features"}
#: tasks that need a real text encoder's offsets or a causal LM folder: tests/text_tasks/ covers them
#: (missing modalities included) on tiny local models; test_conformance_builtins runs generation
TEXT_TASKS = {"mmfuse/extractive_qa", "mmfuse/token_classification", "mmfuse/generation"}
TASKS = sorted(
    spec.name for spec in load_registry().specs("task")
    if spec.name.startswith("mmfuse/") and spec.name not in BOUND_TO_AN_ENCODER | TEXT_TASKS
)
FUSED = 4


def build(name: str, encoder_dims: dict[str, int] | None = None, **params) -> Task:
    spec = load_registry().get("task", name)
    task = spec.build(spec.config.model_validate(params), fused_dim=FUSED, encoder_dims=encoder_dims or {})
    assert isinstance(task, Task)
    return task


def fitted(name: str, values: list, **params) -> Task:
    spec = load_registry().get("task", name)
    config = spec.config.model_validate(params).fit_targets(values)
    return spec.build(config, fused_dim=FUSED, encoder_dims={})


def log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    norm = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - norm for x in row]


# --------------------------------------------------------------------------- classification


def test_classification_learns_string_labels_and_encodes_them():
    task = fitted("mmfuse/classification", ["dog", "cat", None, "bird", "cat"])
    assert task.label_names() == ["bird", "cat", "dog"]
    assert task.encode_target("dog").item() == 2
    with pytest.raises(SampleError, match="unknown label 'cow'"):
        task.encode_target("cow")
    assert task.predict(torch.tensor([[0.0, 0.0, 3.0], [5.0, 0.0, 0.0]])) == ["dog", "bird"]


def test_classification_loss_by_hand_with_label_smoothing():
    task = build("mmfuse/classification", labels=["a", "b", "c"], label_smoothing=0.3)
    logits = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]
    targets = [0, 2]
    expected = 0.0
    for row, target in zip(logits, targets):
        logp = log_softmax(row)
        expected += (1 - 0.3) * -logp[target] + 0.3 * -sum(logp) / 3
    expected /= 2
    loss = task.loss(torch.tensor(logits), torch.tensor(targets))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_classification_loss_by_hand_with_class_weights():
    task = build("mmfuse/classification", labels=["a", "b", "c"], class_weights={"c": 3.0})
    logits = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]
    weights = [1.0, 3.0]  # of the targets a and c
    expected = (weights[0] * -log_softmax(logits[0])[0] + weights[1] * -log_softmax(logits[1])[2]) / sum(weights)
    loss = task.loss(torch.tensor(logits), torch.tensor([0, 2]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_classification_metrics_on_a_fixed_example():
    task = build("mmfuse/classification", labels=["a", "b", "c"])
    metrics = task.build_metrics()
    logits = torch.eye(3)[[0, 1, 1, 2]] * 4  # predictions a, b, b, c
    task.update_metrics(metrics, logits, torch.tensor([0, 1, 2, 2]))
    values = {k: v.item() for k, v in metrics.compute().items()}
    # per class precision 1, 1/2, 1; recall 1, 1, 1/2; F1 1, 2/3, 2/3
    assert values["accuracy"] == pytest.approx(0.75)
    assert values["precision"] == pytest.approx(2.5 / 3)
    assert values["recall"] == pytest.approx(2.5 / 3)
    assert values["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


# --------------------------------------------------------------------------- regression


def test_regression_mse_and_huber_by_hand():
    outputs, targets = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([[0.0], [2.0], [1.0]])
    assert build("mmfuse/regression").loss(outputs, targets).item() == pytest.approx((1 + 0 + 9) / 3)
    # Huber, delta 1: 0.5 d^2 for |d| <= 1, else |d| - 0.5: 0.5, 0, 2.5
    huber = build("mmfuse/regression", loss="huber", huber_delta=1.0)
    assert huber.loss(outputs, targets).item() == pytest.approx((0.5 + 0 + 2.5) / 3)


def test_regression_metrics_on_a_fixed_example():
    task = build("mmfuse/regression")
    metrics = task.build_metrics()
    task.update_metrics(metrics, torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([[0.0], [2.0], [1.0]]))
    values = {k: v.item() for k, v in metrics.compute().items()}
    assert values["mae"] == pytest.approx(4 / 3)
    assert values["rmse"] == pytest.approx(math.sqrt(10 / 3))
    assert values["r2"] == pytest.approx(1 - 10 / 2)  # SS_res 10, SS_tot 2 (target mean 1)


def test_regression_rejects_bad_targets():
    task = build("mmfuse/regression", output_dim=2)
    assert task.encode_target([1, "2.5"]).tolist() == [1.0, 2.5]
    with pytest.raises(SampleError, match="2 finite number"):
        task.encode_target([1.0])
    with pytest.raises(SampleError, match="must be a number"):
        task.encode_target("tall")


# --------------------------------------------------------------------------- multilabel


def test_multilabel_learns_vocabulary_from_lists_and_split_strings():
    task = fitted("mmfuse/multilabel", [["news", "art"], ["sport"], [], None])
    assert task.label_names() == ["art", "news", "sport"]
    assert task.encode_target(["sport", "art"]).tolist() == [1.0, 0.0, 1.0]
    assert task.encode_target([]).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(SampleError, match="unknown label 'food'"):
        task.encode_target(["food"])
    split = fitted("mmfuse/multilabel", ["b|a", "c"], separator="|")
    assert split.label_names() == ["a", "b", "c"]
    assert split.encode_target("c|a").tolist() == [1.0, 0.0, 1.0]


def test_multilabel_bce_by_hand_with_pos_weight():
    task = build("mmfuse/multilabel", labels=["a", "b", "c"], pos_weight={"a": 3.0})
    logits, target = [0.0, 2.0, -1.0], [1.0, 0.0, 1.0]
    # positive: -log sigmoid(x) = log(1 + e^-x), times pos_weight; negative: log(1 + e^x)
    expected = (3.0 * math.log(1 + math.exp(0.0)) + math.log(1 + math.exp(2.0)) + math.log(1 + math.exp(1.0))) / 3
    loss = task.loss(torch.tensor([logits]), torch.tensor([target]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_multilabel_metrics_and_predictions_on_a_fixed_example():
    task = build("mmfuse/multilabel", labels=["a", "b", "c"])
    logits = torch.tensor([[3.0, -3.0, -1.0], [-3.0, 3.0, 1.0]])  # predicts {a}, {b, c}
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    metrics = task.build_metrics()
    task.update_metrics(metrics, logits, targets)
    values = {k: v.item() for k, v in metrics.compute().items()}
    # TP 2, FP 1 (c in row 1), FN 1 (c in row 0); per label F1: 1, 1, 0
    assert values["f1_micro"] == pytest.approx(2 / 3)
    assert values["f1_macro"] == pytest.approx(2 / 3)
    # AP: a 1, b 1, c: the negative ranks above the positive -> 1/2
    assert values["map"] == pytest.approx(2.5 / 3)
    assert task.predict(logits) == [["a"], ["b", "c"]]


# --------------------------------------------------------------------------- distillation


def test_distillation_targets_in_every_accepted_form():
    task = build("mmfuse/distillation", labels=["cat", "dog", "fox"])
    assert task.encode_target([0.5, 1.0, -2.0]).tolist() == [0.5, 1.0, -2.0, -100.0]
    assert task.encode_target({"logits": [0, 1, 2], "label": "fox"}).tolist() == [0.0, 1.0, 2.0, 2.0]
    assert task.encode_target('{"logits": [0, 1, 2], "label": "dog"}').tolist()[-1] == 1.0
    with pytest.raises(SampleError, match="expected 3 teacher logits"):
        task.encode_target([1.0, 2.0])
    with pytest.raises(SampleError, match="unknown label 'cow'"):
        task.encode_target({"logits": [0, 1, 2], "label": "cow"})
    with pytest.raises(SampleError, match="list of teacher logits"):
        task.encode_target(3.5)


def test_distillation_fit_reads_class_count_and_checks_hard_labels():
    task = fitted("mmfuse/distillation", [[0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4]])
    assert task.num_classes == 4 and task.label_names() is None  # unnamed classes: indices
    spec = load_registry().get("task", "mmfuse/distillation")
    with pytest.raises(ValueError, match="differ in length"):
        spec.config().fit_targets([[1, 2], [1, 2, 3]])
    with pytest.raises(ValueError, match="no training target has a 'label'"):
        spec.config(alpha=0.5).fit_targets([[1, 2], [3, 4]])


def test_distillation_kl_by_hand():
    task = build("mmfuse/distillation", num_classes=3, temperature=2.0)
    student, teacher = [1.0, 0.0, -1.0], [0.0, 1.0, 0.0]
    log_s, log_t = log_softmax([x / 2 for x in student]), log_softmax([x / 2 for x in teacher])
    kl = sum(math.exp(t) * (t - s) for t, s in zip(log_t, log_s))
    targets = torch.tensor([[*teacher, -100.0]])
    assert task.loss(torch.tensor([student]), targets).item() == pytest.approx(kl * 4, rel=1e-5)


def test_distillation_mixes_hard_labels_only_where_given():
    task = build("mmfuse/distillation", num_classes=3, temperature=1.0, alpha=0.25)
    students = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]]
    teachers = [[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    kl = 0.0
    for student, teacher in zip(students, teachers):
        log_s, log_t = log_softmax(student), log_softmax(teacher)
        kl += sum(math.exp(t) * (t - s) for t, s in zip(log_t, log_s))
    kl /= 2
    hard = -log_softmax(students[1])[1]  # only row 1 has a label (class 1)
    targets = torch.tensor([[*teachers[0], -100.0], [*teachers[1], 1.0]])
    loss = task.loss(torch.tensor(students), targets)
    assert loss.item() == pytest.approx(0.25 * kl + 0.75 * hard, rel=1e-5)


def test_distillation_metrics_on_a_fixed_example():
    task = build("mmfuse/distillation", labels=["a", "b", "c"])
    students = torch.eye(3)[[0, 1, 2, 2]] * 3  # predicts a, b, c, c
    teachers = torch.eye(3)[[0, 1, 1, 2]]  # teacher says a, b, b, c
    labels = torch.tensor([[0.0], [-100.0], [2.0], [0.0]])  # a, none, c, a
    metrics = task.build_metrics()
    task.update_metrics(metrics, students, torch.cat([teachers, labels], dim=1))
    values = {k: v.item() for k, v in metrics.compute().items()}
    assert values["teacher_agreement"] == pytest.approx(3 / 4)
    assert values["accuracy"] == pytest.approx(2 / 3)
    assert task.predict(students) == ["a", "b", "c", "c"]


def test_regression_metrics_with_two_outputs_are_scalars():
    task = build("mmfuse/regression", output_dim=2)
    metrics = task.build_metrics()
    outputs = torch.tensor([[1.0, 0.0], [2.0, 1.0], [4.0, 2.0]])
    targets = torch.tensor([[0.0, 0.0], [2.0, 2.0], [1.0, 4.0]])
    task.update_metrics(metrics, outputs, targets)
    values = metrics.compute()
    assert values["mae"].item() == pytest.approx((1 + 0 + 0 + 1 + 3 + 2) / 6)
    assert values["rmse"].item() == pytest.approx(math.sqrt((1 + 0 + 0 + 1 + 9 + 4) / 6))
    # R2 per output: 1 - 10/2 and 1 - 5/8, averaged
    assert values["r2"].item() == pytest.approx(((1 - 10 / 2) + (1 - 5 / 8)) / 2)


# --------------------------------------------------------------------------- every task, any modalities

#: per task: recipe parameters (a function of the encoder names) and four raw target values
SAMPLES = {
    "mmfuse/classification": (lambda names: {"labels": ["a", "b"]}, ["a", "b", "a", "b", "b"]),
    "mmfuse/regression": (lambda names: {}, [0.5, -1.0, 2.0, 0.0, 1.0]),
    "mmfuse/multilabel": (lambda names: {"labels": ["x", "y"]}, [["x"], [], ["x", "y"], ["y"], ["x"]]),
    "mmfuse/contrastive": (lambda names: {"encoders": names[:2]}, None),
    "mmfuse/prototype": (lambda names: {"labels": ["a", "b"], "distance": "euclidean"}, ["a", "b", "a", "b", "b"]),
    "mmfuse/distillation": (
        lambda names: {"num_classes": 3, "alpha": 0.5},
        [[0.0, 1.0, 2.0], {"logits": [1, 0, 0], "label": 2}, [0.5, 0.5, 0.5], {"logits": [0, 0, 3], "label": 0}, [1, 2, 3]],
    ),
}


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("count", [1, 2, 4])
def test_task_forward_backward_with_missing_modalities(name, count):
    assert name in SAMPLES, f"add sample parameters and targets for the new task {name} to SAMPLES"
    params, raw_targets = SAMPLES[name]
    names = [f"m{i}" for i in range(count)]
    encoder_dims = {n: 3 + i for i, n in enumerate(names)}
    spec = load_registry().get("task", name)
    if name == "mmfuse/contrastive" and count == 1:
        with pytest.raises(ValueError, match="exactly two different encoders"):
            spec.config.model_validate(params(names))
        return
    task = spec.build(spec.config.model_validate(params(names)), fused_dim=FUSED, encoder_dims=encoder_dims)
    generator = torch.Generator().manual_seed(0)
    features = {}
    for n, dim in encoder_dims.items():
        pooled = torch.randn(5, dim, generator=generator, requires_grad=True)
        features[n] = EncoderOutput(pooled.unsqueeze(1), torch.ones(5, 1, dtype=torch.bool), pooled)
    # rows 0 and 4 complete, row 1 misses m0, row 2 has only the last encoder, row 3 nothing
    present = {n: torch.tensor([True, n != "m0", n == names[-1], False, True]) for n in names}
    fused = torch.randn(5, FUSED, generator=generator, requires_grad=True)
    outputs = task(fused, features, present)
    targets = None
    if raw_targets is not None:
        targets = task.collate_targets([task.encode_target(value) for value in raw_targets])
    loss = task.loss(outputs, targets)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in task.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    metrics = task.build_metrics()
    task.update_metrics(metrics, outputs, targets)
    assert all(torch.isfinite(v).all() for v in metrics.compute().values())
    assert len(task.predict(outputs)) == 5


# --------------------------------------------------------------------------- several tasks, one model


def multitask_data(size: int = 48):
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, 3, generator=generator)
    # b is a noisy view of a, so the two can be aligned
    b = a[:, :2].flip(1) + 0.3 * torch.randn(size, 2, generator=generator)
    labels = ["pos" if value > 0 else "neg" for value in (a[:, 0] + b[:, 0]).tolist()]
    scores = (a[:, 1] - b[:, 1]).tolist()
    has_b = torch.arange(size) % 5 != 0
    return a, b, has_b, labels, scores


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_two_tasks_share_one_model_and_report_their_own_metrics(weighting):
    registry = load_registry()
    recipe = parse_recipe(
        {
            "encoders": {
                "a": {"type": "vector", "input_dim": 3, "layer_norm": False},
                "b": {"type": "vector", "input_dim": 2, "layer_norm": False},
            },
            "fusion": {"type": "mean", "output_dim": 16},
            "tasks": {
                "label": {"type": "classification"},
                "score": {"type": "regression", "weight": 0.5},
                "align": {"type": "contrastive", "encoders": ["a", "b"], "embed_dim": 8},
            },
            "trainer": {"loss_weighting": weighting},
        },
        registry,
    )
    a, b, has_b, labels, scores = multitask_data()
    recipe.tasks["label"].params = recipe.tasks["label"].params.fit_targets(labels)
    torch.manual_seed(0)
    model = build_fused_model(recipe, registry)
    batch = {
        "inputs": {"a": {"values": a}, "b": {"values": b}},
        "present": {"a": torch.ones(len(a), dtype=torch.bool), "b": has_b},
    }
    raw = {"label": labels, "score": scores}
    targets = {name: model.tasks[name].collate_targets([model.tasks[name].encode_target(v) for v in raw[name]]) for name in raw}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    history = []
    for _ in range(60):
        total, per_task = model.compute_loss(model(batch), targets)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        history.append({name: loss.item() for name, loss in per_task.items()})
    for name in ("label", "score", "align"):
        assert history[-1][name] < 0.7 * history[0][name], (name, history[0], history[-1])
    if weighting == "uncertainty":
        assert model.loss_weighting.log_vars.abs().sum() > 0

    model.eval()
    collections = {name: task.build_metrics().clone(prefix=f"{name}/") for name, task in model.tasks.items()}
    with torch.no_grad():
        outputs = model(batch)
    report = {}
    for name, task in model.tasks.items():
        task.update_metrics(collections[name], outputs[name], targets.get(name))
        report.update({key: value.item() for key, value in collections[name].compute().items()})
    assert {"label/accuracy", "label/f1", "score/mae", "score/r2", "align/recall@1", "align/recall@5"} <= set(report)
    assert report["label/accuracy"] > 0.7  # chance: 0.5; rows without b cannot all be right
    assert report["score/r2"] > 0.5  # a constant predictor scores 0
    assert report["align/recall@5"] > 0.5  # chance: 5 of ~38 complete pairs


@pytest.mark.slow
@parametrize_components("task", names=TASKS, configs={"mmfuse/contrastive": {"encoders": ["left", "right"]}})
def test_builtin_tasks_pass_the_plugin_conformance_kit(conformance_case, tmp_path):
    """The same checks a third-party task gets from mmfuse.testing."""
    conformance_case.check(tmp_path)
