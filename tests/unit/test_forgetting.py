"""Tests for helpers.lab.forgetting: the out-of-domain passages, per-text and pooled perplexity, the plot."""

from __future__ import annotations

import math

import pytest

from helpers.lab.forgetting import (
    AFTER_COLOR,
    BEFORE_COLOR,
    general_english_passages,
    perplexity_per_text,
    plot_before_after,
    pooled,
    relative_change,
)

# --- the passages ------------------------------------------------------------------------------


def test_passages_are_deterministic_sorted_and_long_enough():
    first = general_english_passages(count=8, min_chars=1200)
    assert first == general_english_passages(count=8, min_chars=1200)
    names = [name for name, _ in first]
    assert names == sorted(names) and len(set(names)) == 8
    assert all(len(text) >= 1200 and text == text.strip() for _, text in first)


def test_passages_are_the_python_help_topics():
    from pydoc_data.topics import topics

    name, text = general_english_passages(count=1)[0]
    assert text == topics[name].strip()


def test_fewer_passages_are_a_prefix_of_more():
    assert general_english_passages(count=3) == general_english_passages(count=10)[:3]


def test_min_chars_filters():
    short_allowed = [n for n, _ in general_english_passages(count=5, min_chars=1)]
    long_only = [n for n, _ in general_english_passages(count=5, min_chars=3000)]
    assert short_allowed != long_only


@pytest.mark.parametrize("count", [0, -1])
def test_count_must_be_positive(count):
    with pytest.raises(ValueError, match="at least 1"):
        general_english_passages(count=count)


def test_asking_for_more_than_available_says_how_many_there_are():
    with pytest.raises(ValueError, match="only"):
        general_english_passages(count=10_000)


# --- relative change, pooling ------------------------------------------------------------------


@pytest.mark.parametrize("before, after, expected", [(10.0, 8.0, -0.2), (10.0, 12.5, 0.25), (7.0, 7.0, 0.0)])
def test_relative_change(before, after, expected):
    assert relative_change(before, after) == pytest.approx(expected)


def test_relative_change_needs_a_positive_before():
    with pytest.raises(ValueError):
        relative_change(0.0, 1.0)


def test_pooled_weights_by_tokens():
    rows = [{"perplexity": 2.0, "tokens": 3}, {"perplexity": 8.0, "tokens": 1}]
    assert pooled(rows) == pytest.approx(math.exp((3 * math.log(2) + math.log(8)) / 4))
    assert pooled([{"perplexity": 5.0, "tokens": 7}]) == pytest.approx(5.0)


def test_pooled_needs_rows():
    with pytest.raises(ValueError):
        pooled([])


def test_per_text_pooled_equals_one_batched_call(tiny_llama_factory, word_tokenizer):
    from helpers.evaluation import perplexity

    model = tiny_llama_factory(len(word_tokenizer), seed=1)
    texts = ["once upon a time there was a little cat", "the dog ran to the red ball under the tree and",
             "a happy robot loved stars"]
    rows = perplexity_per_text(model, word_tokenizer, texts, max_tokens=6)
    assert [r["tokens"] for r in rows] == [5, 5, 4]  # cut to 6 tokens -> 5 predictions; the short one has 5 tokens
    batched = perplexity(model, word_tokenizer, texts, max_tokens=6, progress=False)
    assert pooled(rows) == pytest.approx(batched, rel=1e-5)


def test_per_text_rejects_a_text_without_two_tokens(tiny_llama_factory, word_tokenizer):
    model = tiny_llama_factory(len(word_tokenizer))
    with pytest.raises(ValueError, match="two tokens"):
        perplexity_per_text(model, word_tokenizer, ["cat"], max_tokens=8)


# --- the plot ----------------------------------------------------------------------------------


def test_plot_has_readable_explicit_colours():
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    ax = plot_before_after({"in": (8.0, 6.0), "out": (18.0, 17.5)})
    bars = ax.patches
    assert len(bars) == 4
    assert {matplotlib.colors.to_hex(b.get_facecolor()) for b in bars} == {BEFORE_COLOR.lower(), AFTER_COLOR.lower()}
    texts = [t for t in ax.texts]  # the value labels
    assert sorted(t.get_text() for t in texts) == ["17.50", "18.00", "6.00", "8.00"]
    for text in [*texts, ax.title, ax.yaxis.label]:
        assert sum(to_rgb(text.get_color())) < 1.5, "text must not be white or light"
    plt.close("all")


def test_plot_needs_data():
    with pytest.raises(ValueError):
        plot_before_after({})
