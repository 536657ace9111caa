"""Tests for helpers.evaluation.perplexity, against the model's own loss on a tiny random Llama."""

from __future__ import annotations

import math

import pytest

from helpers.evaluation import perplexity

TEXTS = [
    "once upon a time there was a little cat",
    "the dog liked to play in the sun every day and the cat saw a red ball under the tree",
    "a happy robot",
    "in a galaxy far away lived a happy robot who loved stars , she ran to it",
    "they liked to play",
]


@pytest.fixture
def model(tiny_llama_factory, word_tokenizer):
    return tiny_llama_factory(len(word_tokenizer), seed=7)


def model_loss(model, tokenizer, text, max_tokens=None):
    """Mean next-token NLL from the model's own ``labels=`` loss, and the number of predicted tokens."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        loss = model(input_ids=input_ids, labels=input_ids).loss.item()
    return loss, len(ids) - 1


def test_single_text_equals_exp_of_model_loss(model, word_tokenizer):
    loss, _ = model_loss(model, word_tokenizer, TEXTS[1])
    assert perplexity(model, word_tokenizer, [TEXTS[1]], progress=False) == pytest.approx(
        math.exp(loss), rel=1e-4
    )


def test_many_texts_are_token_weighted(model, word_tokenizer):
    pairs = [model_loss(model, word_tokenizer, t) for t in TEXTS]
    expected = math.exp(sum(loss * n for loss, n in pairs) / sum(n for _, n in pairs))
    assert perplexity(model, word_tokenizer, TEXTS, progress=False) == pytest.approx(expected, rel=1e-4)
    # not the mean of per-text perplexities
    naive = sum(math.exp(loss) for loss, _ in pairs) / len(pairs)
    assert perplexity(model, word_tokenizer, TEXTS, progress=False) != pytest.approx(naive, rel=1e-4)


@pytest.mark.parametrize("batch_size", [2, 3, 4, 16])
def test_padding_does_not_change_the_result(model, word_tokenizer, batch_size):
    lengths = {len(word_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS}
    assert len(lengths) > 1  # the batches really need padding
    one_by_one = perplexity(model, word_tokenizer, TEXTS, batch_size=1, progress=False)
    batched = perplexity(model, word_tokenizer, TEXTS, batch_size=batch_size, progress=False)
    assert batched == pytest.approx(one_by_one, rel=1e-4)


def test_order_of_texts_does_not_matter(model, word_tokenizer):
    forward = perplexity(model, word_tokenizer, TEXTS, batch_size=2, progress=False)
    backward = perplexity(model, word_tokenizer, TEXTS[::-1], batch_size=2, progress=False)
    assert forward == pytest.approx(backward, rel=1e-4)


def test_texts_are_cut_to_max_tokens(model, word_tokenizer):
    loss, n = model_loss(model, word_tokenizer, TEXTS[1], max_tokens=5)
    assert n == 4
    value = perplexity(model, word_tokenizer, [TEXTS[1]], max_tokens=5, progress=False)
    assert value == pytest.approx(math.exp(loss), rel=1e-4)
    assert value != pytest.approx(perplexity(model, word_tokenizer, [TEXTS[1]], progress=False), rel=1e-4)


def test_texts_shorter_than_two_tokens_are_skipped(model, word_tokenizer):
    alone = perplexity(model, word_tokenizer, [TEXTS[0]], progress=False)
    with_short = perplexity(model, word_tokenizer, ["", "cat", TEXTS[0], "   "], progress=False)
    assert with_short == pytest.approx(alone, rel=1e-6)


@pytest.mark.parametrize("texts", [[], [""], ["cat"], ["cat", "dog", " "]])
def test_no_scorable_text_raises_value_error(model, word_tokenizer, texts):
    with pytest.raises(ValueError, match="two or more tokens"):
        perplexity(model, word_tokenizer, texts, progress=False)


def test_max_tokens_one_leaves_nothing_to_score(model, word_tokenizer):
    with pytest.raises(ValueError):
        perplexity(model, word_tokenizer, TEXTS, max_tokens=1, progress=False)


def test_uniform_model_has_perplexity_equal_to_vocab_size(model, word_tokenizer):
    import torch

    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: probability 1/V for every token
    value = perplexity(model, word_tokenizer, TEXTS, progress=False)
    assert value == pytest.approx(model.config.vocab_size, rel=1e-5)


def test_training_mode_is_restored(model, word_tokenizer):
    model.train()
    perplexity(model, word_tokenizer, TEXTS[:2], progress=False)
    assert model.training
    model.eval()
    perplexity(model, word_tokenizer, TEXTS[:2], progress=False)
    assert not model.training


def test_tokenizer_without_pad_token(model, word_tokenizer):
    class NoPadTokenizer:
        pad_token_id = None

        def __call__(self, text, **kwargs):
            return word_tokenizer(text, **kwargs)

    expected = perplexity(model, word_tokenizer, TEXTS, batch_size=4, progress=False)
    assert perplexity(model, NoPadTokenizer(), TEXTS, batch_size=4, progress=False) == pytest.approx(
        expected, rel=1e-4
    )


def test_progress_bar_can_be_shown(model, word_tokenizer, capsys):
    value = perplexity(model, word_tokenizer, TEXTS[:2], progress=True)
    assert math.isfinite(value) and value > 1
    assert "Perplexity" in capsys.readouterr().err


def test_texts_of_similar_length_share_a_batch(model, word_tokenizer):
    """Scored sorted by length, a batch of 2 pads each text at most to its neighbour's length."""
    widths = []
    handle = model.register_forward_pre_hook(lambda _, args, kwargs: widths.append(kwargs["input_ids"].shape),
                                             with_kwargs=True)
    try:
        perplexity(model, word_tokenizer, TEXTS, batch_size=2, progress=False)
    finally:
        handle.remove()
    lengths = sorted(len(word_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS)
    expected = [(len(lengths[i:i + 2]), max(lengths[i:i + 2])) for i in range(0, len(lengths), 2)]
    assert [tuple(shape) for shape in widths] == expected


def test_cpu_bf16_computes_in_bf16_only_where_the_cpu_has_it(model, word_tokenizer, monkeypatch):
    import helpers.modeling

    exact = perplexity(model, word_tokenizer, TEXTS, progress=False)
    monkeypatch.setattr(helpers.modeling, "cpu_computes_bf16", lambda: False)
    assert perplexity(model, word_tokenizer, TEXTS, progress=False, cpu_bf16=True) == exact  # fp32 as before
    monkeypatch.setattr(helpers.modeling, "cpu_computes_bf16", lambda: True)
    in_bf16 = perplexity(model, word_tokenizer, TEXTS, progress=False, cpu_bf16=True)
    assert in_bf16 != exact  # the matrix products really ran in bf16 (torch emulates it where the CPU cannot)
    assert in_bf16 == pytest.approx(exact, rel=2e-2)
    assert perplexity(model, word_tokenizer, TEXTS, progress=False) == exact  # off unless asked for


def test_text_losses_keep_each_text_in_order_and_pool_to_the_perplexity(model, word_tokenizer):
    """Per-text pieces (scored in length-sorted batches) come back in the texts' order, each equal to
    the model's own loss on that text alone, and pool to what perplexity() returns for all of them."""
    from helpers.evaluation import pooled_perplexity, text_losses

    rows = text_losses(model, word_tokenizer, TEXTS, progress=False)
    for text, row in zip(TEXTS, rows, strict=True):
        loss, tokens = model_loss(model, word_tokenizer, text)
        assert row["tokens"] == tokens and row["nll"] / tokens == pytest.approx(loss, rel=1e-4)
    assert pooled_perplexity(rows) == pytest.approx(perplexity(model, word_tokenizer, TEXTS, progress=False), rel=1e-9)


def test_perplexity_interval_brackets_the_pooled_value_and_narrows_with_more_texts():
    from helpers.evaluation import perplexity_interval

    rows = [{"nll": 2.0 * n, "tokens": n} for n in (10, 12, 8, 11)] + [{"nll": 3.0 * 10, "tokens": 10}]
    value, low, high = perplexity_interval(rows)
    assert low <= value <= high and low < high
    assert perplexity_interval(rows) == (value, low, high)  # seeded: the same interval every time
    _, low_many, high_many = perplexity_interval(rows * 10)
    assert high_many - low_many < high - low
    with pytest.raises(ValueError, match="at least two texts"):
        perplexity_interval(rows[:1])


def test_repeated_ngram_share_and_story_ending():
    from helpers.evaluation import repeated_ngram_share, story_ending

    loop = "She said, I will help you. " * 6
    assert repeated_ngram_share(loop) > 0.7
    assert repeated_ngram_share("Lily found a red ball. She gave it to Tom, and they played all day.") == 0.0
    assert repeated_ngram_share("too short") == 0.0
    assert story_ending("They played.", stopped_at_eos=True) == "EOS"
    assert story_ending('Tom said, "Thank you!"\n', stopped_at_eos=False) == "sentence end"
    assert story_ending("and then the little", stopped_at_eos=False) == "cut off"
