"""masked_lm: the library's own masking and head; its loss equals transformers' own
BertForMaskedLM computation; joint training next to a supervised task; save / load / predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmfuse.data.collate import BatchCollator
from mmfuse.data.dataset import Sample
from mmfuse.model import build_fused_model
from mmfuse.recipe import parse_recipe
from mmfuse.testing.tiny_models import save_tiny_bert

TEXTS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "hello world",
    "the bird sang a song in the tree at dawn",
]


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


def mlm_recipe(bert: Path, **mlm) -> dict:
    return {
        "encoders": {"text": {"type": "text_hf", "model": str(bert), "max_length": 24}},
        "fusion": {"type": "mean", "output_dim": 32},
        "tasks": {"mlm": {"type": "masked_lm", "encoder": "text", **mlm}},
    }


def collated(model, texts, present=None):
    preprocessors = {name: encoder.preprocessor() for name, encoder in model.encoders.items()}
    collate = BatchCollator(preprocessors, dict(model.tasks.items()))
    present = present or [True] * len(texts)
    samples = [
        Sample(index=i, inputs={"text": preprocessors["text"](t)} if here else {}, targets={})
        for i, (t, here) in enumerate(zip(texts, present))
    ]
    return preprocessors, collate(samples)


def test_masking_is_the_collators_and_skips_special_padding_and_absent_rows(bert):
    torch.manual_seed(0)
    model = build_fused_model(parse_recipe(mlm_recipe(bert, mlm_probability=0.5)))
    texts = TEXTS * 40
    present = [i % 7 != 3 for i in range(len(texts))]
    preprocessors, batch = collated(model, texts, present)
    clean = preprocessors["text"].collate([preprocessors["text"](t) if p else None for t, p in zip(texts, present)])
    labels = batch["targets"]["mlm"]
    masked_ids = batch["inputs"]["text"]["input_ids"]
    tokenizer = model.tasks["mlm"].tokenizer
    chosen = labels != -100
    assert torch.equal(labels[chosen], clean["input_ids"][chosen]), "labels hold the original tokens"
    special = torch.isin(clean["input_ids"], torch.tensor(tokenizer.all_special_ids))
    assert not (chosen & special).any() and not (chosen & ~clean["attention_mask"].bool()).any()
    assert not chosen[~torch.tensor(present)].any(), "rows without text are never chosen"
    eligible = ~special & clean["attention_mask"].bool() & torch.tensor(present).unsqueeze(1)
    share = chosen.sum() / eligible.sum()
    assert 0.42 < share < 0.58, share
    to_mask = (masked_ids == tokenizer.mask_token_id) & chosen
    assert 0.72 < to_mask.sum() / chosen.sum() < 0.88  # 80 % of the chosen become [MASK]
    assert torch.equal(masked_ids[~chosen], clean["input_ids"][~chosen]), "tokens not chosen are untouched"


def test_loss_equals_transformers_masked_lm(bert):
    from transformers import BertForMaskedLM

    torch.manual_seed(1)
    model = build_fused_model(parse_recipe(mlm_recipe(bert, mlm_probability=0.3)))
    task, encoder = model.tasks["mlm"], model.encoders["text"]
    assert task.mlm.get_output_embeddings().weight is encoder.model.get_input_embeddings().weight, "tied as BERT ties"
    torch.manual_seed(2)
    _, batch = collated(model, TEXTS, present=[True, True, False, True])
    labels = batch["targets"]["mlm"]
    assert (labels != -100).any()
    model.eval()
    loss, per_task = model.compute_loss(model(batch), batch["targets"])

    reference = BertForMaskedLM.from_pretrained(bert).eval()
    reference.bert.load_state_dict(encoder.model.state_dict(), strict=False)  # mmfuse drops the pooler
    reference.cls.load_state_dict(task.mlm.cls.state_dict())
    inputs = batch["inputs"]["text"]
    with torch.no_grad():
        expected = reference(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels).loss
    assert per_task["mlm"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)

    model.train()
    model.zero_grad()
    model.compute_loss(model(batch), batch["targets"])[0].backward()
    assert encoder.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert task.mlm.cls.predictions.transform.dense.weight.grad.abs().sum() > 0


def test_a_batch_with_nothing_chosen_has_zero_loss_not_nan(bert):
    torch.manual_seed(0)
    model = build_fused_model(parse_recipe(mlm_recipe(bert)))
    _, batch = collated(model, TEXTS[:2])
    batch["targets"]["mlm"].fill_(-100)
    loss = model.compute_loss(model(batch), batch["targets"])[0]
    assert loss.item() == 0.0
    loss.backward()


def write_rows(folder: Path) -> dict[str, str]:
    """Text + a numeric vector; the label follows the text's subject."""
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for index in range(40):
        text = TEXTS[index % 4]
        row = {"text": text, "x": [float(index % 4 == 0), 1.0], "label": "animal" if index % 4 < 2 else "other"}
        lines["val" if index % 5 == 0 else "train"].append(json.dumps(row))
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in lines.items():
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return {split: str(folder / f"{split}.jsonl") for split in lines}


@pytest.mark.slow
def test_joint_training_with_a_supervised_task_saves_and_predicts(bert, tmp_path):
    import mmfuse
    from mmfuse.run import train

    data = write_rows(tmp_path / "data")
    raw = mlm_recipe(bert)
    raw["encoders"]["x"] = {"type": "vector", "input_dim": 2, "hidden_dim": 8, "output_dim": 32}
    raw["tasks"]["mlm"]["weight"] = 0.5  # the self-supervised objective kept next to the task
    raw["tasks"]["label"] = {"type": "classification"}
    raw |= {
        "data": {"train": data["train"], "val": data["val"], "batch_size": 8},
        "optimizer": {"lr": 0.003},
        "trainer": {"epochs": 2, "device": "cpu", "progress": "off", "tensorboard": "off"},
    }
    outcome = train(parse_recipe(raw), run_dir=tmp_path / "run")
    metrics = outcome.fit.metrics
    for key in ("val/mlm/loss", "val/mlm/accuracy", "val/mlm/perplexity", "val/label/accuracy"):
        assert key in metrics and metrics[key] == metrics[key], key

    predictor = mmfuse.load(outcome.run_dir)
    model = predictor.module if hasattr(predictor, "module") else predictor.model
    assert model.tasks["mlm"].mlm.get_output_embeddings().weight is model.encoders["text"].model.get_input_embeddings().weight
    rows = predictor.predict([{"text": "the cat [MASK] on the mat", "x": [1.0, 1.0]}, {"x": [0.0, 1.0]}])
    assert rows[0]["label"] in ("animal", "other")
    assert isinstance(rows[0]["mlm"], list) and all(isinstance(token, str) for token in rows[0]["mlm"])
