"""Saving and merging: from a trained adapter to a model anyone can load with plain transformers.

A PEFT adapter folder holds only what was trained (LoRA matrices, plus the full embedding copies of
a CPT run) and needs the base model and the ``peft`` library to be used. *Merging* folds the
adapters into the base weights (``W + scale · B A``) and swaps in the trained embedding copies,
giving an ordinary model folder that ``AutoModelForCausalLM.from_pretrained`` loads on its own.

Merging needs floating-point base weights: a 4-bit base would have to be dequantized first (the
merged sum is not representable in NF4 without a new, lossy quantization). unsloth's
``save_pretrained_merged(..., save_method="merged_16bit")`` does that dequantization for you;
:func:`merge_adapter` refuses a quantized base with a message that says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .storage import save_directory_atomically


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


def folder_size_bytes(folder: Path | str, pattern: str = "*") -> int:
    """Return the total size in bytes of the files under ``folder`` matching ``pattern`` (recursive)."""
    return sum(f.stat().st_size for f in Path(folder).rglob(pattern) if f.is_file())


def adapter_composition(adapter_dir: Path | str) -> dict[str, dict]:
    """Return what an adapter's weight file holds, grouped: full embedding copies vs LoRA matrices.

    ``{"full copies (embed_tokens, lm_head)": {"tensors": n, "parameters": p, "bytes": b}, "LoRA A/B":
    {...}}``; counts come from the safetensors header, without loading the tensors.
    """
    from safetensors import safe_open

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


def greedy_text(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Return the greedy continuation of ``prompt`` (special tokens skipped), generated in-process.

    The same decoding as :func:`generate_without_peft` runs in its subprocess, so the two can be
    compared string for string.
    """
    import torch

    inputs = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


# Runs in a fresh interpreter: peft is made unimportable *before* transformers is imported, so the
# folder demonstrably loads with transformers alone.
_LOAD_WITHOUT_PEFT = r"""
import json, sys
sys.modules["peft"] = None  # `import peft` now raises ImportError; transformers sees peft as absent
model_dir, prompt, max_new_tokens, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(
    model_dir, dtype="auto", device_map=None if device == "cpu" else {"": device}).eval()
inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
with torch.no_grad():
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
text = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
peft_loaded = sys.modules.get("peft") is not None
print(json.dumps({"text": text, "class": type(model).__name__, "dtype": str(model.dtype),
                  "peft_imported": peft_loaded}))
"""


def generate_without_peft(model_dir: Path | str, prompt: str, max_new_tokens: int, device: str = "cpu",
                          timeout: float = 600) -> dict:
    """Load ``model_dir`` with plain transformers in a fresh Python process and generate greedily.

    The weights load in the dtype they were saved in (``dtype="auto"``), on ``device`` ("cpu", or
    e.g. "cuda:0"). ``peft`` is blocked in that process (``import peft`` would fail), so success proves the folder
    needs nothing but transformers. Returns ``{"text", "class", "dtype", "peft_imported"}``. Raises
    ``RuntimeError`` with the subprocess's last error lines when loading or generating fails.
    """
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_PEFT, str(model_dir), prompt, str(max_new_tokens), device],
        capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"loading {Path(model_dir).name}/ with plain transformers failed:\n{tail}")
    return json.loads(result.stdout.strip().splitlines()[-1])
