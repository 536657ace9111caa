"""How much GPU memory LoRA saves over full fine-tuning, and how that changes with sequence length.

One training step holds, at its peak: the weights; for every *trainable* parameter a gradient and
the optimizer's state (AdamW: two more tensors of the same size); and the activations kept for the
backward pass, which grow with batch × sequence length whatever is trained. LoRA shrinks the
second item to almost nothing and leaves the third untouched (PEFT's fp32 adapters even add to it),
so its saving is large for short sequences and shrinks, relatively, as sequences grow, and on a small
model can turn negative (measured on an H200: see runs/LOG.md); gradient checkpointing is the
tool for the third.

:func:`peak_step_memory` measures one step with PyTorch's CUDA allocator (it needs a CUDA device).
:func:`compare_in_fresh_process` runs the whole comparison in a new Python process that never
imported unsloth, so that unsloth's patches of the Llama classes (see :mod:`helpers.lab.patch_probe`) in the
calling kernel cannot interfere: the numbers are those of plain PyTorch + PEFT.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

from ..profiles import CPU_SMOLLM2, LORA_PROJECTIONS
from ..support.paths import project_root
from ..training import lora_config

GIB = 1024**3


def small_llama_config(vocab_size: int = 32000, hidden_size: int = 1024, layers: int = 8):
    """Return a LlamaConfig of a small model (about 150 M parameters with the defaults) for the probe."""
    from transformers import LlamaConfig  # deferred: heavy

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 3,
                       num_hidden_layers=layers, num_attention_heads=hidden_size // 64,
                       num_key_value_heads=hidden_size // 128, max_position_embeddings=16384,
                       tie_word_embeddings=False)


def peak_step_memory(build_model, seq_len: int, batch_size: int = 1, seed: int = 0) -> dict:
    """Run one forward + backward + AdamW step of ``build_model()`` on random tokens; return
    ``{"seq_len", "trainable_parameters", "weights_gib", "peak_gib"}``.

    ``build_model`` returns a fresh model on the GPU. The peak counts from the moment the model is
    built (so a temporary copy made while building is not charged to the step) and includes the
    weights. The model is deleted and the cache emptied afterwards, so calls do not see each other's
    memory. Raises ``RuntimeError`` without CUDA.
    """
    import torch  # deferred: heavy

    if not torch.cuda.is_available():
        raise RuntimeError("peak_step_memory measures the CUDA allocator and needs a CUDA device")
    gc.collect()
    torch.cuda.empty_cache()
    start = torch.cuda.memory_allocated()
    model = build_model()
    model.train()
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated() - start
    torch.cuda.reset_peak_memory_stats()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    generator = torch.Generator(device="cuda").manual_seed(seed)
    tokens = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), device="cuda", generator=generator)
    loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    result = {
        "seq_len": seq_len,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "weights_gib": weights / GIB,
        "peak_gib": (torch.cuda.max_memory_allocated() - start) / GIB,
    }
    del model, optimizer, trainable, tokens, loss
    gc.collect()
    torch.cuda.empty_cache()
    return result


def compare(lengths: list[int], lora_r: int = 16) -> list[dict]:
    """Return one row per length: ``{"tokens", "full", "CPT LoRA", "LoRA"}`` peak GiB of one step
    of the small bf16 Llama, with all weights trained, with LoRA on the seven projections plus full
    embed_tokens / lm_head (this series' CPT recipe), and with LoRA on the projections only."""
    import torch  # deferred: heavy
    from peft import get_peft_model  # deferred: heavy
    from transformers import LlamaForCausalLM  # deferred: heavy

    config = small_llama_config()
    recipe = CPU_SMOLLM2.replace(lora_r=lora_r)

    def full():
        with torch.device("cuda"):
            return LlamaForCausalLM(config).to(torch.bfloat16)

    builders = {
        "full": full,
        "CPT LoRA": lambda: get_peft_model(full(), lora_config(recipe)),
        "LoRA": lambda: get_peft_model(full(), lora_config(recipe.replace(target_modules=LORA_PROJECTIONS))),
    }
    return [{"tokens": n, **{name: peak_step_memory(build, seq_len=n)["peak_gib"] for name, build in builders.items()}}
            for n in lengths]


def compare_in_fresh_process(lengths: list[int], lora_r: int = 16, timeout: float = 600) -> list[dict]:
    """Run :func:`compare` in a new Python process (no unsloth imported there) and return its rows.
    Raises ``RuntimeError`` with the last lines of the process's error output on failure."""
    root = str(project_root())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    code = ("import json, sys; from helpers.lab.lora_memory import compare; "
            "print('ROWS ' + json.dumps(compare([int(n) for n in sys.argv[2:]], int(sys.argv[1]))))")
    result = subprocess.run([sys.executable, "-c", code, str(lora_r), *map(str, lengths)],
                            capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("ROWS ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError("the memory comparison failed:\n" + "\n".join(result.stderr.strip().splitlines()[-8:]))
    return json.loads(lines[-1][len("ROWS "):])
