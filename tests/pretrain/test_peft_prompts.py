"""Virtual-token PEFT (prompt_tuning, prefix_tuning, p_tuning) on transformers text encoders:
the encoder's tokens, mask and pooling stay those of the real input tokens (checked against a
computation by hand), span tasks still align, only the virtual tokens train, model folders predict
the same after loading, export keeps parity, resume is exact, and unsupported combinations are
refused at build time naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("peft")

import mmfuse  # noqa: E402
from mmfuse.contracts import masked_mean  # noqa: E402
from mmfuse.export import export_model  # noqa: E402
from mmfuse.model import build_fused_model  # noqa: E402
from mmfuse.peft_adapters import trainable_summary  # noqa: E402
from mmfuse.predict import Predictor  # noqa: E402
from mmfuse.recipe import RecipeError, parse_recipe  # noqa: E402
from mmfuse.testing.batches import make_batch  # noqa: E402
from mmfuse.testing.tiny_models import save_tiny_bert  # noqa: E402
from mmfuse.weights import read_state_dict  # noqa: E402

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "where", "is", "a", "tree", "john", "lives", "in", "paris"]
TEXTS = ["the cat sat on the mat", "a dog", "where is the tree", "john lives in paris"]

METHODS = {
    "prompt_tuning": {"method": "prompt_tuning", "num_virtual_tokens": 3},
    "prompt_tuning_text": {"method": "prompt_tuning", "num_virtual_tokens": 5, "init": "text", "init_text": "cat dog"},
    "p_tuning": {"method": "p_tuning", "num_virtual_tokens": 3, "encoder_hidden_size": 16},
    "p_tuning_lstm": {"method": "p_tuning", "num_virtual_tokens": 3, "encoder_reparameterization_type": "LSTM"},
    "prefix_tuning": {"method": "prefix_tuning", "num_virtual_tokens": 3},
    "prefix_projection": {"method": "prefix_tuning", "num_virtual_tokens": 3, "prefix_projection": True, "encoder_hidden_size": 16},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny BERT, DistilBERT and RoBERTa (random weights, the tiny BERT's WordPiece tokenizer)."""
    from transformers import DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel

    root = tmp_path_factory.mktemp("prompt_models")
    bert = save_tiny_bert(root / "bert", words=WORDS)
    folders = {"bert": bert}
    shapes = {"vocab_size": 128, "max_position_embeddings": 64}
    for family, model in {
        "distilbert": DistilBertModel(DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **shapes)),
        "roberta": RobertaModel(RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                              intermediate_size=64, pad_token_id=0, **shapes), add_pooling_layer=False),
    }.items():
        folder = root / family
        model.save_pretrained(folder)
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            if (bert / name).exists():
                (folder / name).write_bytes((bert / name).read_bytes())
        folders[family] = folder
    return folders


def text_recipe(model: Path, peft: dict | None, *, pooling: str = "mean", max_length: int = 16, **top) -> dict:
    text = {"type": "text_hf", "model": str(model), "max_length": max_length, "pooling": pooling}
    if peft is not None:
        text["peft"] = peft
    return {
        "name": "prompts",
        "seed": 3,
        "encoders": {"text": text},
        "fusion": {"type": "concat", "projection_dim": 8, "output_dim": 8, "dropout": 0.0},
        "tasks": {"label": {"type": "classification", "labels": ["animal", "place"]}},
        **top,
    }


def build(raw: dict):
    recipe = parse_recipe(raw)
    torch.manual_seed(0)
    return build_fused_model(recipe), recipe


def virtual_embeddings(backbone: torch.nn.Module, count: int) -> torch.Tensor:
    """The virtual tokens' input embeddings, computed from the trainable module by hand."""
    module = backbone.virtual_tokens
    return module(torch.arange(count).unsqueeze(0))


