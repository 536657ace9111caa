"""Tests for helpers.generation.greedy_choices / choices_kept: the teacher-forced reading of greedy
decoding that notebook 08 uses to compare storage types (one forward pass instead of decoding)."""

from __future__ import annotations

import pytest

from helpers.generation import choices_kept, greedy_choices, greedy_text

PROMPT = "once upon a time there was"


def test_choices_along_a_models_own_greedy_text_are_that_text(tiny_llama_factory, word_tokenizer):
    model = tiny_llama_factory(len(word_tokenizer), seed=3)
    text = " " + greedy_text(model, word_tokenizer, PROMPT, 10)  # this word tokenizer decodes without the space
    ids = word_tokenizer(PROMPT + text)["input_ids"]
    prompt_tokens = len(word_tokenizer(PROMPT)["input_ids"])
    choices = greedy_choices(model, word_tokenizer, PROMPT, text)
    assert len(choices) == len(ids) - prompt_tokens == 10
    assert choices == ids[prompt_tokens:]  # decoding token by token chose exactly these
    assert choices_kept(choices, choices) == 10


def test_another_model_parts_where_its_greedy_text_does(tiny_llama_factory, word_tokenizer):
    model, other = (tiny_llama_factory(len(word_tokenizer), seed=s) for s in (3, 4))
    text, other_text = (" " + greedy_text(m, word_tokenizer, PROMPT, 10) for m in (model, other))
    assert text != other_text
    kept = choices_kept(greedy_choices(model, word_tokenizer, PROMPT, text),
                        greedy_choices(other, word_tokenizer, PROMPT, text))
    words, other_words = text.split(), other_text.split()
    common = next(i for i, (a, b) in enumerate(zip(words, other_words, strict=False)) if a != b)
    assert kept == common  # one word per token here: the first different choice is the first different word


def test_choices_kept_counts_up_to_the_first_difference():
    assert choices_kept([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert choices_kept([1, 2], [5, 2]) == 0
    assert choices_kept([], []) == 0
    with pytest.raises(ValueError):
        choices_kept([1, 2], [1])
