"""Forgetting: does continued pre-training cost the model some of what it already knew?

Training on one domain moves the weights towards that domain, and nothing in the loss protects
what the model knew about everything else. The standard way to see this is to measure perplexity
on *out-of-domain* text before and after training, next to the in-domain drop. This module
provides the out-of-domain text and a plot; the perplexity itself is :func:`helpers.evaluation.perplexity`.

The out-of-domain text ships with every Python: ``pydoc_data.topics.topics``, the sections of the
language reference that ``help("assert")`` prints. It is general technical English (with some code),
nothing like children's stories, needs no download, and is selected deterministically.
"""

from __future__ import annotations

import math

from ..evaluation import general_english_passages, perplexity  # noqa: F401  (general_english_passages: re-exported)

# Colours that read on light and on dark notebook themes (mid-tone, never white text).
BEFORE_COLOR = "#4C72B0"  # blue
AFTER_COLOR = "#DD8452"  # orange


def perplexity_per_text(model, tokenizer, texts: list[str], max_tokens: int, cpu_bf16: bool = False) -> list[dict]:
    """Return, for each text, ``{"perplexity", "tokens"}``: its own perplexity (cut to ``max_tokens``
    tokens, as :func:`helpers.evaluation.perplexity` does) and the number of tokens it predicts.

    One text at a time, so that later analysis can say *which* texts got worse; :func:`pooled` turns
    the list back into the token-weighted perplexity of all texts together. ``cpu_bf16`` as in
    :func:`helpers.evaluation.perplexity`.
    """
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        if len(ids) < 2:
            raise ValueError("every text needs at least two tokens")
        ppl = perplexity(model, tokenizer, [text], max_tokens=max_tokens, batch_size=1, progress=False,
                         cpu_bf16=cpu_bf16)
        rows.append({"perplexity": ppl, "tokens": len(ids) - 1})
    return rows


def pooled(rows: list[dict]) -> float:
    """Return the token-weighted perplexity of :func:`perplexity_per_text` rows:
    ``exp(sum(tokens * ln perplexity) / sum(tokens))``, the same number ``perplexity`` gives for
    all the texts in one call."""
    if not rows:
        raise ValueError("no rows to pool")
    total = sum(r["tokens"] for r in rows)
    return math.exp(sum(r["tokens"] * math.log(r["perplexity"]) for r in rows) / total)


def relative_change(before: float, after: float) -> float:
    """Return ``after / before - 1``: negative when perplexity fell, positive when it rose."""
    if before <= 0:
        raise ValueError("perplexity must be positive")
    return after / before - 1.0


def plot_before_after(results: dict[str, tuple[float, float]], ax=None, title: str = "Perplexity before and after CPT"):
    """Draw grouped bars of perplexity before and after training, one group per text kind.

    ``results`` maps a label (e.g. ``"in-domain (TinyStories)"``) to ``(before, after)``. Bars carry
    their values; colours are explicit mid-tones and text is dark on the figure's own light
    background, so the chart reads in light and dark notebook themes. Returns the Axes.
    """
    import matplotlib.pyplot as plt  # deferred: heavy

    if not results:
        raise ValueError("nothing to plot")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.8))
    labels = list(results)
    positions = range(len(labels))
    width = 0.38
    for offset, index, name, color in ((-width / 2, 0, "before CPT", BEFORE_COLOR), (width / 2, 1, "after CPT", AFTER_COLOR)):
        values = [results[label][index] for label in labels]
        bars = ax.bar([p + offset for p in positions], values, width, label=name, color=color, edgecolor="#333333")
        ax.bar_label(bars, fmt="%.2f", padding=2, color="#222222", fontsize=9)
    ax.set_xticks(list(positions), labels)
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(title)
    ax.margins(y=0.15)
    ax.legend()
    return ax
