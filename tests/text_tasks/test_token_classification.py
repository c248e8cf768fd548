"""mmfuse/token_classification: tags aligned to first word pieces across windows, word-level
predictions, entity F1 computed by hand (seqeval's default counting), and a clear error when a
row's tags and words disagree."""

from __future__ import annotations

import pytest
import torch

import mmfuse
from mmfuse.artifact import save
from mmfuse.model import build_fused_model
from mmfuse.recipe import parse_recipe
from mmfuse.testing.batches import make_batch
from mmfuse_plugins.tasks.entity_metrics import ENTITY_VALUES, EntityScores, bio_entities
from mmfuse_plugins.tasks.text_configs import TokenClassificationConfig

SENTENCES = [
    (["bob", "lives", "in", "paris"], ["B-PER", "O", "O", "B-LOC"]),
    ("john lives in paris", ["B-PER", "O", "O", "B-LOC"]),
    (["the", "red", "ball", "is", "on", "the", "mat"], ["O", "B-OBJ", "I-OBJ", "O", "O", "O", "B-OBJ"]),
]


def tagging_recipe(bert, labels=None) -> dict:
    return {
        "name": "ner",
        "encoders": {"text": {"type": "text_windows", "model": str(bert), "max_length": 8, "stride": 2, "column": "words"}},
        "fusion": {"type": "concat", "projection_dim": 8, "hidden_dims": [8], "output_dim": 8, "dropout": 0.0},
        "tasks": {"tags": {"type": "tagging", "dropout": 0.0, **({"labels": labels} if labels else {})}},
    }


def test_bio_entities_follow_seqeval_default_counting():
    assert bio_entities(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    assert bio_entities(["I-PER", "I-PER"]) == {("PER", 0, 2)}  # I- after O starts an entity
    assert bio_entities(["B-PER", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 2)}  # a type change ends one
    assert bio_entities(["B-PER", "B-PER"]) == {("PER", 0, 1), ("PER", 1, 2)}
    assert bio_entities(["PER", "PER", "O", None]) == {("PER", 0, 2)}  # IO tags; None reads as O


def test_entity_f1_by_hand():
    metrics = {value: EntityScores(value) for value in ENTITY_VALUES}
    # gold: PER(0,2) LOC(3,4) | ORG(0,1); predicted: PER(0,2) LOC(3,5 - wrong end) | ORG(0,1) MISC(2,3)
    for metric in metrics.values():
        metric.update(
            [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["B-ORG", "O", "B-MISC"]],
            [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "O", "O"]],
        )
    values = {value: metric.compute() for value, metric in metrics.items()}
    precision, recall = 2 / 4, 2 / 3
    assert values["entity_precision"].item() == pytest.approx(precision)
    assert values["entity_recall"].item() == pytest.approx(recall)
    assert values["entity_f1"].item() == pytest.approx(2 * precision * recall / (precision + recall))
    assert values["word_accuracy"].item() == pytest.approx(6 / 8)


def test_labels_are_learned_with_o_first_and_types_grouped():
    config = TokenClassificationConfig().fit_targets([tags for _, tags in SENTENCES])
    assert config.labels == ["O", "B-LOC", "B-OBJ", "I-OBJ", "B-PER"]


@pytest.fixture
def tagger(tiny_bert):
    labels = ["O", "B-LOC", "B-OBJ", "I-OBJ", "B-PER"]
    recipe = parse_recipe(tagging_recipe(tiny_bert, labels))
    torch.manual_seed(0)
    return build_fused_model(recipe), recipe


