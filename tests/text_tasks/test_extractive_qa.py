"""mmfuse/extractive_qa on mmfuse/text_windows: the loss is the hand-computed shared-softmax NLL
of the gold tokens, a tiny model learns answers that lie in later windows, answers come back as
character spans of the context, SQuAD metrics, fused context, and the model folder round trip."""

from __future__ import annotations

import json

import pytest
import torch

import mmfuse
from mmfuse.artifact import save
from mmfuse.data.collate import BatchCollator
from mmfuse.data.dataset import build_dataset
from mmfuse.data.manifest import read_manifest
from mmfuse.model import build_fused_model
from mmfuse.recipe import parse_recipe

CONTEXT = "the cat sat on the mat . john lives in paris . a dog is on a red ball"
QUESTIONS = [
    ("where is the cat", "the mat"),
    ("where is john", "paris"),
    ("where is the dog", "a red ball"),
]


def qa_rows() -> list[dict]:
    return [
        {"qa": {"question": question, "context": CONTEXT}, "answer": {"text": answer, "answer_start": CONTEXT.index(answer)}}
        for question, answer in QUESTIONS
    ]


def qa_recipe(bert, add_fused: bool = False) -> dict:
    encoders = {"text": {"type": "text_windows", "model": str(bert), "max_length": 16, "stride": 3, "column": "qa"}}
    if add_fused:
        encoders["scene"] = {"type": "vector", "input_dim": 3, "hidden_dim": 8, "output_dim": 8}
    return {
        "name": "qa",
        "encoders": encoders,
        "fusion": {"type": "concat", "projection_dim": 8, "hidden_dims": [8], "output_dim": 8, "dropout": 0.0},
        "tasks": {"answer": {"type": "qa", "dropout": 0.0, "encoder": "text", "add_fused": add_fused, "max_answer_tokens": 5}},
    }


def batch_of(model, recipe, rows, folder):
    manifest_file = folder / "qa.jsonl"
    manifest_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = build_dataset(read_manifest(manifest_file), recipe, model)
    preprocessors = {name: encoder.preprocessor() for name, encoder in model.encoders.items()}
    return BatchCollator(preprocessors, model.tasks)([dataset[i] for i in range(len(dataset))])


@pytest.fixture
def qa_model(tiny_bert):
    recipe = parse_recipe(qa_recipe(tiny_bert))
    torch.manual_seed(0)
    return build_fused_model(recipe), recipe


def test_the_loss_is_the_shared_softmax_nll_of_the_gold_tokens_in_every_window_holding_the_answer(qa_model, tmp_path):
    model, recipe = qa_model
    batch = batch_of(model, recipe, qa_rows(), tmp_path)
    assert batch["inputs"]["text"]["input_ids"].shape[1] >= 3  # the context spans several windows
    outputs = model(batch)["answer"]
    loss = model.tasks["answer"].loss(outputs, batch["targets"]["answer"])
    expected = []
    for row, (question, answer) in enumerate(QUESTIONS):
        offsets = outputs["offsets"][row]
        first, last = CONTEXT.index(answer), CONTEXT.index(answer) + len(answer)
        # worked out by hand: windows whose text holds [first, last), its first / last token
        starts, ends = [], []
        for window in range(offsets.shape[0]):
            in_text = offsets[window, :, 0] >= 0
            if not in_text.any():
                continue
            begin, stop = offsets[window, in_text, 0].min(), offsets[window, in_text, 1].max()
            if begin <= first and stop >= last:
                tokens = [t for t in range(offsets.shape[1]) if in_text[t] and offsets[window, t, 1] > first and offsets[window, t, 0] < last]
                starts.append((window, tokens[0]))
                ends.append((window, tokens[-1]))
        assert starts, f"'{answer}' should lie whole in some window"
        for logits, hits in ((outputs["start_logits"][row], starts), (outputs["end_logits"][row], ends)):
            probabilities = logits.flatten().softmax(0).reshape(logits.shape)
            expected.append(-torch.log(sum(probabilities[w, t] for w, t in hits)))
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-4)


def test_question_and_special_tokens_can_never_be_the_answer(qa_model, tmp_path):
    model, recipe = qa_model
    batch = batch_of(model, recipe, qa_rows(), tmp_path)
    outputs = model(batch)["answer"]
    outside = outputs["offsets"][..., 0] < 0
    assert (outputs["start_logits"][outside] <= -1e3).all() and (outputs["end_logits"][outside] <= -1e3).all()


def train(model, batch, steps=60):
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss, _ = model.compute_loss(model(batch), batch["targets"])
        loss.backward()
        optimizer.step()
    return model.eval()


