"""Loading the model: the embedded offline default, the hub, and the unsloth / transformers twins.

Notebook ``01_load_quantized_model`` walks through these steps one by one; later notebooks call
:func:`load_model_and_tokenizer`, which does the same.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import (
    adapter_errors_explained,
    check_adapter_unchanged,
    check_model_weights_content,
    disk_full_explained,
    model_errors_explained,
)
from .profiles import Profile, check_model_folder
from .support.gguf import embedded_model_dir, gguf_model_dir, smoke_model_dir


def input_device(model):
    """Return the device the model's input ids must be on: that of its input embedding weights
    (the trainable copy, when ``embed_tokens`` is trained through PEFT's ``modules_to_save``).

    Not ``model.device`` nor the first parameter's device: with gradient checkpointing "unsloth" and
    trained embeddings, unsloth moves the frozen original ``embed_tokens`` to a memory-mapped file on
    the CPU ("Offloading input_embeddings to disk"), so those say "cpu" while every lookup runs on the
    GPU copy. Falls back to the first trainable, then the first parameter's device.
    """
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if weight is not None and weight.device.type != "meta":
        return weight.device
    parameters = list(model.parameters())
    if not parameters:
        raise ValueError("the model has no parameters, so it has no device to put inputs on")
    return next((p.device for p in parameters if p.requires_grad), parameters[0].device)


def cpu_computes_bf16() -> bool:
    """Return True when this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX), where torch's
    bf16 matrix products run about twice as fast as fp32 ones; False otherwise (bf16 would be emulated
    there, and slower than fp32). torch's probes for it have private names, so a missing one reads False."""
    import torch  # deferred: heavy

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_bf16_autocast(model, enabled: bool):
    """Return the context manager a forward pass of ``model`` should run in: ``torch.autocast`` to bf16
    when ``enabled`` and the model sits on a CPU that computes bf16 in hardware (the matrix products
    then run in bf16, as the series' CPU training does, while the weights stay fp32); otherwise one that
    changes nothing (a GPU model computes in its own dtype already)."""
    import contextlib

    import torch  # deferred: heavy

    if enabled and input_device(model).type == "cpu" and cpu_computes_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_model_source(profile: Profile) -> str:
    """Return what ``from_pretrained`` should load for this profile: a hub id or a local folder."""
    if profile.is_embedded_model:
        return str(embedded_model_dir())
    if profile.is_smoke_model:
        return str(smoke_model_dir(profile.seed))
    if profile.is_gguf_model:
        return str(gguf_model_dir(profile.model_name))
    if profile.is_local_path_model:
        check_model_folder(Path(profile.model_name), profile.own_model)
        check_model_weights_content(Path(profile.model_name), profile.own_model)  # present but zero-filled
    return profile.model_name


class UnknownArchitectureError(ValueError):
    """transformers does not know the model's architecture, or it is not a causal language model."""


@contextmanager
def architecture_errors_explained(model_label: str) -> Iterator[None]:
    """Re-raise transformers' "unrecognized architecture" errors of the ``with`` block as
    :class:`UnknownArchitectureError` with what to do; other errors pass through unchanged."""
    try:
        yield
    except (ValueError, KeyError) as err:
        text = str(err)
        if "does not recognize this architecture" in text or "Unrecognized model" in text:
            raise UnknownArchitectureError(
                f"Cannot load {model_label}: transformers {_version('transformers')} does not know its architecture "
                "(the model_type in config.json). Check config.json's model_type; a model newer than this "
                "transformers needs a newer release (pip install -U transformers, then re-run the tests), and a "
                "model that ships its own modelling code cannot be used here (this series never sets "
                "trust_remote_code)."
            ) from err
        if "Unrecognized configuration class" in text:
            raise UnknownArchitectureError(
                f"Cannot load {model_label}: its architecture is known to transformers, but not as a causal "
                "language model (AutoModelForCausalLM has no class for it; e.g. an encoder such as BERT or an "
                "encoder-decoder such as T5). Continued pre-training here needs a decoder-only model "
                "(Llama, Mistral, Qwen2, Gemma, SmolLM, ...)."
            ) from err
        raise


# encoders that AutoModelForCausalLM still loads (as e.g. BertLMHeadModel): they train, then fail late
# with a misleading "no trainable copy found" (issue 31, case 10)
ENCODER_MODEL_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2",
    "camembert", "mpnet", "ernie", "modernbert", "xlm", "flaubert", "megatron-bert", "rembert", "roformer",
})


