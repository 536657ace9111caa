"""Short training runs of the recipe the series teaches, for the experiments of notebooks 07, 09 and 10.

Each question there is answered by a few *short* runs, so the functions here reuse the tested pieces
(:func:`helpers.modeling.load_model_and_tokenizer`, :func:`helpers.training.add_lora`,
:func:`helpers.training.build_trainer`, :func:`helpers.evaluation.perplexity`) and add only what the
questions need: :func:`short_run` loads, trains (LoRA or full fine-tuning) a few steps, scores held-out
text, and reports loss, perplexity, trainable parameters and memory (learning-rate and rank sweeps,
notebook 10). The fill-in prompts of notebook 07 are in :mod:`helpers.lab.new_knowledge`, the long
sequences and RoPE surgery of notebook 09 in :mod:`helpers.lab.long_context`.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field

from ..evaluation import perplexity
from ..modeling import load_model_and_tokenizer
from ..profiles import CPU_SMOLLM2, Profile
from ..training import add_lora, build_trainer


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
        cpu_bf16=profile.cpu_bf16,  # CPT_CPU_BF16=0 holds for the experiments too
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


def untrained_copy(profile: Profile, model, tokenizer):
    """Return the ``model_and_tokenizer`` argument of :func:`short_run` for one more run from the same
    untrained model: on the transformers branch ``(copy of model, tokenizer)``, a copy in memory (a
    tenth of a second for SmolLM2, against seconds to load it again; ``model`` itself stays untrained);
    on the unsloth branch ``None``, so that :func:`short_run` loads a fresh model (a 4-bit model
    cannot be copied)."""
    import copy  # deferred: only here

    if profile.uses_unsloth:
        return None
    return copy.deepcopy(model), tokenizer


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
    import torch  # deferred: heavy

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
    :func:`helpers.evaluation.perplexity` (in bf16 on a CPU when the profile's ``cpu_bf16`` says so,
    as the training computed). Returns ``(RunResult, model, tokenizer)``.
    """
    import torch  # deferred: heavy
    from transformers import PrinterCallback  # deferred: heavy

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
                         progress=False, cpu_bf16=profile.cpu_bf16)
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


# --- notebook 07: made-up facts -----------------------------------------------------------------


# --- notebook 09: long context and RoPE -----------------------------------------------------------


# --- notebook 05: which embedding rows get a gradient? ---------------------------------------------


