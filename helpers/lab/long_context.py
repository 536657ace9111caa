"""Perplexity of long sequences before and past a RoPE model's trained context, and RoPE surgery
(notebook 09).
"""

from __future__ import annotations

import math

from ..modeling import cpu_bf16_autocast, input_device


def long_sequences(texts: list[str], tokenizer, length: int, count: int) -> list[list[int]]:
    """Return ``count`` sequences of exactly ``length`` tokens cut from ``texts`` joined by EOS.

    The texts are tokenized in order, each followed by the tokenizer's EOS, and the stream is cut
    into consecutive blocks. Raises ``ValueError`` when the texts hold fewer than
    ``count * length`` tokens (the message says how many there are).
    """
    if length < 2 or count < 1:
        raise ValueError(f"need length >= 2 and count >= 1, got length={length}, count={count}")
    needed = length * count
    stream: list[int] = []
    for text in texts:
        # special-token strings inside the text stay text; only the appended EOS ends a document
        stream += tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
        if len(stream) >= needed:
            break
    if len(stream) < needed:
        raise ValueError(f"the texts hold {len(stream)} tokens; {count} sequences of {length} need {needed}")
    return [stream[i * length:(i + 1) * length] for i in range(count)]


def position_perplexity(model, sequences: list[list[int]], boundary: int, cpu_bf16: bool = False) -> dict:
    """Return perplexity of ``model`` on ``sequences``, split at token position ``boundary``.

    ``{"inside": ppl of the tokens predicted at positions 1..boundary-1, "beyond": ppl at positions
    boundary.., "all": ...}``: a model whose trained context ends at ``boundary`` shows its trouble in
    "beyond". Each sequence is scored on its own (batch of one, no padding); ``cpu_bf16`` as in
    :func:`helpers.evaluation.perplexity`. Raises ``ValueError`` when ``boundary`` does not fall
    inside the sequences.
    """
    import torch  # deferred: heavy

    if not sequences:
        raise ValueError("no sequences to score")
    shortest = min(len(s) for s in sequences)
    if not 1 < boundary < shortest:
        raise ValueError(f"boundary {boundary} must lie strictly inside the sequences (shortest: {shortest} tokens)")
    device = input_device(model)
    was_training = model.training
    model.eval()
    inside, beyond, n_in, n_out = 0.0, 0.0, 0, 0
    with torch.no_grad(), cpu_bf16_autocast(model, cpu_bf16):
        for ids in sequences:
            x = torch.tensor([ids], device=device)
            logits = model(input_ids=x).logits.float()[0, :-1]
            nll = -torch.log_softmax(logits, dim=-1).gather(-1, x[0, 1:].unsqueeze(-1)).squeeze(-1)
            # nll[i] is the loss of predicting token i+1, made at position i+1
            inside += nll[: boundary - 1].sum().item()
            beyond += nll[boundary - 1:].sum().item()
            n_in += boundary - 1
            n_out += len(ids) - boundary
    if was_training:
        model.train()
    return {"inside": math.exp(inside / n_in), "beyond": math.exp(beyond / n_out),
            "all": math.exp((inside + beyond) / (n_in + n_out))}


def rope_base(config, layer_type: str = "full_attention") -> float:
    """Return the RoPE base (``rope_theta``) of ``config``.

    A model with one RoPE per layer type (Gemma 3: sliding-window layers at base 10,000, full-attention
    layers at 1,000,000, ``config.rope_parameters`` keyed by layer type) gives that of ``layer_type``,
    by default the full-attention layers: only they see distances longer than a window, so only their
    RoPE bounds the context. Raises ``ValueError`` for a config without a RoPE base.
    """
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if isinstance(rope.get(layer_type), dict):
        rope = rope[layer_type]
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError(f"{type(config).__name__} has no RoPE base (rope_theta) for {layer_type!r}: is this a RoPE model?")
    return float(theta)


def _inv_freq_names(module, layer_type: str) -> list[str] | None:
    """Names of ``module``'s inverse-frequency buffers that :func:`set_rope` changes, or None when the
    module is not a rotary embedding: ``inv_freq`` (one RoPE for all layers), or
    ``<layer_type>_inv_freq`` for a module with one RoPE per layer type (Gemma 3)."""
    if hasattr(module, "inv_freq") and hasattr(module, "original_inv_freq"):
        return ["inv_freq"]
    typed = [name[: -len("_inv_freq")] for name, _ in module.named_buffers(recurse=False)
             if name.endswith("_inv_freq") and not name.endswith("original_inv_freq")]
    if not typed:
        return None
    if layer_type not in typed:
        raise ValueError(f"this model's rotary embedding has one RoPE per layer type ({', '.join(typed)}); "
                         f"layer_type={layer_type!r} is not one of them")
    return [f"{layer_type}_inv_freq"]


def rotary_modules(model) -> list:
    """Return the rotary-embedding modules of ``model`` (those holding an ``inv_freq`` buffer, or one
    ``<layer type>_inv_freq`` buffer per layer type as in Gemma 3)."""
    found = [m for m in model.modules() if (hasattr(m, "inv_freq") and hasattr(m, "original_inv_freq"))
             or any(n.endswith("_inv_freq") and not n.endswith("original_inv_freq")
                    for n, _ in m.named_buffers(recurse=False))]
    if not found:
        raise ValueError("no rotary embedding (a module with inv_freq) found: is this a RoPE model on the "
                         "transformers branch?")
    return found


def set_rope(model, rope_theta: float, linear_factor: float = 1.0, layer_type: str = "full_attention") -> None:
    """Set the RoPE frequencies of every rotary module of ``model`` in place.

    ``inv_freq[i] = 1 / (rope_theta ** (2i / head_dim)) / linear_factor``: ``rope_theta`` sets the
    base; ``linear_factor`` > 1 is linear scaling (position interpolation: position p is rotated as
    p / factor). A model with one RoPE per layer type (Gemma 3) gets the change on ``layer_type``
    only, by default its full-attention layers (see :func:`rope_base`); its sliding-window layers
    never see a distance beyond their window and keep their own RoPE. Raises ``ValueError`` for a
    non-positive base or factor, a model without RoPE, or a layer type the model does not have.
    """
    import torch  # deferred: heavy

    if not rope_theta > 0 or not linear_factor > 0:
        raise ValueError(f"rope_theta and linear_factor must be positive, got {rope_theta}, {linear_factor}")
    for module in rotary_modules(model):
        for name in _inv_freq_names(module, layer_type):
            current = getattr(module, name)
            dim = 2 * current.numel()
            inv_freq = 1.0 / (rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)) / linear_factor
            current.copy_(inv_freq.to(current.device))
            setattr(module, name.replace("inv_freq", "original_inv_freq"), inv_freq.clone().to(current.device))
