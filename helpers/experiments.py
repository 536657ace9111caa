"""Small measured experiments for the walkthrough's open questions (notebooks 13, 14 and 15).

Each question is answered by a few *short* training runs of the recipe the series teaches, so the
functions here reuse the tested pieces (:func:`helpers.modeling.load_model_and_tokenizer`,
:func:`helpers.training.add_lora`, :func:`helpers.training.build_trainer`,
:func:`helpers.evaluation.perplexity`) and add only what the questions need:

* :func:`short_run` - load, (LoRA or full fine-tuning), train a few steps, score held-out text, and
  report loss, perplexity, trainable parameters and memory (learning-rate and rank sweeps, notebook 13);
* :func:`check_not_verbatim`, :func:`recall` - fill-in prompts for made-up facts (notebook 14);
* :func:`long_sequences`, :func:`position_perplexity`, :func:`set_rope` - perplexity of long
  sequences before and past a RoPE model's trained context (notebook 15).
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from dataclasses import dataclass, field

from .modeling import input_device
from .profiles import CPU_SMOLLM2, Profile


def small_model_profile(profile: Profile) -> Profile:
    """Return the profile for experiments that need the *small* model on this run's device.

    Full fine-tuning and RoPE surgery need plain transformers weights (no 4-bit, no unsloth caches),
    so these experiments run the transformers branch with SmolLM2-135M (the offline default), on the
    profile's device. A profile whose model is already local (the embedded SmolLM2, or the random
    smoke model) keeps it. Everything else about the recipe (targets, rsLoRA, seed) comes from
    :data:`helpers.profiles.CPU_SMOLLM2`.
    """
    model_name = profile.model_name if profile.is_local_model else CPU_SMOLLM2.model_name
    return CPU_SMOLLM2.replace(
        name=f"{profile.name}/small",
        description=f"the small model for experiments, on {profile.device}",
        model_name=model_name,
        device=profile.device,
        dtype="float32" if profile.device == "cpu" else "bfloat16",
    )


def sweep_profile(profile: Profile, learning_rate: float | None = None, lora_r: int | None = None,
                  max_steps: int = 6, batch_size: int = 2, gradient_accumulation_steps: int = 1) -> Profile:
    """Return ``profile`` set up for one short run of a sweep.

    ``learning_rate`` replaces the adapters' rate and scales the embeddings' rate with it (the
    walkthrough's 10:1 ratio is kept); ``lora_r`` replaces the rank (``lora_alpha`` stays, and with
    rsLoRA the update is scaled by alpha/sqrt(r)). Raises ``ValueError`` for a non-positive rate,
    rank or step count.
    """
    if learning_rate is not None and not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
    if lora_r is not None and lora_r < 1:
        raise ValueError(f"lora_r must be at least 1, got {lora_r!r}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps!r}")
    changes = dict(max_steps=max_steps, per_device_train_batch_size=batch_size,
                   gradient_accumulation_steps=gradient_accumulation_steps, warmup_ratio=0.0)
    if learning_rate is not None:
        ratio = profile.embedding_learning_rate / profile.learning_rate
        changes.update(learning_rate=learning_rate, embedding_learning_rate=learning_rate * ratio)
    if lora_r is not None:
        changes["lora_r"] = lora_r
    return profile.replace(**changes)


@dataclass
class RunResult:
    """What one short run measured."""

    label: str
    learning_rate: float
    lora_r: int | None  # None for full fine-tuning
    steps: int
    losses: list[float]  # training loss per optimizer step
    perplexity: float | None  # held-out perplexity after training (None when no texts were given)
    trainable_parameters: int
    optimizer_state_gib: float  # bytes of the optimizer's state tensors (Adam's two moments), measured
    gradient_gib: float  # bytes of the gradients of the trainable parameters, measured after the last step
    peak_reserved_gib: float | None  # CUDA: torch.cuda.max_memory_reserved() during the run; None on CPU
    training_gib: float | None  # CUDA: peak reserved minus reserved at the start (the walkthrough's way)
    seconds: float
    extra: dict = field(default_factory=dict)


def tensor_gib(tensors) -> float:
    """Return the total size in GiB of the tensors in ``tensors`` (anything that is not a tensor is skipped)."""
    import torch

    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)) / 1024**3


def optimizer_state_gib(optimizer) -> float:
    """Return the size in GiB of every tensor the optimizer keeps as state (0 before the first step)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    return tensor_gib(t for state in optimizer.state.values() for t in state.values())


