"""Windows, offsets and word ids of mmfuse/text_windows, and answer spans between characters and
tokens, on hand-made examples whose token positions are worked out below."""

from __future__ import annotations

import torch

from mmfuse_plugins.tasks.spans import answer_token_targets, best_span, text_from_codes
from mmfuse_plugins.text_spans.windows import TextWindowsPreprocessor

CONTEXT = "the cat sat on the mat"  # every word is one token of the tiny vocabulary


def _preprocessor(tiny_bert, max_length=12, stride=2, max_windows=8):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    return TextWindowsPreprocessor(
        tokenizer, max_length=max_length, stride=stride, max_windows=max_windows, question_key="question", context_key="context"
    )


def test_a_question_and_a_long_context_become_strided_windows_with_context_offsets(tiny_bert):
    encoded = _preprocessor(tiny_bert)({"question": "where is the cat", "context": CONTEXT})
    # [CLS] where is the cat [SEP] = 6 tokens, then 12 - 6 - 1 = 5 context tokens per window;
    # window 2 restarts 2 tokens (the stride) before window 1 ended: "on the" "mat"
    assert encoded["input_ids"].shape == (2, 12)
    starts = encoded["offsets"][..., 0].tolist()
    assert starts[0] == [-1] * 6 + [0, 4, 8, 12, 15, -1]
    assert starts[1][:9] == [-1] * 6 + [12, 15, 19]
    assert encoded["attention_mask"][1].tolist() == [1] * 10 + [0, 0]
    assert encoded["token_type_ids"][0, 6:11].tolist() == [1] * 5  # BERT sees which part is context
    assert text_from_codes(encoded["text_codes"], 19, 22) == "mat"
    assert int(encoded["num_words"]) == 6


def test_max_windows_drops_the_rest_but_counts_every_word(tiny_bert):
    encoded = _preprocessor(tiny_bert, max_windows=1)({"question": "where is the cat", "context": CONTEXT})
    assert encoded["input_ids"].shape[0] == 1
    assert int(encoded["num_words"]) == 6


def test_word_ids_mark_first_pieces_only_and_do_not_restart_a_word_cut_by_a_window(tiny_bert):
    # "bob" is not in the vocabulary: b ##o ##b (three pieces)
    encoded = _preprocessor(tiny_bert, max_length=6, stride=2)(["bob", "is", "in", "paris"])
    # window 1: [CLS] b ##o ##b is [SEP]; window 2 starts 2 tokens back, inside "bob": ##b is in paris
    assert encoded["word_ids"][0].tolist() == [-1, 0, -1, -1, 1, -1]
    assert encoded["word_ids"][1].tolist()[:5] == [-1, -1, 1, 2, 3]
    # offsets of a word list are positions in the words joined by single spaces
    assert encoded["offsets"][1, 4].tolist() == [10, 15]
    assert text_from_codes(encoded["text_codes"], 10, 15) == "paris"


def test_collate_pads_windows_and_lengths_and_a_missing_text_gets_one_real_window(tiny_bert):
    preprocessor = _preprocessor(tiny_bert)
    batch = preprocessor.collate([preprocessor({"question": "where is the cat", "context": CONTEXT}), None, preprocessor("a dog")])
    assert batch["input_ids"].shape == (3, 2, 12)
    assert batch["attention_mask"][1, 0].sum() > 0 and batch["attention_mask"][1, 1].sum() == 0
    assert batch["attention_mask"][2, 1].sum() == 0
    assert batch["offsets"][2, 0, 1].tolist() == [0, 1] and batch["offsets"][2, 0, 3].tolist() == [-1, -1]
    assert batch["text_codes"].shape == (3, len(CONTEXT))
    assert batch["num_words"].tolist() == [6, 0, 2]


def _offsets(windows):
    """[W, L, 2] from per-window lists of (start, end) or None (outside the text)."""
    length = max(len(window) for window in windows)
    out = torch.full((len(windows), length, 2), -1, dtype=torch.long)
    for w, window in enumerate(windows):
        for t, span in enumerate(window):
            if span is not None:
                out[w, t] = torch.tensor(span)
    return out


# two windows over "the cat sat on the mat": tokens (start, end); window 2 overlaps at "on the"
WINDOWS = [
    [None, (0, 3), (4, 7), (8, 11), (12, 14), (15, 18), None],
    [None, (12, 14), (15, 18), (19, 22), None, None, None],
]


def test_an_answer_inside_one_window_maps_to_its_first_and_last_token():
    offsets = _offsets(WINDOWS).unsqueeze(0)
    start, end = answer_token_targets(offsets, torch.tensor([[4, 11]]))  # "cat sat"
    assert start[0].nonzero().tolist() == [[0, 2]]
    assert end[0].nonzero().tolist() == [[0, 3]]


def test_an_answer_in_the_overlap_is_a_target_in_both_windows():
    offsets = _offsets(WINDOWS).unsqueeze(0)
    start, end = answer_token_targets(offsets, torch.tensor([[12, 18]]))  # "on the"
    assert start[0].nonzero().tolist() == [[0, 4], [1, 1]]
    assert end[0].nonzero().tolist() == [[0, 5], [1, 2]]


def test_an_answer_cut_by_a_window_only_counts_in_the_window_that_holds_it_whole():
    offsets = _offsets(WINDOWS).unsqueeze(0)
    start, end = answer_token_targets(offsets, torch.tensor([[15, 22]]))  # "the mat"
    assert start[0].nonzero().tolist() == [[1, 2]]
    assert end[0].nonzero().tolist() == [[1, 3]]


def test_a_span_starting_inside_a_token_or_on_a_space_maps_to_the_overlapping_tokens():
    offsets = _offsets(WINDOWS).unsqueeze(0)
    start, end = answer_token_targets(offsets, torch.tensor([[3, 6]]))  # " ca": the space, then part of "cat"
    assert start[0].nonzero().tolist() == [[0, 2]] and end[0].nonzero().tolist() == [[0, 2]]


def test_padding_spans_and_spans_beyond_the_windows_give_no_target():
    offsets = _offsets(WINDOWS).unsqueeze(0).expand(2, -1, -1, -1)
    start, end = answer_token_targets(offsets, torch.tensor([[-1, -1], [30, 33]]))
    assert not start.any() and not end.any()


def test_best_span_picks_the_highest_start_plus_end_within_one_window_and_the_length_limit():
    offsets = _offsets(WINDOWS)
    start = torch.full((2, 7), -5.0)
    end = torch.full((2, 7), -5.0)
    start[0, 2], end[0, 3] = 3.0, 3.0  # "cat sat" in window 1: score 6
    start[1, 1], end[1, 3] = 4.0, 4.0  # "on the mat" in window 2: score 8, three tokens
    assert best_span(start, end, offsets, max_answer_tokens=3) == (12, 22, 8.0)
    assert best_span(start, end, offsets, max_answer_tokens=2)[:2] == (4, 11)
    start[0, 1], end[0, 1] = -200.0, 100.0  # "the": its end is best, but only after better starts
    assert best_span(start, end, offsets, max_answer_tokens=3)[:2] == (12, 22)
    start[0, 0] = 1000.0  # nor a token outside the text
    assert best_span(start, end, offsets, max_answer_tokens=3)[:2] == (12, 22)


def test_best_span_of_a_sample_without_text_is_none():
    assert best_span(torch.zeros(1, 3), torch.zeros(1, 3), torch.full((1, 3, 2), -1), 5) is None
