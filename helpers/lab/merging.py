"""Saving and merging: from a trained adapter to a model anyone can load with plain transformers.

A PEFT adapter folder holds only what was trained (LoRA matrices, plus the full embedding copies of
a CPT run) and needs the base model and the ``peft`` library to be used. *Merging* folds the
adapters into the base weights (``W + scale · B A``) and swaps in the trained embedding copies,
giving an ordinary model folder that ``AutoModelForCausalLM.from_pretrained`` loads on its own
(:func:`helpers.generation.generate_without_peft` proves it in a process without ``peft``).

Merging needs floating-point base weights: a 4-bit base would have to be dequantized first (the
merged sum is not representable in NF4 without a new, lossy quantization). unsloth's
``save_pretrained_merged(..., save_method="merged_16bit")`` does that dequantization for you;
:func:`merge_adapter` refuses a quantized base with a message that says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import hub_offline_mode
from ..support.files import save_directory_atomically


class MergeError(ValueError):
    """The adapter cannot be merged as asked; the message says what to do instead."""


def is_quantized(model) -> bool:
    """Return True when the model's weights are stored quantized (bitsandbytes 4/8-bit, GPTQ, ...)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
        return True
    if getattr(getattr(base, "config", None), "quantization_config", None) is not None:
        return True
    return any(not p.dtype.is_floating_point for p in base.parameters())


def local_base_weights(repo_id: str, cache_dir: Path | str | None = None) -> Path:
    """Return the local snapshot folder of hub model ``repo_id`` in the Hugging Face cache, which
    must hold ``.safetensors`` weights. Raises :class:`MergeError` saying how to get them otherwise."""
    from huggingface_hub import snapshot_download  # deferred: heavy
    from huggingface_hub.errors import LocalEntryNotFoundError  # deferred: heavy

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir))
    except LocalEntryNotFoundError:
        folder = None
    if folder is None or not any(folder.glob("*.safetensors")):
        raise MergeError(
            f"the hub is switched off (HF_HUB_OFFLINE) and the Hugging Face cache has no 16-bit weights of "
            f"{repo_id!r}, which a 16-bit merge adds the adapters to. Download them once on a machine with "
            f"a network (`huggingface-cli download {repo_id}`), or merge where the hub is reachable. "
            "The adapter folder is unchanged.")
    return folder


@contextmanager
def offline_merge_base(model, base: str, cache_dir: Path | str | None = None) -> Iterator[Path | None]:
    """While the ``with`` block runs, let a merge find the 16-bit base ``base`` without the hub.

    unsloth's ``save_pretrained_merged(..., "merged_16bit")`` reads the base model's name from
    ``model.config._name_or_path`` and asks the hub about it first; with ``HF_HUB_OFFLINE=1`` that
    question fails ("could not reach the Hugging Face Hub ... pass a local path"), even when the
    weights are in the local cache. When the hub is off and ``base`` is a hub id, this points
    ``_name_or_path`` at the cached snapshot folder (:func:`local_base_weights`) and puts the old
    value back afterwards, also after an error. Yields that folder, or None when nothing needed
    changing (hub on, or ``base`` already a local folder).
    """
    if Path(base).is_dir() or not hub_offline_mode():
        yield None
        return
    folder = local_base_weights(base, cache_dir)
    config = model.config
    original = config._name_or_path
    config._name_or_path = str(folder)
    try:
        yield folder
    finally:
        config._name_or_path = original


def merge_adapter(peft_model):
    """Fold a PEFT model's adapters into its base weights; return the plain transformers model.

    LoRA matrices are added into the weights they adapt, ``modules_to_save`` copies (the trained
    ``embed_tokens`` / ``lm_head``) replace the originals, and the PEFT wrappers are removed. The
    input model is changed in place (its base *becomes* the merged model). Raises :class:`MergeError`
    when the object is not a PEFT model or when the base is quantized.
    """
    if not hasattr(peft_model, "merge_and_unload"):
        raise MergeError(f"{type(peft_model).__name__} is not a PEFT model: there is no adapter to merge.")
    if is_quantized(peft_model):
        raise MergeError(
            "The base model is quantized (e.g. 4-bit): merging would need the weights in 16 or 32 bits. "
            "Load the base in bf16/fp16/fp32 (load_in_4bit=False), attach the adapter, then merge; on the "
            "unsloth path, model.save_pretrained_merged(folder, tokenizer, save_method='merged_16bit') "
            "does this for you."
        )
    return peft_model.merge_and_unload()