def short_run(profile: Profile, train_dataset, eval_texts: list[str] | None = None, *, label: str = "",
              full_finetune: bool = False, eval_max_tokens: int | None = None, model_and_tokenizer=None,
              after_load=None, text_dataset=None) -> tuple[RunResult, object, object]:
    """Train the profile's recipe for ``profile.max_steps`` steps and measure it.

    Loads a fresh model (or takes ``model_and_tokenizer``), calls ``after_load(model)`` if given (for
    a change such as RoPE scaling), adds LoRA unless ``full_finetune`` (then every weight trains, at
    ``profile.learning_rate``, the embeddings too), trains with :func:`helpers.training.build_trainer`
    on ``train_dataset`` (rows of ``input_ids``; on the unsloth branch, given ``text_dataset``, the
    stories with EOS, which it packs itself as notebook 05 does), and scores ``eval_texts`` with
    :func:`helpers.evaluation.perplexity`. Returns ``(RunResult, model, tokenizer)``.
    """
    import torch
    from transformers import PrinterCallback

    from .evaluation import perplexity
    from .modeling import load_model_and_tokenizer
    from .training import add_lora, build_trainer

    if full_finetune and profile.uses_unsloth:
        raise ValueError("full fine-tuning runs on the transformers branch: pass small_model_profile(profile)")
    if len(train_dataset) == 0:
        raise ValueError("train_dataset is empty: nothing to train on")
    started = time.perf_counter()
    cuda = profile.device == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, tokenizer = model_and_tokenizer or load_model_and_tokenizer(profile)
    if after_load is not None:
        after_load(model)
    if full_finetune:
        profile = profile.replace(embedding_learning_rate=profile.learning_rate)
        for param in model.parameters():
            param.requires_grad_(True)
    else:
        model = add_lora(model, profile)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    reserved_at_start = torch.cuda.memory_reserved() / 1024**3 if cuda else None
    with tempfile.TemporaryDirectory(prefix="cpt-run-") as output_dir:
        trainer = build_trainer(profile, model, tokenizer, train_dataset, output_dir=output_dir, disable_tqdm=True,
                                text_dataset=text_dataset)
        trainer.remove_callback(PrinterCallback)  # without tqdm, Trainer prints every log line; the result has them
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    state_gib = optimizer_state_gib(trainer.optimizer)
    grad_gib = tensor_gib(p.grad for p in model.parameters() if p.requires_grad)
    peak = torch.cuda.max_memory_reserved() / 1024**3 if cuda else None
    ppl = None
    if eval_texts:
        ppl = perplexity(model, tokenizer, eval_texts, max_tokens=eval_max_tokens or profile.eval_max_tokens,
                         progress=False)
    result = RunResult(
        label=label or (f"full, lr {profile.learning_rate:g}" if full_finetune
                        else f"LoRA r={profile.lora_r}, lr {profile.learning_rate:g}"),
        learning_rate=profile.learning_rate,
        lora_r=None if full_finetune else profile.lora_r,
        steps=trainer.state.global_step,
        losses=losses,
        perplexity=ppl,
        trainable_parameters=trainable,
        optimizer_state_gib=state_gib,
        gradient_gib=grad_gib,
        peak_reserved_gib=peak,
        training_gib=None if peak is None else peak - reserved_at_start,
        seconds=time.perf_counter() - started,
    )
    return result, model, tokenizer


# --- notebook 14: made-up facts -----------------------------------------------------------------


def check_not_verbatim(prompts: list[str], training_text: str) -> None:
    """Raise ``ValueError`` naming every prompt that occurs word for word in ``training_text``.

    Comparison ignores case and runs of whitespace, so a prompt cannot pass by a changed line break.
    A recall test on such a prompt would measure copying, not knowledge.
    """
    def norm(text: str) -> str:
        return re.sub(r"\s+", " ", text).strip().lower()

    haystack = norm(training_text)
    found = [p for p in prompts if norm(p) in haystack]
    if found:
        raise ValueError("these prompts occur verbatim in the training text; rephrase them: " + "; ".join(found))


def answer_logprob(model, tokenizer, prompt: str, answer: str) -> float:
    """Return the mean log-probability per token that ``model`` gives ``answer`` right after ``prompt``.

    The answer is tokenized as it follows the prompt (with its leading space), so the tokens are the
    ones generation would have to produce.
    """
    import torch

    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) == len(prompt_ids):
        raise ValueError(f"cannot split the answer {answer!r} from the prompt {prompt!r} at a token boundary")
    device = input_device(model)
    ids = torch.tensor([full_ids], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    log_probs = torch.log_softmax(logits[0, :-1], dim=-1)
    targets = ids[0, 1:]
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)[len(prompt_ids) - 1:]
    return picked.mean().item()


def recall(model, tokenizer, items: list[tuple[str, str]], max_new_tokens: int = 6) -> dict:
    """Ask ``model`` to complete each ``(prompt, answer)`` and score it.

    Greedy decoding of ``max_new_tokens``; a hit is a continuation whose first word (letters only,
    case ignored) equals the answer's first word. Returns ``{"hits": n, "total": n, "accuracy": ...,
    "mean_logprob": ..., "rows": [{"prompt", "answer", "completion", "hit", "logprob"}, ...]}``.
    """
    import torch

    if not items:
        raise ValueError("recall needs at least one (prompt, answer) pair")
    device = input_device(model)
    was_training = model.training
    model.eval()
    rows = []
    for prompt, answer in items:
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        completion = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        first = re.findall(r"[a-z]+", completion.lower())[:1]
        hit = bool(first) and first[0] == re.findall(r"[a-z]+", answer.lower())[0]
        rows.append({"prompt": prompt, "answer": answer.strip(), "completion": completion, "hit": hit,
                     "logprob": answer_logprob(model, tokenizer, prompt, answer)})
    if was_training:
        model.train()
    hits = sum(r["hit"] for r in rows)
    return {"hits": hits, "total": len(rows), "accuracy": hits / len(rows),
            "mean_logprob": sum(r["logprob"] for r in rows) / len(rows), "rows": rows}