def refuse_non_causal(config, model_label: str) -> None:
    """Raise :class:`UnknownArchitectureError` before any weights load when ``config`` is not a
    decoder-only model: an encoder (BERT and its kin, unless configured as a decoder) or an
    encoder-decoder (T5, BART)."""
    model_type = getattr(config, "model_type", "")
    encoder = model_type in ENCODER_MODEL_TYPES and not getattr(config, "is_decoder", False)
    if encoder or getattr(config, "is_encoder_decoder", False):
        kind = "an encoder" if encoder else "an encoder-decoder"
        raise UnknownArchitectureError(
            f"Cannot train {model_label}: its config.json says model_type '{model_type}', {kind} model, "
            "not as a causal language model (decoder-only) that continued pre-training here needs (Llama, "
            "Mistral, Qwen2, Gemma, SmolLM, ...): set CPT_MODEL to such a model."
        )


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def resolve_dtype(profile: Profile):
    """Return the torch dtype to load with: the profile's, or auto (bf16 if the GPU supports it,
    else fp16 on a GPU, fp32 on the CPU)."""
    import torch  # deferred: heavy

    if profile.dtype:
        return getattr(torch, profile.dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model_and_tokenizer(profile: Profile):
    """Load the profile's model and tokenizer, through unsloth or plain transformers.

    Returns ``(model, tokenizer)``; the tokenizer always has a pad token distinct from EOS.
    Raises :class:`helpers.errors.ModelUnavailableError` when the model cannot be fetched (gated,
    unknown, no token, offline), saying what to do. A ``max_seq_length`` beyond the model's trained
    context gives a :class:`ContextLengthWarning` (see :func:`check_context_length`); on the
    transformers branch the linear RoPE scaling unsloth would apply is applied to the config.
    """
    if profile.is_embedded_model or profile.is_smoke_model or profile.is_gguf_model:
        from .support.paths import cache_dir

        # converting a GGUF or building the smoke model writes into the cache: a full disk is explained
        with disk_full_explained(cache_dir(), "the converted model (once, into the cache)"):
            source = resolve_model_source(profile)
    else:
        source = resolve_model_source(profile)
    if profile.uses_unsloth:
        from unsloth import FastLanguageModel  # noqa: I001  (unsloth before transformers, to patch it)
        from transformers import AutoConfig  # deferred: heavy

        try:  # only to explain RoPE scaling in advance; unsloth may load a mirror of a gated name itself
            with architecture_errors_explained(profile.model_label):
                config = AutoConfig.from_pretrained(source)
        except UnknownArchitectureError:
            raise
        except Exception:
            config = None
        if config is not None:
            check_context_length(config, profile.max_seq_length, apply=False)
        with model_errors_explained(profile.model_name):
            model, tokenizer = FastLanguageModel.from_pretrained(
                model_name=source,
                max_seq_length=profile.max_seq_length,
                dtype=None if profile.dtype is None else resolve_dtype(profile),
                load_in_4bit=profile.load_in_4bit,
            )
    else:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # deferred: heavy

        quantization_config = None
        if profile.load_in_4bit:
            from transformers import BitsAndBytesConfig  # deferred: heavy

            quantization_config = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=resolve_dtype(profile),
            )
        with model_errors_explained(profile.model_name), architecture_errors_explained(profile.model_label):
            tokenizer = AutoTokenizer.from_pretrained(source)
            config = AutoConfig.from_pretrained(source)
            refuse_non_causal(config, profile.model_label)
            scaled = check_context_length(config, profile.max_seq_length, apply=True)
            model = AutoModelForCausalLM.from_pretrained(
                source,
                dtype=resolve_dtype(profile),
                quantization_config=quantization_config,
                device_map={"": 0} if profile.device == "cuda" else None,
                **({"config": config} if scaled and scaled["applied"] else {}),
            )
    if ensure_pad_token(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def load_trained_model(profile: Profile, adapter_dir, base_model=None, tokenizer=None):
    """Return ``(model, tokenizer)``: the base model with the adapter saved in ``adapter_dir``, in
    inference mode (notebook 06 teaches this code).

    unsloth branch: ``FastLanguageModel.from_pretrained`` on the adapter folder (it loads the 4-bit
    base underneath), then ``for_inference``. Plain branch: ``PeftModel.from_pretrained`` on
    ``base_model`` (modified in place, so no second copy of the weights; loaded with
    :func:`load_model_and_tokenizer` when not given), then ``eval()``. An adapter that is cut off, has
    no weights file or belongs to another model or rank raises :class:`helpers.errors.AdapterError`
    (see :func:`helpers.errors.adapter_errors_explained`).
    """
    check_adapter_unchanged(adapter_dir)  # as saved (files.sha256.json), before any loading
    if profile.uses_unsloth:
        from unsloth import FastLanguageModel  # deferred: needs a GPU

        with adapter_errors_explained(adapter_dir):
            model, tokenizer = FastLanguageModel.from_pretrained(
                model_name=str(adapter_dir),
                max_seq_length=profile.max_seq_length,
                dtype=None,
                load_in_4bit=profile.load_in_4bit,
            )
        FastLanguageModel.for_inference(model)
        return model, tokenizer
    from peft import PeftModel  # deferred: heavy

    if base_model is None:
        base_model, tokenizer = load_model_and_tokenizer(profile)
    with adapter_errors_explained(adapter_dir):
        model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    model.eval()
    return model, tokenizer


def ensure_pad_token(tokenizer, verbose: bool = True) -> bool:
    """Give the tokenizer a pad token when it has none, never reusing EOS when avoidable.

    A collator masks padding out of the loss by token id; if PAD were EOS, every real EOS would be
    masked too and the model would never learn to end a document. An existing token that is not EOS
    is preferred (``<|endoftext|>``, ``<pad>``, ``<unk>``, ...); only when there is none is a new
    ``<|pad|>`` added. With ``verbose`` it prints what it found and chose. Returns True when a new
    token had to be added to the vocabulary (the caller must then resize the model's embeddings).
    """
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    problem = ("has no pad token" if tokenizer.pad_token is None
               else f"uses its EOS token {tokenizer.eos_token!r} as pad token")
    vocab = tokenizer.get_vocab()
    for candidate in ("<|endoftext|>", "<pad>", "<unk>", "<|finetune_right_pad_id|>"):
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            if verbose:
                print(f"pad token: the tokenizer {problem}; using {candidate!r} (id {vocab[candidate]}), which is not "
                      f"EOS {tokenizer.eos_token!r}, so padding can be masked without masking the real EOS.")
            return False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    if verbose:
        print(f"pad token: the tokenizer {problem} and none of <|endoftext|>, <pad>, <unk> exists; added a new "
              f"token '<|pad|>' (id {tokenizer.pad_token_id}); the embedding matrix grows by one row.")
    return True


class ContextLengthWarning(UserWarning):
    """``max_seq_length`` is beyond the context the model was trained for; RoPE scaling applies."""


class ContextLengthError(ValueError):
    """``max_seq_length`` is beyond the trained context of a model whose positions cannot be scaled."""


def check_context_length(config, max_seq_length: int, apply: bool = False) -> dict | None:
    """Compare ``max_seq_length`` with the context the model was trained for, and explain RoPE
    scaling when it is longer.

    Returns None when it fits. Otherwise warns (:class:`ContextLengthWarning`) and returns a dict:
    ``trained_context``, ``max_seq_length``, ``factor`` and ``rope_parameters`` (the scaling unsloth's
    loader applies in this case: linear, ``factor = max_seq_length / max_position_embeddings``, with
    ``max_position_embeddings`` raised to ``max_seq_length``), and ``applied``. With ``apply=True``
    the scaling is written into ``config`` (pass that config to ``from_pretrained``); it is never
    stacked on a config that already has a RoPE scaling of its own. Raises
    :class:`ContextLengthError` for models with learned absolute positions (GPT-2 style), which
    cannot be scaled.
    """
    trained = getattr(config, "max_position_embeddings", None)
    if not trained or max_seq_length <= trained:
        return None
    rope = getattr(config, "rope_parameters", None)
    if rope is None and getattr(config, "rope_theta", None) is None:
        raise ContextLengthError(
            f"max_seq_length={max_seq_length} is beyond this model's {trained} positions, and it has learned "
            f"absolute position embeddings (no RoPE), so there is nothing to scale: past {trained} tokens there "
            f"is no position vector at all. Set max_seq_length to at most {trained}."
        )
    rope = dict(rope or {"rope_theta": config.rope_theta, "rope_type": "default"})
    factor = max_seq_length / trained
    scaled = {**rope, "rope_type": "linear", "factor": float(factor)}
    own_scaling = rope.get("rope_type", "default") != "default"
    applied = apply and not own_scaling
    if applied:
        config.rope_parameters = scaled
        config.max_position_embeddings = max_seq_length
    if own_scaling:
        action = (f"The config already has RoPE scaling of its own ({rope.get('rope_type')!r}), so nothing was "
                  "added; check that it covers max_seq_length.")
    elif applied:
        action = "Applied to the model's config before loading, as unsloth's loader does."
    else:
        action = "unsloth's loader applies this when it loads the model."
    warnings.warn(
        f"max_seq_length={max_seq_length} is beyond the context this model was trained for "
        f"(max_position_embeddings={trained}). It encodes positions with rotary position embeddings (RoPE) "
        f"and has only seen the rotation angles of positions below {trained}. Linear RoPE scaling "
        f"(position interpolation) divides every position by a factor, here {max_seq_length}/{trained} = "
        f"{factor:.3g}, so the longest sequence is rotated like position {trained} was: "
        f"rope_parameters={{'rope_type': 'linear', 'factor': {factor:.3g}}}, max_position_embeddings={max_seq_length}. "
        f"{action} Quality on long sequences drops somewhat until training adapts the model; to avoid "
        f"scaling, set max_seq_length to at most {trained}.",
        ContextLengthWarning,
        stacklevel=2,
    )
    return {"trained_context": trained, "max_seq_length": max_seq_length, "factor": float(factor),
            "rope_parameters": scaled, "applied": applied}
