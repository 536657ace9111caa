"""Held-out perplexity: how surprised the model is by text it was not trained on.

Out-of-domain text for the same measurement: :func:`general_english_passages`, the help topics that
ship with every Python (technical English, nothing like children's stories, no download).

Perplexity is ``exp(mean negative log-likelihood per predicted token)``. A model that assigned
probability 1/k to every correct next token would have perplexity k, so lower is better.
"""

from __future__ import annotations

import math
from pydoc_data.topics import topics

from .modeling import cpu_bf16_autocast, input_device
from .support.progress import progress_bar


def text_losses(model, tokenizer, texts: list[str], max_tokens: int = 512, batch_size: int = 4,
                progress: bool = True, cpu_bf16: bool = False) -> list[dict]:
    """Return, for each text in order, ``{"nll": summed negative log-likelihood, "tokens": predicted
    tokens}``: the pieces of a perplexity, kept per text so that an interval can be drawn over texts.

    Each text is tokenized (no special tokens added, so the number does not depend on a BOS
    convention), cut to ``max_tokens``, and scored in batches of texts of similar length (sorted by
    length, so that little compute goes to padding); padding is excluded. ``cpu_bf16=True`` (notebooks
    pass the profile's ``cpu_bf16``) computes the forward pass under bf16 autocast on a CPU that has
    bf16 in hardware, as the series' CPU training does (:func:`helpers.modeling.cpu_bf16_autocast`):
    about 1.5x faster there, and the perplexity moves in its fourth digit; elsewhere it changes nothing.
    Raises ``ValueError`` when a text yields fewer than two tokens.
    """
    import torch  # deferred: heavy

    # max_tokens tokens fit in far fewer than 32 * max_tokens characters: cutting the text first keeps a long
    # document from being tokenized whole (and the tokenizer from warning about a length the model never sees)
    encoded = [tokenizer(t[: 32 * max_tokens], add_special_tokens=False, split_special_tokens=True)["input_ids"][:max_tokens]
               for t in texts]  # special-token strings in a text are scored as text
    if any(len(ids) < 2 for ids in encoded):
        raise ValueError("every text needs at least two tokens to be scored")
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    device = input_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows: list[dict | None] = [None] * len(encoded)
    was_training = model.training
    model.eval()
    batches = range(0, len(order), batch_size)
    with torch.no_grad(), cpu_bf16_autocast(model, cpu_bf16):
        for start in progress_bar(batches, desc="Perplexity", enabled=progress):
            chunk = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                input_ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
            keep = mask[:, 1:].bool()
            for row, i in enumerate(chunk):
                rows[i] = {"nll": nll[row][keep[row]].sum().item(), "tokens": int(keep[row].sum().item())}
    if was_training:
        model.train()
    return rows


def pooled_perplexity(rows: list[dict]) -> float:
    """Return the token-weighted perplexity of :func:`text_losses` rows: ``exp(sum nll / sum tokens)``."""
    if not rows:
        raise ValueError("no texts to pool")
    return math.exp(sum(r["nll"] for r in rows) / sum(r["tokens"] for r in rows))


def perplexity_interval(rows: list[dict], confidence: float = 0.95, resamples: int = 2000,
                        seed: int = 3407) -> tuple[float, float, float]:
    """Return ``(perplexity, low, high)``: the pooled perplexity of :func:`text_losses` rows and a
    percentile bootstrap interval over the texts (texts drawn with replacement ``resamples`` times,
    seeded), which says how much the number depends on which texts happened to be held out."""
    import random

    if len(rows) < 2:
        raise ValueError("an interval needs at least two texts")
    generator = random.Random(seed)
    draws = sorted(pooled_perplexity([rows[generator.randrange(len(rows))] for _ in rows]) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return pooled_perplexity(rows), draws[int(tail * resamples)], draws[min(resamples - 1, int((1 - tail) * resamples))]


def perplexity(model, tokenizer, texts: list[str], max_tokens: int = 512, batch_size: int = 4,
               progress: bool = True, cpu_bf16: bool = False) -> float:
    """Return the token-weighted perplexity of ``model`` over ``texts`` (:func:`text_losses`, pooled);
    texts shorter than two tokens are skipped. Raises ``ValueError`` when no text yields two tokens."""
    kept = [t for t in texts if len(tokenizer(t[: 32 * max_tokens], add_special_tokens=False)["input_ids"]) >= 2]
    if not kept:
        raise ValueError("perplexity needs at least one text of two or more tokens")
    return pooled_perplexity(text_losses(model, tokenizer, kept, max_tokens, batch_size, progress, cpu_bf16))


def repeated_ngram_share(text: str, n: int = 4) -> float:
    """Return the share of the word ``n``-grams of ``text`` that already occurred earlier in it: 0 for a
    text that never repeats itself, near 1 for a greedy loop ("I will help you. I will help you. ...")."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    seen, repeated = set(), 0
    for gram in grams:
        repeated += gram in seen
        seen.add(gram)
    return repeated / max(1, len(grams))


def story_ending(text: str, stopped_at_eos: bool) -> str:
    """Return how a generated story ends: ``"EOS"`` when the model emitted its end-of-sequence token,
    ``"sentence end"`` when the text ends with ., ! or ? (a closing quote allowed), else ``"cut off"``."""
    if stopped_at_eos:
        return "EOS"
    return "sentence end" if text.rstrip().rstrip("\"'”’").endswith((".", "!", "?")) else "cut off"


def general_english_passages(count: int = 16, min_chars: int = 1200) -> list[tuple[str, str]]:
    """Return ``count`` passages of general technical English as ``(topic, text)`` pairs.

    The passages are the help topics of the running Python (``pydoc_data.topics.topics``), sorted by
    topic name, keeping only those of at least ``min_chars`` characters (so that each can fill an
    evaluation window of a few hundred tokens), and the first ``count`` of them: the same selection on
    every run of the same Python version. Cutting to a token budget is left to the perplexity function
    (its ``max_tokens``). Raises ``ValueError`` for a ``count`` below 1 or above the number available.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    eligible = [(name, topics[name].strip()) for name in sorted(topics) if len(topics[name].strip()) >= min_chars]
    if count > len(eligible):
        raise ValueError(
            f"only {len(eligible)} help topics have at least {min_chars} characters; ask for fewer or lower min_chars"
        )
    return eligible[:count]