# --- notebook 15: long context and RoPE -----------------------------------------------------------


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
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(stream) >= needed:
            break
    if len(stream) < needed:
        raise ValueError(f"the texts hold {len(stream)} tokens; {count} sequences of {length} need {needed}")
    return [stream[i * length:(i + 1) * length] for i in range(count)]


def position_perplexity(model, sequences: list[list[int]], boundary: int) -> dict:
    """Return perplexity of ``model`` on ``sequences``, split at token position ``boundary``.

    ``{"inside": ppl of the tokens predicted at positions 1..boundary-1, "beyond": ppl at positions
    boundary.., "all": ...}``: a model whose trained context ends at ``boundary`` shows its trouble in
    "beyond". Each sequence is scored on its own (batch of one, no padding). Raises ``ValueError``
    when ``boundary`` does not fall inside the sequences.
    """
    import torch

    if not sequences:
        raise ValueError("no sequences to score")
    shortest = min(len(s) for s in sequences)
    if not 1 < boundary < shortest:
        raise ValueError(f"boundary {boundary} must lie strictly inside the sequences (shortest: {shortest} tokens)")
    device = input_device(model)
    was_training = model.training
    model.eval()
    inside, beyond, n_in, n_out = 0.0, 0.0, 0, 0
    with torch.no_grad():
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
    import torch

    if not rope_theta > 0 or not linear_factor > 0:
        raise ValueError(f"rope_theta and linear_factor must be positive, got {rope_theta}, {linear_factor}")
    for module in rotary_modules(model):
        for name in _inv_freq_names(module, layer_type):
            current = getattr(module, name)
            dim = 2 * current.numel()
            inv_freq = 1.0 / (rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)) / linear_factor
            current.copy_(inv_freq.to(current.device))
            setattr(module, name.replace("inv_freq", "original_inv_freq"), inv_freq.clone().to(current.device))


# --- notebook 05: which embedding rows get a gradient? ---------------------------------------------


def embedding_gradient_rows(model, input_ids, labels=None) -> dict:
    """Return how many rows of the input and the output embedding get a non-zero gradient from one
    batch: ``{"embed_tokens": n, "lm_head": n, "vocabulary": V, "distinct_input_tokens": n}``.

    One forward and backward pass on ``input_ids`` (labels = the inputs, as in CPT). The input side's
    gradient is measured at the embedding layer's output and scattered back to the rows of the tokens
    that were looked up, which is exactly the gradient ``embed_tokens`` receives; the output side is
    the gradient of the ``lm_head`` weight, minus the input side's share when the two matrices are tied
    (one tensor). Gradients are zeroed afterwards, so a trainer can start from this model unchanged.
    """
    import torch

    from .training import _embedding_copies

    embedding = model.get_input_embeddings()
    copies = _embedding_copies(model)
    head = next((p for n, p in copies.items() if "lm_head" in n), None)
    embed = next((p for n, p in copies.items() if "embed_tokens" in n), None)
    # the input embeddings' device (helpers.modeling.input_device), not ``model.device``: unsloth may
    # have moved the frozen original embeddings to the CPU while the lookups run on the GPU copy
    device = input_device(model)
    input_ids = input_ids.to(device)
    labels = None if labels is None else labels.to(device)
    captured = {}

    def keep_output(module, args, output):
        output.retain_grad()
        captured["output"] = output

    model.zero_grad(set_to_none=True)
    hook = embedding.register_forward_hook(keep_output)
    try:
        loss = model(input_ids=input_ids, labels=input_ids if labels is None else labels).loss
        loss.backward()
    finally:
        hook.remove()
    out_grad = captured["output"].grad.float()
    if head is None or embed is None or head.grad is None:
        model.zero_grad(set_to_none=True)
        raise ValueError("embed_tokens and lm_head must both be trainable (target_modules / modules_to_save)")
    vocab, hidden = head.shape
    input_side = torch.zeros(vocab, hidden, device=out_grad.device)
    input_side.index_add_(0, input_ids.reshape(-1).to(out_grad.device), out_grad.reshape(-1, hidden))
    head_grad = head.grad.float()
    if head is embed:  # tied: one matrix collects both gradients
        head_grad = head_grad - input_side
    result = {
        "embed_tokens": int((input_side.abs().sum(dim=1) > 0).sum().item()),
        "lm_head": int((head_grad.abs().sum(dim=1) > 0).sum().item()),
        "vocabulary": int(vocab),
        "distinct_input_tokens": int(input_ids.unique().numel()),
        "tied": head is embed,
    }
    model.zero_grad(set_to_none=True)
    return result