def test_a_tiny_model_learns_answers_from_later_windows_and_returns_their_character_spans(qa_model, tmp_path):
    model, recipe = qa_model
    batch = batch_of(model, recipe, qa_rows(), tmp_path)
    train(model, batch)
    task = model.tasks["answer"]
    with torch.no_grad():
        outputs = model(batch)["answer"]
    predictions = task.predict(outputs)
    for prediction, (question, answer) in zip(predictions, QUESTIONS):
        assert prediction["text"] == answer
        assert CONTEXT[prediction["start"] : prediction["end"]] == answer
    metrics = task.build_metrics()
    task.update_metrics(metrics, outputs, batch["targets"]["answer"])
    values = metrics.compute()
    assert values["exact_match"].item() == pytest.approx(1.0) and values["f1"].item() == pytest.approx(1.0)

    # the model folder rebuilds tokenizer and encoder offline and answers the same
    folder = save(model, tmp_path / "model", recipe)
    predictor = mmfuse.load(folder)
    answers = predictor.predict([{"qa": row["qa"]} for row in qa_rows()])
    assert [row["answer"]["text"] for row in answers] == [answer for _, answer in QUESTIONS]


def test_fused_context_is_added_to_every_token(tiny_bert, tmp_path):
    recipe = parse_recipe(qa_recipe(tiny_bert, add_fused=True))
    torch.manual_seed(0)
    model = build_fused_model(recipe).eval()
    rows = [{**row, "scene": [1.0, 0.0, 0.0]} for row in qa_rows()]
    batch = batch_of(model, recipe, rows, tmp_path)
    changed = {**batch, "inputs": {**batch["inputs"], "scene": {"values": -batch["inputs"]["scene"]["values"]}}}
    with torch.no_grad():
        first, second = model(batch)["answer"], model(changed)["answer"]
    in_text = first["offsets"][..., 0] >= 0
    assert not torch.allclose(first["start_logits"][in_text], second["start_logits"][in_text])
    loss, _ = model.train().compute_loss(model(batch), batch["targets"])
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders["scene"].parameters())


def test_a_bad_answer_and_an_encoder_without_offsets_are_clear_errors(tiny_bert):
    from mmfuse.contracts import EncoderOutput, SampleError

    recipe = parse_recipe(qa_recipe(tiny_bert))
    task = build_fused_model(recipe).tasks["answer"]
    with pytest.raises(SampleError, match="answer_start"):
        task.encode_target({"text": "paris"})
    assert task.encode_target('{"text": ["paris", "in paris"], "answer_start": [40, 37]}').tolist() == [[40, 45], [37, 45]]
    plain = EncoderOutput(torch.zeros(1, 2, 32), torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 32))
    with pytest.raises(ValueError, match="mmfuse/text_windows"):
        task(torch.zeros(1, 8), {"text": plain}, {"text": torch.ones(1, dtype=torch.bool)})


def test_a_row_without_the_text_has_no_answer_and_does_not_change_the_others_loss(qa_model):
    from mmfuse.testing.batches import make_batch

    model, _ = qa_model
    model.eval()
    rows = qa_rows()
    values = [rows[0]["qa"], None, rows[2]["qa"]]
    targets = [row["answer"] for row in rows]
    with torch.no_grad():
        batch = make_batch(model, {"text": values}, {"answer": targets})
        outputs = model(batch)["answer"]
        loss = model.tasks["answer"].loss(outputs, batch["targets"]["answer"])
        alone = make_batch(model, {"text": [values[0], values[2]]}, {"answer": [targets[0], targets[2]]})
        expected = model.tasks["answer"].loss(model(alone)["answer"], alone["targets"]["answer"])
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        assert model.tasks["answer"].predict(outputs)[1]["text"] == ""
        # no row has the text: the encoder is skipped, nothing is answerable, the loss is zero
        nothing = make_batch(model, {"text": [None, None]}, {"answer": targets[:2]})
        empty = model(nothing)["answer"]
        assert model.tasks["answer"].loss(empty, nothing["targets"]["answer"]).item() == 0.0
        assert [answer["text"] for answer in model.tasks["answer"].predict(empty)] == ["", ""]


def test_the_frozen_feature_cache_runs_an_encoder_with_extras_instead_of_dropping_them(qa_model):
    from mmfuse.cache.features import FeatureStore
    from mmfuse.testing.batches import make_batch

    model, _ = qa_model
    model.eval().encoders["text"].requires_grad_(False)
    store = FeatureStore(model, ["text"]).install()
    rows = qa_rows()
    batch = make_batch(model, {"text": [row["qa"] for row in rows]}, {"answer": [row["answer"] for row in rows]})
    batch["sample_keys"] = {"text": torch.tensor([[1, 2], [3, 4], [5, 6]])}
    with torch.no_grad():
        for _ in range(2):
            features, _ = model.encode(batch)
            assert "offsets" in features["text"].extras
    assert store.uncacheable == {"text"} and store.served["text"] == 0 and not store.rows["text"]