def save_merged(model, tokenizer, folder: Path | str) -> Path:
    """Save a merged (plain transformers) model and its tokenizer to ``folder`` atomically.

    Refuses a model that still carries PEFT layers (``MergeError``), since the folder would then not
    load without ``peft``. Returns the folder.
    """
    if any("lora_" in name or "modules_to_save" in name for name, _ in model.named_parameters()):
        raise MergeError("The model still has PEFT layers; call merge_adapter(model) first.")

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return save_directory_atomically(folder, write)


def adapter_composition(adapter_dir: Path | str) -> dict[str, dict]:
    """Return what an adapter's weight file holds, grouped: full embedding copies vs LoRA matrices.

    ``{"full copies (embed_tokens, lm_head)": {"tensors": n, "parameters": p, "bytes": b}, "LoRA A/B":
    {...}}``; counts come from the safetensors header, without loading the tensors.
    """
    from safetensors import safe_open  # deferred: heavy

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no adapter_model.safetensors in {Path(adapter_dir).name}/")
    groups: dict[str, dict] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            tensor = f.get_slice(key)
            numel = 1
            for dim in tensor.get_shape():
                numel *= dim
            itemsize = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "U8": 1}.get(tensor.get_dtype(), 4)
            kind = "LoRA A/B" if "lora_" in key else "full copies (embed_tokens, lm_head)" if (
                "embed_tokens" in key or "lm_head" in key) else "other"
            entry = groups.setdefault(kind, {"tensors": 0, "parameters": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["parameters"] += numel
            entry["bytes"] += numel * itemsize
    return groups


# (input size, output size) of each projection LoRA can target, from a Llama/Mistral-style config
_PROJECTIONS = {
    "q_proj": lambda c, hd: (c.hidden_size, c.num_attention_heads * hd),
    "k_proj": lambda c, hd: (c.hidden_size, c.num_key_value_heads * hd),
    "v_proj": lambda c, hd: (c.hidden_size, c.num_key_value_heads * hd),
    "o_proj": lambda c, hd: (c.num_attention_heads * hd, c.hidden_size),
    "gate_proj": lambda c, hd: (c.hidden_size, c.intermediate_size),
    "up_proj": lambda c, hd: (c.hidden_size, c.intermediate_size),
    "down_proj": lambda c, hd: (c.intermediate_size, c.hidden_size),
}
_FULL_COPIES = ("embed_tokens", "lm_head")


def adapter_parameter_count(config, r: int, target_modules) -> dict[str, int]:
    """Return how many numbers a CPT adapter of rank ``r`` holds for a Llama/Mistral-style ``config``,
    keyed like :func:`adapter_composition`: ``{"LoRA A/B": ..., "full copies (embed_tokens, lm_head)": ...}``.

    A LoRA pair on an ``in × out`` projection is ``A`` (r × in) plus ``B`` (out × r): ``r · (in + out)``
    numbers, in every layer. ``embed_tokens`` and ``lm_head`` among the targets are stored as full
    ``vocab × hidden`` copies, each, even when the model ties them (PEFT saves the shared matrix under
    both names). Computed from the shapes only: no model is built. Raises ``ValueError`` for a target
    that is neither a projection of this architecture nor an embedding.
    """
    targets = list(target_modules)
    unknown = [t for t in targets if t not in _PROJECTIONS and t not in _FULL_COPIES]
    if unknown:
        raise ValueError(f"unknown target module(s) {unknown}; known: {[*_PROJECTIONS, *_FULL_COPIES]}")
    if r < 1:
        raise ValueError(f"the LoRA rank must be at least 1, not {r}")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_layer = sum(r * sum(_PROJECTIONS[t](config, head_dim)) for t in targets if t in _PROJECTIONS)
    full = sum(config.vocab_size * config.hidden_size for t in targets if t in _FULL_COPIES)
    return {"LoRA A/B": per_layer * config.num_hidden_layers, "full copies (embed_tokens, lm_head)": full}