@pytest.mark.parametrize("method", ["prompt_tuning", "prompt_tuning_text", "p_tuning", "p_tuning_lstm"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_prepended_tokens_are_cut_off_and_pooling_reads_the_real_tokens(models, method, pooling):
    model, recipe = build(text_recipe(models["bert"], METHODS[method], pooling=pooling))
    model.eval()
    encoder = model.encoders["text"]
    inputs = make_batch(model, {"text": TEXTS})["inputs"]["text"]
    with torch.no_grad():
        out = encoder(inputs)
        # by hand: virtual embeddings in front of the word embeddings, mask extended with ones,
        # the transformers forward itself (no hooks), then the virtual positions dropped
        backbone, count = encoder.model, METHODS[method]["num_virtual_tokens"]
        words = backbone.get_input_embeddings()(inputs["input_ids"])
        prompts = virtual_embeddings(backbone, count).expand(len(TEXTS), -1, -1)
        mask = torch.cat([torch.ones(len(TEXTS), count, dtype=torch.long), inputs["attention_mask"]], dim=1)
        hidden = type(backbone).forward(backbone, inputs_embeds=torch.cat([prompts, words], 1), attention_mask=mask).last_hidden_state
        expected = hidden[:, count:]
    assert out.tokens.shape[:2] == inputs["input_ids"].shape == out.mask.shape
    assert torch.equal(out.mask, inputs["attention_mask"].bool())
    torch.testing.assert_close(out.tokens, expected, atol=1e-6, rtol=0)
    manual = expected[:, 0] if pooling == "cls" else (expected * inputs["attention_mask"][..., None]).sum(1) / inputs["attention_mask"].sum(1, keepdim=True)
    torch.testing.assert_close(out.pooled, manual, atol=1e-6, rtol=0)
    if method == "prompt_tuning_text":  # init: text starts from the words' embeddings, repeated
        ids = encoder.tokenizer("cat dog", add_special_tokens=False)["input_ids"]
        start = backbone.get_input_embeddings().weight[torch.tensor((ids * 3)[:5])]
        fresh, _ = build(text_recipe(models["bert"], METHODS[method], pooling=pooling))
        assert torch.equal(fresh.encoders["text"].model.virtual_tokens.embedding.weight, start)


@pytest.mark.parametrize("method", list(METHODS))
def test_padding_does_not_change_the_real_tokens_and_the_virtual_tokens_matter(models, method):
    model, _ = build(text_recipe(models["bert"], METHODS[method]))
    model.eval()
    encoder = model.encoders["text"]
    batch = make_batch(model, {"text": TEXTS})["inputs"]["text"]
    alone = make_batch(model, {"text": TEXTS[1:2]})["inputs"]["text"]  # the shortest text, unpadded
    plain, _ = build(text_recipe(models["bert"], None))
    with torch.no_grad():
        together, single = encoder(batch), encoder(alone)
        without = plain.encoders["text"](alone)
    length = alone["input_ids"].shape[1]
    assert length < batch["input_ids"].shape[1]
    torch.testing.assert_close(together.tokens[1, :length], single.tokens[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(together.pooled[1], single.pooled[0], atol=1e-5, rtol=0)
    assert single.tokens.shape == without.tokens.shape
    assert (single.tokens - without.tokens).abs().max() > 1e-3, "the virtual tokens must change the features"


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_projection", "p_tuning"])
def test_only_the_virtual_tokens_train_and_the_base_weights_stay(models, method):
    model, recipe = build(text_recipe(models["bert"], METHODS[method]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n in trainable if n.startswith("encoders.")] == [
        n for n, _ in model.named_parameters() if n.startswith("encoders.text.model.virtual_tokens.")
    ]
    assert {"fusion", "tasks"} <= {n.split(".")[0] for n in trainable}
    start = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    batch = make_batch(model, {"text": TEXTS}, {"label": ["animal", "animal", "place", "place"]})
    model.train()
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        loss, _ = model.compute_loss(model(batch), batch["targets"])
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("encoders.")}
        assert all(g is None for n, g in grads.items() if ".virtual_tokens." not in n), "no gradient reaches the base model"
        assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".virtual_tokens." in n)
        optimizer.step()
    after = model.state_dict()
    base = [k for k in start if k.startswith("encoders.") and ".virtual_tokens." not in k]
    assert base and all(torch.equal(start[k], after[k]) for k in base)
    assert all(not torch.equal(start[k], after[k]) for k in after if ".virtual_tokens." in k and k.endswith("embedding.weight"))
    assert trainable_summary(model).count("encoders.text") == 1


def test_span_tasks_stay_aligned_with_windows_and_token_types(models):
    """text_windows + extractive QA: every window's tokens are the real tokens (by hand, with the
    question / context token types), so start / end logits line up with the window offsets."""
    raw = {
        "encoders": {"text": {"type": "text_windows", "model": str(models["bert"]), "max_length": 12, "stride": 3,
                              "column": "qa", "peft": {"method": "prompt_tuning", "num_virtual_tokens": 4}}},
        "fusion": {"type": "concat", "projection_dim": 8, "output_dim": 8, "dropout": 0.0},
        "tasks": {"answer": {"type": "qa", "dropout": 0.0, "encoder": "text", "max_answer_tokens": 4}},
    }
    model, _ = build(raw)
    model.eval()
    context = "john lives in paris where the cat sat on the mat"
    batch = make_batch(model, {"text": [{"question": "where is the cat", "context": context},
                                        {"question": "who", "context": "john lives in paris"}]})
    inputs = batch["inputs"]["text"]
    assert "token_type_ids" in inputs
    rows, windows, length = inputs["input_ids"].shape
    with torch.no_grad():
        out = model.encoders["text"](inputs)
        outputs = model(batch)["answer"]
        backbone = model.encoders["text"].model
        flat = {k: inputs[k].reshape(rows * windows, length) for k in ("input_ids", "attention_mask", "token_type_ids")}
        active = flat["attention_mask"].any(1)
        prompts = virtual_embeddings(backbone, 4).expand(int(active.sum()), -1, -1)
        words = backbone.get_input_embeddings()(flat["input_ids"][active])
        zeros = torch.zeros(int(active.sum()), 4, dtype=torch.long)
        hidden = type(backbone).forward(
            backbone, inputs_embeds=torch.cat([prompts, words], 1),
            attention_mask=torch.cat([zeros + 1, flat["attention_mask"][active]], 1),
            token_type_ids=torch.cat([zeros, flat["token_type_ids"][active]], 1),
        ).last_hidden_state[:, 4:]
    assert out.tokens.shape[:2] == (rows, windows * length) == out.mask.shape
    expected = torch.zeros(rows * windows, length, hidden.shape[-1]).index_copy(0, active.nonzero()[:, 0], hidden)
    torch.testing.assert_close(out.tokens, expected.reshape(rows, windows * length, -1), atol=1e-6, rtol=0)
    assert out.extras["offsets"].shape[:3] == (rows, windows, length)
    spans = model.tasks["answer"].predict(outputs)
    assert len(spans) == rows
    assert all(span["text"] and span["text"] == text[span["start"]:span["end"]] for span, text in zip(spans, [context, "john lives in paris"]))


@pytest.mark.parametrize(
    ("family", "method", "refused"),
    [
        ("bert", "prompt_tuning", None), ("bert", "p_tuning", None), ("bert", "prefix_tuning", None),
        ("roberta", "prompt_tuning", None), ("roberta", "p_tuning", None), ("roberta", "prefix_tuning", None),
        ("distilbert", "prompt_tuning", None), ("distilbert", "p_tuning", None),
        ("distilbert", "prefix_tuning", "prefix_tuning has no effect on this distilbert model"),
    ],
)
def test_encoder_families_per_method(models, family, method, refused):
    """The table of docs/pretraining.md: what works is built and changes the features; what does
    not is refused at build time naming encoders.<name>.peft.method and what works."""
    raw = text_recipe(models[family], METHODS[method])
    if refused:
        with pytest.raises(ValueError, match=rf"encoders\.text\.peft\.method: {refused}.*Measured to work: .*prompt_tuning"):
            build(raw)
        return
    model, _ = build(raw)
    plain, _ = build(text_recipe(models[family], None))
    batch = make_batch(model, {"text": TEXTS})
    model.eval(), plain.eval()
    with torch.no_grad():
        tuned, base = model.encoders["text"](batch["inputs"]["text"]), plain.encoders["text"](batch["inputs"]["text"])
    assert tuned.tokens.shape == base.tokens.shape
    assert (tuned.tokens - base.tokens).abs().max() > 1e-3


def test_unsupported_settings_are_clear_errors(models):
    bert = models["bert"]
    with pytest.raises(RecipeError) as caught:
        parse_recipe(text_recipe(bert, {"method": "prompt_tuning", "merge_adapters": True}))
    assert "encoders.text.peft" in str(caught.value) and "prompt_tuning cannot be merged" in str(caught.value)
    with pytest.raises(RecipeError, match="r apply to method: lora only"):
        parse_recipe(text_recipe(bert, {"method": "prefix_tuning", "r": 4}))
    with pytest.raises(RecipeError, match="init: text and init_text go together"):
        parse_recipe(text_recipe(bert, {"method": "prompt_tuning", "init": "text"}))
    with pytest.raises(RecipeError, match="num_virtual_tokens apply to method: prompt_tuning or prefix_tuning or p_tuning only"):
        parse_recipe(text_recipe(bert, {"method": "lora", "target_modules": ["query"], "num_virtual_tokens": 4}))
    with pytest.raises(RecipeError, match="method: lora needs target_modules"):
        parse_recipe(text_recipe(bert, {"method": "lora"}))
    # the tiny BERT has 64 positions: 60 real + 8 virtual tokens do not fit
    with pytest.raises(ValueError, match=r"encoders\.text\.peft\.num_virtual_tokens: 8 virtual tokens and max_length 60 do not fit the model's 64 positions"):
        build(text_recipe(bert, {"method": "prompt_tuning", "num_virtual_tokens": 8}, max_length=60))
    vector = {
        "encoders": {"feats": {"type": "vector", "input_dim": 4, "hidden_dim": 8, "output_dim": 8,
                               "peft": {"method": "prompt_tuning"}}},
        "fusion": {"type": "concat", "projection_dim": 8, "output_dim": 8},
        "tasks": {"label": {"type": "classification", "labels": ["a", "b"]}},
    }
    with pytest.raises(ValueError, match=r"encoders\.feats\.peft\.method: prompt_tuning needs a text encoder whose backbone is a transformers model"):
        build(vector)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("prompt_data")
    rows = [{"text": f"{word} sat on the mat", "label": "animal"} for word in ("cat", "dog")] + [
        {"text": f"john lives in {word}", "label": "place"} for word in ("paris", "the tree")
    ]
    for split, repeat in (("train", 6), ("val", 1)):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows * repeat))
    return {"train": str(root / "train.jsonl"), "val": str(root / "val.jsonl"), "batch_size": 4}


def trained_recipe(models, data, peft: dict, **trainer):
    return parse_recipe(text_recipe(
        models["bert"], peft, data=data, optimizer={"lr": 0.05},
        trainer={"epochs": 2, "device": "cpu", "progress": "off", "tensorboard": "off", **trainer},
    ))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_projection"])
def test_trained_folder_predicts_the_same_after_loading_and_exports(models, data, method, tmp_path, capsys):
    from mmfuse.run import train

    recipe = trained_recipe(models, data, METHODS[method])
    outcome = train(recipe, run_dir=tmp_path / "run")
    assert "trainable parameters:" in capsys.readouterr().out
    saved = read_state_dict(outcome.model_dir / "model.safetensors")
    start, _ = build(text_recipe(models["bert"], METHODS[method]))
    start_state = start.state_dict()
    virtual = [k for k in saved if ".virtual_tokens." in k]
    assert virtual and all(not torch.equal(saved[k], start_state[k]) for k in virtual if k.endswith("embedding.weight"))
    assert all(torch.equal(saved[k], start_state[k]) for k in start_state if k.startswith("encoders.") and k not in virtual)
    saved_recipe = yaml.safe_load((outcome.model_dir / "recipe.yaml").read_text())
    assert saved_recipe["encoders"]["text"]["peft"]["method"] == METHODS[method]["method"]

    # the folder's weights in a model built from the recipe by hand == the folder loaded by mmfuse
    by_hand, _ = build(text_recipe(models["bert"], METHODS[method]))
    by_hand.load_state_dict(saved)
    rows = [{"text": text} for text in TEXTS]
    expected = Predictor(by_hand.eval(), recipe).predict_proba(rows)
    loaded = mmfuse.load(outcome.run_dir).predict_proba(rows)
    for a, b in zip(expected, loaded):
        assert all(abs(a["label"][label] - b["label"][label]) <= 1e-5 for label in a["label"])

    for format in ("onnx", "torch-export"):
        out = export_model(outcome.model_dir, tmp_path / f"model.{format}", format=format, example=rows)
        assert json.loads(Path(f"{out}.json").read_text())["parity_max_abs_diff"] <= 1e-4


@pytest.mark.slow
def test_resume_is_exact(models, data, tmp_path):
    from mmfuse.run import train
    from tests.engine.stop_after import StopAfter

    recipe = trained_recipe(models, data, METHODS["prefix_projection"], epochs=3)
    full = train(recipe, run_dir=tmp_path / "full")
    train(recipe, run_dir=tmp_path / "cut", callbacks=[StopAfter(4)])  # mid-epoch 1 (6 steps per epoch)
    resumed = train(recipe, resume=tmp_path / "cut")
    expected = read_state_dict(full.model_dir / "model.safetensors")
    got = read_state_dict(resumed.model_dir / "model.safetensors")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_masked_lm_reads_the_real_tokens_and_leaves_the_tied_embeddings_frozen(models):
    raw = {
        "encoders": {"text": {"type": "text_hf", "model": str(models["bert"]), "max_length": 16,
                              "peft": {"method": "prompt_tuning", "num_virtual_tokens": 3}}},
        "fusion": {"type": "mean", "output_dim": 32},
        "tasks": {"mlm": {"type": "masked_lm", "encoder": "text", "mlm_probability": 0.4}},
    }
    model, _ = build(raw)
    task, backbone = model.tasks["mlm"], model.encoders["text"].model
    assert task.mlm.get_output_embeddings().weight is backbone.get_input_embeddings().weight
    assert not backbone.get_input_embeddings().weight.requires_grad, "the tied word embeddings stay frozen"
    batch = make_batch(model, {"text": TEXTS * 3})
    task.prepare_batch("mlm", batch)
    labels, inputs = batch["targets"]["mlm"], batch["inputs"]["text"]
    assert (labels != -100).any()
    model.eval()
    with torch.no_grad():
        _, per_task = model.compute_loss(model(batch), batch["targets"])
        count = len(labels)
        words = backbone.get_input_embeddings()(inputs["input_ids"])
        prompts = virtual_embeddings(backbone, 3).expand(count, -1, -1)
        mask = torch.cat([torch.ones(count, 3, dtype=torch.long), inputs["attention_mask"]], 1)
        hidden = type(backbone).forward(backbone, inputs_embeds=torch.cat([prompts, words], 1), attention_mask=mask).last_hidden_state[:, 3:]
        logits = task.mlm.cls(hidden)
        expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    assert per_task["mlm"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


def test_init_from_a_plain_run_fills_the_model_and_leaves_the_virtual_tokens_fresh(models):
    from mmfuse.weight_transfer import transfer_weights

    plain, _ = build(text_recipe(models["bert"], None))
    source = {k: v + 1.0 if k.startswith("encoders.text.") and v.is_floating_point() else v for k, v in plain.state_dict().items()}
    tuned, _ = build(text_recipe(models["bert"], METHODS["prompt_tuning"]))
    fresh = tuned.encoders["text"].model.virtual_tokens.embedding.weight.clone()
    report = transfer_weights(tuned, source, {"encoders.text": "encoders.text"}, source_name="plain")
    assert report.missing_in_source == [] and report.unused_in_source == []
    state = tuned.state_dict()
    assert all(torch.equal(state[k], source[k]) for k in source if k.startswith("encoders.text."))
    assert torch.equal(tuned.encoders["text"].model.virtual_tokens.embedding.weight, fresh)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_projection"])
def test_a_deep_copy_runs_its_own_virtual_tokens(models, method):
    """The hooks travel with a copy (quantization and EMA copy the model) and read the copy's
    virtual tokens, not the original's."""
    import copy

    model, _ = build(text_recipe(models["bert"], METHODS[method]))
    model.eval()
    batch = make_batch(model, {"text": TEXTS})
    with torch.no_grad():
        before = model(batch)["label"].clone()
        twin = copy.deepcopy(model)
        assert torch.equal(twin(batch)["label"], before)
        for parameter in twin.encoders["text"].model.virtual_tokens.parameters():
            parameter.add_(torch.randn_like(parameter))  # not a constant: BERT's LayerNorm would cancel it
        assert torch.equal(model(batch)["label"], before)
        assert not torch.equal(twin(batch)["label"], before)