def test_each_word_is_tagged_at_its_first_piece_only_and_windows_repeat_overlapping_words(tagger):
    model, recipe = tagger
    batch = make_batch(model, {"text": [words for words, _ in SENTENCES]}, {"tags": [tags for _, tags in SENTENCES]})
    task = model.tasks["tags"]
    outputs = model(batch)["tags"]
    token_tags = task.token_targets(outputs, batch["targets"]["tags"])
    index = {label: i for i, label in enumerate(task.labels)}
    # "bob" is three pieces (b ##o ##b); the 7-word sentence needs two windows of 6 text tokens,
    # the second repeating 2 (the stride) tokens of the first
    word_ids = outputs["word_ids"]
    assert (word_ids[2, 1] >= 0).any() and not (word_ids[0, 1] >= 0).any()
    for row, (_, tags) in enumerate(SENTENCES):
        for window in range(word_ids.shape[1]):
            for position in range(word_ids.shape[2]):
                word = int(word_ids[row, window, position])
                expected = -100 if word < 0 else index[tags[word]]
                assert int(token_tags[row, window, position]) == expected
        tagged = [int(w) for w in word_ids[row][word_ids[row] >= 0]]
        assert set(tagged) == set(range(len(tags)))
    assert [int(w) for w in word_ids[2, 0] if w >= 0] == [0, 1, 2, 3, 4, 5]
    assert [int(w) for w in word_ids[2, 1] if w >= 0] == [4, 5, 6]  # "on the" again, then "mat"
    assert int((token_tags[0] != -100).sum()) == 4  # ## pieces and special tokens carry no tag


def test_a_tiny_model_learns_the_tags_and_the_folder_predicts_them(tagger, tmp_path):
    model, recipe = tagger
    batch = make_batch(model, {"text": [words for words, _ in SENTENCES]}, {"tags": [tags for _, tags in SENTENCES]})
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        loss, _ = model.compute_loss(model(batch), batch["targets"])
        loss.backward()
        optimizer.step()
    model.eval()
    task = model.tasks["tags"]
    with torch.no_grad():
        outputs = model(batch)["tags"]
    assert task.predict(outputs) == [tags for _, tags in SENTENCES]
    metrics = task.build_metrics()
    task.update_metrics(metrics, outputs, batch["targets"]["tags"])
    assert metrics.compute()["entity_f1"].item() == pytest.approx(1.0)
    predictor = mmfuse.load(save(model, tmp_path / "model", recipe))
    assert [row["tags"] for row in predictor.predict([{"words": words} for words, _ in SENTENCES])] == [tags for _, tags in SENTENCES]


def test_tags_that_do_not_match_the_words_are_an_error_naming_both_counts(tagger):
    model, _ = tagger
    batch = make_batch(model, {"text": ["john lives in paris"]}, {"tags": [["B-PER", "O", "O"]]})
    with pytest.raises(ValueError, match="4 words but 3 tags"):
        model.compute_loss(model(batch), batch["targets"])
    from mmfuse.contracts import SampleError

    with pytest.raises(SampleError, match="unknown tags"):
        model.tasks["tags"].encode_target(["B-XYZ"])


def test_a_split_manifest_is_not_stratified_on_tag_sequences(tiny_bert):
    from mmfuse.data.targets import fittable_target

    raw = tagging_recipe(tiny_bert)
    raw["data"] = {"train": "rows.jsonl", "split": {"val": 0.25}}
    assert fittable_target(parse_recipe(raw)) is None
    raw["tasks"]["kind"] = {"type": "classification", "target": "kind"}
    assert fittable_target(parse_recipe(raw)) == "kind"


def test_a_row_without_text_teaches_nothing_and_is_no_count_error(tagger):
    model, _ = tagger
    model.eval()
    batch = make_batch(model, {"text": [SENTENCES[0][0], None]}, {"tags": [SENTENCES[0][1], ["B-PER", "O"]]})
    alone = make_batch(model, {"text": [SENTENCES[0][0]]}, {"tags": [SENTENCES[0][1]]})
    with torch.no_grad():
        loss, _ = model.compute_loss(model(batch), batch["targets"])
        expected, _ = model.compute_loss(model(alone), alone["targets"])
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        assert model.tasks["tags"].predict(model(batch)["tags"])[1] == []
