"""Training speed of a batching scheme (padded rows vs packed blocks): real tokens per second, and the loss.

This module packs nothing (:mod:`helpers.data` does); it *measures* how fast each kind of rows trains.

Notebook ``02_data_prep`` explains the two ways of turning documents into rectangular batches;
:mod:`helpers.data` builds both (:func:`helpers.data.truncate_rows`, :func:`helpers.data.pack_blocks`).
:func:`measure_training_speed` trains a few optimizer steps on either kind of rows with the same
collator the plain trainer uses (``DataCollatorForLanguageModeling``, which pads each batch to its
longest row and masks the padding out of the loss), and counts only real tokens, so the two numbers
are comparable: padding costs compute but teaches nothing.
"""

from __future__ import annotations

import random
import statistics
import time

from ..modeling import cpu_bf16_autocast, input_device
from ..training import embedding_param_groups
from .throughput import padding_mask


def measure_training_speed(model, tokenizer, settings: dict[str, list[list[int]]], *, batch_size: int,
                           steps: int, learning_rate: float, embedding_learning_rate: float, seed: int = 0,
                           warmup_steps: int = 1, collators: dict | None = None, cpu_bf16: bool = False) -> dict[str, dict]:
    """Train a few optimizer steps on each setting's rows and return their speed and loss.

    ``settings`` maps a name (e.g. ``"padded rows"``) to its token rows. For each setting the rows are
    shuffled with ``seed`` and taken ``batch_size`` at a time; each batch goes through
    ``DataCollatorForLanguageModeling(mlm=False)`` (pad to the longest row, PAD masked out of the
    labels), a forward and backward pass, and one AdamW step (fused into one kernel on a CPU, as the
    CPU profile's ``adamw_torch_fused``) with the embedding learning rate split of
    :func:`helpers.training.embedding_param_groups`. ``collators`` may give a setting its own collator
    instead (e.g. :class:`helpers.data.PackedRowsCollator`, which keeps packed documents apart); a
    batch without a 2-D ``attention_mask`` counts every position as real. ``cpu_bf16=True`` runs the
    forward passes under bf16 autocast on a CPU with bf16 in hardware, as the series' CPU training
    does (:func:`helpers.modeling.cpu_bf16_autocast`; the weights and their updates stay fp32).

    Fair timing on a shared machine: the settings take turns step by step (A, B, A, B, ...), so a
    slow moment hits all of them alike. Each setting keeps its own copy of the trainable weights and
    its own optimizer, swapped in before its step (outside the timed region), so each follows its own
    training run from the same start; the model's trainable weights are restored at the end. The
    first ``warmup_steps`` of each setting (first-call allocations) are trained but not timed.

    Returns, per setting, ``{"steps", "batch_size", "real_tokens", "padded_tokens", "padding_share",
    "seconds", "real_tokens_per_s", "step_rates", "mean_loss", "losses"}`` over the timed steps.
    ``real_tokens_per_s`` is the *median* of the per-step rates (real tokens / step time): one step
    stalled by other work on the machine does not decide the comparison. Raises ``ValueError`` when a
    setting has too few rows or the model nothing to train.
    """
    import torch  # deferred: heavy
    from transformers import DataCollatorForLanguageModeling  # deferred: heavy

    if not settings:
        raise ValueError("no settings to measure")
    if batch_size < 1 or steps < 1 or warmup_steps < 0:
        raise ValueError("batch_size and steps must be at least 1, warmup_steps at least 0")
    needed = (warmup_steps + steps) * batch_size
    batches = {}
    for name, rows in settings.items():
        if len(rows) < needed:
            raise ValueError(f"{name}: {len(rows)} rows are too few for {warmup_steps + steps} steps of "
                             f"{batch_size}; need {needed}")
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        batches[name] = [[list(rows[i]) for i in order[s * batch_size:(s + 1) * batch_size]]
                         for s in range(warmup_steps + steps)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    start = [p.detach().clone() for p in trainable]
    weights = {name: [t.clone() for t in start] for name in settings}
    device = input_device(model)
    fused = True if device.type == "cpu" else None  # on a CPU the one-kernel AdamW the CPU profile trains with
    optimizers = {name: torch.optim.AdamW(embedding_param_groups(model, learning_rate, embedding_learning_rate, 0.0),
                                          fused=fused)
                  for name in settings}
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False)
    results = {name: {"steps": steps, "batch_size": batch_size, "real_tokens": 0, "padded_tokens": 0,
                      "seconds": 0.0, "losses": [], "step_rates": []} for name in settings}
    was_training = model.training
    model.train()
    try:
        for step in range(warmup_steps + steps):
            for name in settings:
                with torch.no_grad():
                    for p, w in zip(trainable, weights[name], strict=True):
                        p.copy_(w)
                collate = (collators or {}).get(name, collator)
                batch = {k: v.to(device) for k, v in collate([{"input_ids": r} for r in batches[name][step]]).items()}
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                with cpu_bf16_autocast(model, cpu_bf16):
                    loss = model(**batch).loss
                loss.backward()
                optimizers[name].step()
                optimizers[name].zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - started
                with torch.no_grad():
                    for p, w in zip(trainable, weights[name], strict=True):
                        w.copy_(p)
                if step >= warmup_steps:
                    r = results[name]
                    mask = padding_mask(batch.get("attention_mask"))
                    positions = int(batch["input_ids"].numel())
                    real = int(mask.sum()) if mask is not None else positions
                    r["seconds"] += elapsed
                    r["real_tokens"] += real
                    r["step_rates"].append(real / elapsed)
                    r["padded_tokens"] += positions
                    r["losses"].append(float(loss.detach()))
    finally:
        with torch.no_grad():
            for p, w in zip(trainable, start, strict=True):
                p.copy_(w)
        model.train(was_training)
    for r in results.values():
        r["padding_share"] = 1 - r["real_tokens"] / r["padded_tokens"]
        r["real_tokens_per_s"] = statistics.median(r["step_rates"])
        r["mean_loss"] = sum(r["losses"]) / len(r["losses"])
    return results


def format_comparison(results: dict[str, dict]) -> str:
    """Return a small text table of :func:`measure_training_speed` results, one line per setting,
    with the speed-up of each over the first one."""
    names = list(results)
    if not names:
        raise ValueError("no results to format")
    base = results[names[0]]["real_tokens_per_s"]
    lines = [f"{'packing vs padding':<22}{'real tok/s':>11}{'speed-up':>10}{'padding':>9}{'real tokens':>13}{'loss':>8}"]
    for name in names:
        r = results[name]
        lines.append(f"{name:<22}{r['real_tokens_per_s']:>11.1f}{r['real_tokens_per_s'] / base:>9.2f}x"
                     f"{r['padding_share']:>9.1%}{r['real_tokens']:>13d}{r['mean_loss']:>8.3f}")
    return "\n".join(lines)
