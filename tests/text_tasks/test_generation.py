"""mmfuse/generation on a tiny GPT-2: the loss is masked to the target text (checked by hand),
the prefix comes from the fused vector / encoder tokens, greedy decoding is deterministic and
goes through the LM's generate, and save -> mmfuse.load -> generate gives the same text."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mmfuse
from mmfuse.artifact import save
from mmfuse.model import build_fused_model
from mmfuse.recipe import parse_recipe
from mmfuse.testing.batches import make_batch
from mmfuse_plugins.tasks.generation import ROLE_CONTEXT, ROLE_TARGET

FEATURES = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
CAPTIONS = ["a cat on a mat", "a dog with a red ball", "a quiet sound"]


def caption_recipe(gpt2, **task) -> dict:
    return {
        "name": "caption",
        "encoders": {"scene": {"type": "vector", "input_dim": 3, "hidden_dim": 8, "output_dim": 8}},
        "fusion": {"type": "concat", "projection_dim": 8, "hidden_dims": [8], "output_dim": 8, "dropout": 0.0},
        "tasks": {"caption": {"type": "captioning", "model": str(gpt2), "prefix_length": 2, "max_new_tokens": 24, **task}},
    }


def build(gpt2, seed=0, **task):
    recipe = parse_recipe(caption_recipe(gpt2, **task))
    torch.manual_seed(seed)
    return build_fused_model(recipe), recipe


def test_targets_hold_bos_prompt_text_eos_with_roles(tiny_gpt2):
    model, _ = build(tiny_gpt2, prompt="a picture of")
    task = model.tasks["caption"]
    tokenizer = task.tokenizer
    encoded = task.encode_target("a cat")
    prompt_ids = tokenizer("a picture of", add_special_tokens=False)["input_ids"]
    text_ids = tokenizer(" a cat", add_special_tokens=False)["input_ids"]
    assert encoded[0].tolist() == [task.bos_id, *prompt_ids, *text_ids, task.eos_id]
    assert encoded[1].tolist() == [ROLE_CONTEXT] * (1 + len(prompt_ids)) + [ROLE_TARGET] * (len(text_ids) + 1)
    own = task.encode_target({"prompt": "what is it?", "text": "a dog"})  # a target's own prompt wins
    assert tokenizer.decode(own[0][own[1] == ROLE_CONTEXT][1:]) == "what is it?"


def test_the_loss_counts_only_target_tokens_checked_by_hand(tiny_gpt2):
    model, _ = build(tiny_gpt2, prompt="a picture of")
    model.eval()
    task = model.tasks["caption"]
    batch = make_batch(model, {"scene": FEATURES[:2]}, {"caption": CAPTIONS[:2]})
    with torch.no_grad():
        outputs = model(batch)["caption"]
        loss = task.loss(outputs, batch["targets"]["caption"])
        expected_terms = []
        for row in range(2):
            ids, roles = batch["targets"]["caption"][row]
            real = roles > 0
            ids, roles = ids[real], roles[real]
            # by hand: [prefix (2 vectors), BOS, prompt..., text..., EOS], no padding, positions 0..n
            embeds = torch.cat([outputs["prefix"][row], task.lm.get_input_embeddings()(ids)]).unsqueeze(0)
            logits = task.lm(inputs_embeds=embeds).logits[0]
            for position in range(len(ids)):
                if roles[position] == ROLE_TARGET:  # predicted from the position before it
                    expected_terms.append(F.cross_entropy(logits[2 + position - 1], ids[position]))
        assert loss.item() == pytest.approx(torch.stack(expected_terms).mean().item(), rel=1e-4)
        # changing a prompt token's role to "pad" would change the loss; changing only the
        # context token ids must change the loss too (they condition the text) but not the count
        labels = task.teacher_forced(outputs, batch["targets"]["caption"])[1]
        target_count = int((batch["targets"]["caption"][:, 1] == ROLE_TARGET).sum())
        assert int((labels != -100).sum()) == target_count


def test_left_packing_makes_padded_rows_score_like_alone(tiny_gpt2):
    model, _ = build(tiny_gpt2)
    model.eval()
    task = model.tasks["caption"]
    together = make_batch(model, {"scene": FEATURES}, {"caption": CAPTIONS})
    with torch.no_grad():
        outputs = model(together)["caption"]
        logits, labels = task.teacher_forced(outputs, together["targets"]["caption"])
        batch_loss_short = F.cross_entropy(logits[2], labels[2], ignore_index=-100)
        alone = make_batch(model, {"scene": FEATURES[2:]}, {"caption": CAPTIONS[2:]})
        single = task.loss(model(alone)["caption"], alone["targets"]["caption"])
    assert batch_loss_short.item() == pytest.approx(single.item(), rel=1e-4)


def train(model, batch, steps=80, lr=1e-2):
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss, _ = model.compute_loss(model(batch), batch["targets"])
        loss.backward()
        optimizer.step()
    return model.eval()


def test_a_tiny_captioner_learns_each_caption_from_its_prefix_greedy_is_deterministic_and_survives_save_load(tiny_gpt2, tmp_path):
    model, recipe = build(tiny_gpt2)
    batch = make_batch(model, {"scene": FEATURES}, {"caption": CAPTIONS})
    train(model, batch)
    from mmfuse.predict import Predictor

    predictor = Predictor(model, recipe)
    samples = [{"scene": features} for features in FEATURES]
    texts = predictor.generate(samples)
    assert texts == CAPTIONS  # the prefix alone tells the captions apart
    assert predictor.generate(samples) == texts
    assert [row["caption"] for row in predictor.predict(samples)] == texts
    beams = predictor.generate(samples, num_beams=3)
    assert beams == CAPTIONS
    assert all(len(text.split()) <= 2 for text in predictor.generate(samples, max_new_tokens=2))

    # metrics: perfect captions give BLEU and ROUGE-L of 1
    task = model.tasks["caption"]
    metrics = task.build_metrics()
    with torch.no_grad():
        task.update_metrics(metrics, model(batch)["caption"], batch["targets"]["caption"])
    values = metrics.compute()
    assert values["bleu"].item() == pytest.approx(1.0) and values["rougeL"].item() == pytest.approx(1.0)
    assert 1.0 <= values["perplexity"].item() < 2.0

    folder = save(model, tmp_path / "model", recipe)
    assert (folder / "assets" / "task-caption" / "tokenizer.json").is_file()
    loaded = mmfuse.load(folder)
    assert loaded.generate(samples) == texts


def test_sampling_follows_the_seed_and_temperature_top_p_reach_generate(tiny_gpt2):
    model, recipe = build(tiny_gpt2)
    from mmfuse.predict import Predictor

    predictor = Predictor(model.eval(), recipe)
    samples = [{"scene": features} for features in FEATURES]
    torch.manual_seed(1)
    first = predictor.generate(samples, do_sample=True, temperature=1.5, top_p=0.9, max_new_tokens=6)
    torch.manual_seed(1)
    assert predictor.generate(samples, do_sample=True, temperature=1.5, top_p=0.9, max_new_tokens=6) == first
    with pytest.raises(TypeError, match="unknown decoding options"):
        predictor.generate(samples, beams=2)


def test_a_frozen_lm_trains_only_the_projector_and_stays_in_eval_mode(tiny_gpt2):
    model, _ = build(tiny_gpt2, lm_training="frozen")
    task = model.tasks["caption"]
    before = {name: p.detach().clone() for name, p in task.lm.named_parameters()}
    batch = make_batch(model, {"scene": FEATURES}, {"caption": CAPTIONS})
    model.train()
    assert not task.lm.training and task.projector.training
    train(model, batch, steps=2)
    assert all(torch.equal(before[name], p) for name, p in task.lm.named_parameters())
    assert not any(p.requires_grad for p in task.lm.parameters())


def test_token_conditioning_projects_every_encoder_token_and_masks_missing_modalities(tiny_gpt2):
    model, _ = build(tiny_gpt2, condition="tokens", projector="linear")
    task = model.tasks["caption"]
    batch = make_batch(model, {"scene": [FEATURES[0], None]}, {"caption": CAPTIONS[:2]})
    outputs = model(batch)["caption"]
    tokens = model.encoders["scene"](batch["inputs"]["scene"]).tokens
    assert outputs["prefix"].shape == (2, tokens.shape[1], task.width)
    assert outputs["prefix_mask"][0].all() and not outputs["prefix_mask"][1].any()
    loss = task.loss(outputs, batch["targets"]["caption"])
    assert torch.isfinite(loss)


def test_text_only_fine_tuning_learns_a_completion_of_a_prompt(tiny_gpt2):
    model, recipe = build(tiny_gpt2, condition="none")
    targets = [{"prompt": "the cat", "text": "sat on the mat"}, {"prompt": "the dog", "text": "has a red ball"}]
    batch = make_batch(model, {"scene": FEATURES[:2]}, {"caption": targets})
    assert model(batch)["caption"]["prefix"].shape[1] == 0
    train(model, batch, steps=60)
    from mmfuse.predict import Predictor

    predictor = Predictor(model, recipe)
    samples = [{"scene": FEATURES[0]}, {"scene": FEATURES[1]}]
    assert predictor.generate(samples, prompts=["the cat", "the dog"]) == ["sat on the mat", "has a red ball"]


def test_lora_trains_only_the_adapters_and_the_projector_and_survives_save_load(tiny_gpt2, tmp_path):
    pytest.importorskip("peft")
    model, recipe = build(tiny_gpt2, lm_training="lora", lora_r=4)
    task = model.tasks["caption"]
    trainable = {name for name, p in task.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or name.startswith("projector.") for name in trainable)
    assert any("lora_" in name for name in trainable)
    frozen_before = {name: p.detach().clone() for name, p in task.lm.named_parameters() if not p.requires_grad}
    batch = make_batch(model, {"scene": FEATURES}, {"caption": CAPTIONS})
    train(model, batch, steps=40)
    after = dict(task.lm.named_parameters())
    assert all(torch.equal(value, after[name]) for name, value in frozen_before.items())
    assert any(p.abs().sum() > 0 for name, p in after.items() if "lora_B" in name)  # zero-initialised, now trained
    from mmfuse.predict import Predictor

    samples = [{"scene": features} for features in FEATURES]
    texts = Predictor(model, recipe).generate(samples, max_new_tokens=8)
    loaded = mmfuse.load(save(model, tmp_path / "model", recipe))
    assert loaded.generate(samples, max_new_tokens=8) == texts
