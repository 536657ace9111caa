"""Held-out perplexity: how surprised the model is by text it was not trained on.

Perplexity is ``exp(mean negative log-likelihood per predicted token)``. A model that assigned
probability 1/k to every correct next token would have perplexity k, so lower is better.
"""

from __future__ import annotations

import math

from .modeling import cpu_bf16_autocast, input_device
from .support.progress import progress_bar


def perplexity(model, tokenizer, texts: list[str], max_tokens: int = 512, batch_size: int = 4,
               progress: bool = True, cpu_bf16: bool = False) -> float:
    """Return the token-weighted perplexity of ``model`` over ``texts``.

    Each text is tokenized (no special tokens added, so the number does not depend on a BOS
    convention), cut to ``max_tokens``, and scored in batches of texts of similar length (sorted by
    length, so that little compute goes to padding); padding is excluded from the average.
    ``cpu_bf16=True`` (notebooks pass the profile's ``cpu_bf16``) computes the forward pass under bf16
    autocast on a CPU that has bf16 in hardware, as the series' CPU training does
    (:func:`helpers.modeling.cpu_bf16_autocast`): about 1.5x faster there, and the perplexity moves
    in its fourth digit; elsewhere it changes nothing. Raises ``ValueError`` when no text yields at
    least two tokens.
    """
    import torch  # deferred: heavy

    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens] for t in texts]
    encoded = sorted((ids for ids in encoded if len(ids) >= 2), key=len)  # similar lengths share a batch
    if not encoded:
        raise ValueError("perplexity needs at least one text of two or more tokens")
    device = input_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    batches = range(0, len(encoded), batch_size)
    with torch.no_grad(), cpu_bf16_autocast(model, cpu_bf16):
        for start in progress_bar(batches, desc="Perplexity", enabled=progress):
            chunk = encoded[start : start + batch_size]
            width = max(len(ids) for ids in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, ids in enumerate(chunk):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
            keep = mask[:, 1:].bool()
            total_nll += nll[keep].sum().item()
            total_tokens += int(keep.sum().item())
    if was_training:
        model.train()
    return math.exp(total_nll / total_tokens)
