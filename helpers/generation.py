"""Greedy generation, in this process or in a fresh one that cannot import ``peft``.

:func:`greedy_text` is the in-process decoding; :func:`generate_without_peft` runs the same decoding
in a new Python process where ``peft`` is blocked, so that a merged model folder (see
:mod:`helpers.lab.merging`) is shown to need nothing but transformers. Both skip special tokens and
return the continuation only, so their texts can be compared string for string. (Streaming,
wrapped generation for reading along is :func:`helpers.streaming.stream_generate`.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .modeling import input_device


def greedy_text(model, tokenizer, prompt: str, max_new_tokens: int, repetition_penalty: float = 1.0) -> str:
    """Return the greedy continuation of ``prompt`` (special tokens skipped), generated in-process;
    ``repetition_penalty`` above 1 divides the score of every token already in the text (a profile's
    ``repetition_penalty``, as notebook 06 generates).

    The same decoding as :func:`generate_without_peft` runs in its subprocess, so the two can be
    compared string for string.
    """
    import torch  # deferred: heavy

    inputs = tokenizer(prompt, return_tensors="pt").to(input_device(model))
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                repetition_penalty=repetition_penalty, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def greedy_choices(model, tokenizer, prompt: str, continuation: str) -> list[int]:
    """Return ``model``'s greedy choice (the highest-scoring token id) for each token of ``continuation``
    written after ``prompt``, each given everything before it: one forward pass over the text (teacher
    forcing) instead of one pass per generated token.

    Two models whose lists agree everywhere write the same greedy continuation of ``prompt`` along this
    text; the first position where they differ is where their greedy texts part. Positions are those of
    ``tokenizer(prompt + continuation)`` from the prompt's last token on.
    """
    import torch  # deferred: heavy

    prompt_tokens = len(tokenizer(prompt)["input_ids"])
    inputs = tokenizer(prompt + continuation, return_tensors="pt").to(input_device(model))
    with torch.no_grad():
        logits = model(**inputs).logits[0, prompt_tokens - 1:-1]
    return logits.argmax(dim=-1).tolist()


def choices_kept(reference: list[int], choices: list[int]) -> int:
    """Return how many of ``choices`` agree with ``reference`` from the first position on, before the
    first difference (``len(reference)`` when all do)."""
    for position, (expected, chosen) in enumerate(zip(reference, choices, strict=True)):
        if expected != chosen:
            return position
    return len(reference)


# Runs in a fresh interpreter: peft is made unimportable *before* transformers is imported, so the
# folder demonstrably loads with transformers alone.
_LOAD_WITHOUT_PEFT = r"""
import json, sys
sys.modules["peft"] = None  # `import peft` now raises ImportError; transformers sees peft as absent
model_dir, prompt, max_new_tokens, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
repetition_penalty = float(sys.argv[5])
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(
    model_dir, dtype="auto", device_map=None if device == "cpu" else {"": device}).eval()
inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
with torch.no_grad():
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            repetition_penalty=repetition_penalty, pad_token_id=tokenizer.pad_token_id)
text = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
peft_loaded = sys.modules.get("peft") is not None
print(json.dumps({"text": text, "class": type(model).__name__, "dtype": str(model.dtype),
                  "peft_imported": peft_loaded}))
"""


def generate_without_peft(model_dir: Path | str, prompt: str, max_new_tokens: int, device: str = "cpu",
                          timeout: float = 600, repetition_penalty: float = 1.0) -> dict:
    """Load ``model_dir`` with plain transformers in a fresh Python process and generate greedily
    (with :func:`greedy_text`'s ``repetition_penalty``).

    The weights load in the dtype they were saved in (``dtype="auto"``), on ``device`` ("cpu", or
    e.g. "cuda:0"). ``peft`` is blocked in that process (``import peft`` would fail), so success proves the folder
    needs nothing but transformers. Returns ``{"text", "class", "dtype", "peft_imported"}``. Raises
    ``RuntimeError`` with the subprocess's last error lines when loading or generating fails.
    """
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_PEFT, str(model_dir), prompt, str(max_new_tokens), device,
         str(repetition_penalty)],
        capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"loading {Path(model_dir).name}/ with plain transformers failed:\n{tail}")
    return json.loads(result.stdout.strip().splitlines()[-1])
