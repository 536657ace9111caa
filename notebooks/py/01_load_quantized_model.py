# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py//py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/01_load_quantized_model.ipynb)
#
# # 01 · Loading the model: 4-bit weights, the compute dtype, and the context length
#
# The walkthrough's first call loads Mistral-7B v0.3 with three settings: `load_in_4bit=True`,
# `dtype=None` and `max_seq_length=2048`. This notebook makes that call, looks at what it loaded, and
# records the memory it takes.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("01_load_quantized_model")

# %% [markdown]
# ## The loading call
#
# `FastLanguageModel.from_pretrained` is unsloth's loader: it wraps transformers' loader and swaps some
# of transformers' functions for faster ones (Going further shows which). Its three settings:
#
# * `load_in_4bit=True` stores the weights of the linear layers as 4-bit codes (**NF4**, "normal float
#   4": 16 levels spaced for normally distributed weights), through **bitsandbytes**, a library of
#   quantized GPU kernels. Mistral's 7.25 billion weights take 14.5 GB in bf16 (2 bytes each); loaded
#   in 4-bit, the walkthrough's model reserved 4.36 GB of GPU memory. 4-bit codes cannot be trained,
#   so the model stays frozen and training goes into LoRA adapters, small trainable matrices beside
#   the frozen ones (notebook 04).
# * `dtype=None` picks the **compute dtype**, the precision each block of codes is expanded to for its
#   multiplication: bf16 on GPUs that have it (A100, H100), else fp16 (a T4). Both are 16-bit floats;
#   bf16 keeps the range of fp32 (32-bit floats), where fp16 overflows above 65,504.
# * `max_seq_length=2048`: the longest sequence this run feeds the model (below).
#
# unsloth cannot even be imported without a GPU, so beside it stands the plain transformers
# call that does the same, with a `BitsAndBytesConfig` for 4-bit. A CPU has no 4-bit kernels: there
# SmolLM2-135M loads in fp32. Later notebooks load through `helpers.modeling.load_model_and_tokenizer`:
# the same code, plus clear errors.

# %%
from helpers.modeling import ensure_pad_token, resolve_dtype, resolve_model_source

source = resolve_model_source(profile)  # a hub id, or the local folder converted in notebook 00

if profile.uses_unsloth:
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=source,  # the walkthrough: "unsloth/mistral-7b-v0.3"
        max_seq_length=profile.max_seq_length,  # the walkthrough: 2048
        dtype=None,  # auto: bf16 where the GPU supports it, else fp16
        load_in_4bit=profile.load_in_4bit,  # the walkthrough: True
    )
else:
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quantization_config = (
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=resolve_dtype(profile))
        if profile.load_in_4bit else None  # a CPU: no 4-bit kernels
    )
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(
        source,
        dtype=resolve_dtype(profile),  # fp32 on a CPU
        quantization_config=quantization_config,
        device_map={"": 0} if profile.device == "cuda" else None,
    )
if ensure_pad_token(tokenizer):  # a brand-new PAD token needs a row in the embedding matrix
    model.resize_token_embeddings(len(tokenizer))
print(type(model).__name__, "loaded from", profile.model_label, "| compute dtype:", resolve_dtype(profile))

# %% [markdown]
# ## What was loaded
#
# Grouping the parameters by storage type shows what 4-bit means. On a GPU most are `uint8` tensors,
# each byte holding two 4-bit codes. The embedding matrices stay in the compute dtype: bitsandbytes
# converts only linear layers, and transformers keeps the output layer `lm_head` out of 4-bit. That
# is what lets notebook 04 train both in full. On the CPU everything is fp32.

# %%
from collections import Counter

import torch

stored = Counter()
for _, param in model.named_parameters():
    stored[str(param.dtype)] += param.numel()
for dtype, count in stored.most_common():
    print(f"{dtype:>16}: {count / 1e6:8.1f} M stored elements")
footprint_gb = model.get_memory_footprint() / 1e9
print(f"memory footprint of the weights: {footprint_gb:.2f} GB")
config = model.config
print(f"layers {config.num_hidden_layers}, hidden {config.hidden_size}, vocab {config.vocab_size}, "
      f"tied embeddings: {config.tie_word_embeddings}")
assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
if profile.load_in_4bit:
    assert "torch.uint8" in stored
    assert torch.uint8 not in (model.get_input_embeddings().weight.dtype, model.get_output_embeddings().weight.dtype)
else:
    assert set(stored) == {str(resolve_dtype(profile))}

# %% [markdown]
# ## Memory after loading
#
# The walkthrough reports GPU memory at each stage, and so does this series. `helpers.memory.record_stage`
# reads every gauge it can and appends them to `outputs/memory_stages.json` (notebook 06 plots them):
# PyTorch's allocator; **NVML** (NVIDIA Management Library), the driver's gauge that `nvidia-smi`
# reads; and the process's **RSS** (resident set size: the host memory it holds), the only gauge on
# a CPU. Once after loading:

# %%
from helpers.memory import format_snapshot, record_stage

print(format_snapshot(record_stage("model loaded", "01")))

# %% [markdown]
# And once after a forward pass (one run of the model over the prompt), which adds activations to the
# weights:

# %%
inputs = tokenizer(profile.prompt, return_tensors="pt").to(model.device)
with torch.no_grad():
    logits = model(**inputs).logits
print(f"logits shape {tuple(logits.shape)} = (batch, prompt tokens, vocabulary)")
assert logits.shape[-1] == config.vocab_size
print(format_snapshot(record_stage("after a forward pass", "01")))

# %% [markdown]
# ## `max_seq_length` and the trained context
#
# `max_seq_length` sizes the training rows (notebook 02). The model's own limit is the context it was
# trained for, `max_position_embeddings` in its config. Asked for more, unsloth's loader (and
# `load_model_and_tokenizer`) stretches the positions: RoPE scaling, see Going further.
#
# > **The walkthrough says** Mistral 7B was trained with a context of 8,192 tokens. That was the first
# > Mistral-7B (v0.1), whose paper gives an 8,192-token context and a 4,096-token sliding window (each
# > token attends only to the 4,096 before it). v0.3, loaded here, has a 32,768-token context and no
# > sliding window. Either way, 2,048 needs no scaling.
# >
# > It also describes RoPE (rotary position embeddings, how Mistral encodes word order) as vectors
# > *added* to the token embeddings. RoPE adds nothing: it rotates the query and key vectors inside each
# > attention layer by angles that grow with the position.
#
# The cell prints the loaded model's figures (on the CPU, SmolLM2's).

# %%
print(f"trained context (max_position_embeddings): {config.max_position_embeddings:,}")
print(f"sliding window: {getattr(config, 'sliding_window', None)}")
print(f"this run's max_seq_length: {profile.max_seq_length:,}; "
      f"RoPE scaling needed: {profile.max_seq_length > config.max_position_embeddings}")
if profile.model_name == "unsloth/mistral-7b-v0.3":  # the walkthrough's model
    assert config.max_position_embeddings == 32768 and getattr(config, "sliding_window", None) is None
    assert profile.max_seq_length <= config.max_position_embeddings

# %% [markdown]
# ## Hand-over
#
# The facts measured here go to `outputs/01_model_info.json` through `helpers.artifacts.save_outputs`,
# which also writes a **manifest**: a small file naming the profile, model and settings they belong
# to, so that a later notebook refuses results of another run.

# %%
from helpers.artifacts import save_outputs

model_info = {
    "profile": profile.name,
    "model": profile.model_label,
    "class": type(model).__name__,
    "stored_elements_by_dtype": dict(stored),
    "footprint_gb": footprint_gb,
    "max_position_embeddings": config.max_position_embeddings,
    "max_seq_length": profile.max_seq_length,
    "tie_word_embeddings": config.tie_word_embeddings,
}
save_outputs(profile, {"model_info": model_info})
print(model_info)

# %% [markdown]
# ## Going further
#
# ### 4-bit in detail
#
# NF4 cuts each weight matrix into blocks of 64. A block keeps one scale (its largest absolute value),
# and each weight becomes the nearest of 16 levels placed at the quantiles of a normal distribution.
# Double quantization (`bnb_4bit_use_double_quant`) quantizes the scales too: a little over half a
# byte per weight. A training step is far smaller than the gap between two levels and would round
# away, hence the frozen base and LoRA beside it (QLoRA).
#
# ### Is 4-bit quantization deterministic?
#
# The walkthrough says so. The cell quantizes a seeded bf16 matrix twice with bitsandbytes'
# `quantize_4bit` and compares codes, scales and dequantized weights. It needs CUDA. On an H200 both
# were identical, with a mean rounding error of 0.073 for weights of standard deviation 1 (runs/LOG.md).

# %%
import importlib.util

import torch

if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None:
    import bitsandbytes.functional as bnbf

    generator = torch.Generator(device="cuda").manual_seed(profile.seed)
    weight = torch.randn(4096, 4096, generator=generator, device="cuda", dtype=torch.bfloat16)
    codes_1, state_1 = bnbf.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
    codes_2, state_2 = bnbf.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
    same_codes = torch.equal(codes_1, codes_2)
    same_scales = torch.equal(state_1.absmax, state_2.absmax)
    restored_1, restored_2 = bnbf.dequantize_4bit(codes_1, state_1), bnbf.dequantize_4bit(codes_2, state_2)
    error = (restored_1.float() - weight.float()).abs().mean().item()
    print(f"{weight.numel():,} bf16 weights -> {codes_1.numel():,} bytes of packed codes, dtype {codes_1.dtype}")
    print(f"identical codes: {same_codes}; identical block scales: {same_scales}; "
          f"identical dequantized weights: {torch.equal(restored_1, restored_2)}")
    print(f"mean absolute rounding error of NF4 here: {error:.4f} (weights have standard deviation 1)")
    assert same_codes and same_scales and torch.equal(restored_1, restored_2)
else:
    print("skipped: bitsandbytes' 4-bit quantization needs a CUDA GPU (and bitsandbytes installed); "
          "this machine has neither, so the CPU profile loads fp32 weights instead.")

# %% [markdown]
# ### Why does PyTorch report less than `nvidia-smi`?
#
# The walkthrough finds that `torch.cuda.memory_allocated()` "seems to severely under-report". The
# gauges count different things: *allocated* is live tensors; *reserved* adds the blocks PyTorch's
# caching allocator keeps for reuse; NVML adds the **CUDA context** (the driver's state and loaded
# GPU code of each process) and other processes. The cell reads them at one moment, on a GPU only.

# %%
from helpers.memory import snapshot

snap = snapshot()
if snap["torch"] and (snap["nvml"] or snap["nvidia_smi"]):
    t = snap["torch"]
    driver = snap["nvml"] or snap["nvidia_smi"]
    print(f"torch allocated : {t['allocated_gib']:6.2f} GiB  (live tensors)")
    print(f"torch reserved  : {t['reserved_gib']:6.2f} GiB  (+{t['reserved_gib'] - t['allocated_gib']:.2f} GiB cached by the allocator)")
    if snap["nvml"]:
        print(f"NVML used       : {snap['nvml']['used_gib']:6.2f} GiB  (device total; this process: {snap['nvml']['process_gib']})")
    if snap["nvidia_smi"]:
        print(f"nvidia-smi used : {snap['nvidia_smi']['used_gib']:6.2f} GiB")
    print(f"driver - reserved = {driver['used_gib'] - t['reserved_gib']:.2f} GiB: the CUDA context and anything outside PyTorch")
    assert t["reserved_gib"] >= t["allocated_gib"] and driver["used_gib"] >= t["reserved_gib"]
else:
    print("skipped: no CUDA device, so there is no GPU memory to compare (process RSS "
          f"here: {snap['rss_gib']:.2f} GiB)")

# %% [markdown]
# ### RoPE scaling, measured
#
# RoPE rotates each pair of channels of a query or key by an angle proportional to the position, at
# a different frequency per pair. Linear scaling divides every position by a factor: with factor 2,
# position 2,000 gets exactly the angles position 1,000 had, and the range doubles. The cell checks
# this with transformers' own RoPE code.

# %%
import copy
import math

import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
rope = config.rope_parameters.get("full_attention", config.rope_parameters)  # Gemma 3: one entry per layer type
theta = rope["rope_theta"]
inv_freq_plain = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
scaled_config = copy.deepcopy(config)
scaled_config.rope_parameters = {**rope, "rope_type": "linear", "factor": 2.0}
inv_freq_scaled, _ = ROPE_INIT_FUNCTIONS["linear"](scaled_config, "cpu")
print(f"inverse frequencies, first three: plain {inv_freq_plain[:3].tolist()}, linear x2 {inv_freq_scaled[:3].tolist()}")
assert torch.allclose(1000 * inv_freq_plain, 2000 * inv_freq_scaled)
slowest_turn = 2 * math.pi / inv_freq_plain[-1].item()
print(f"linear scaling x2: position 2000 is rotated exactly like position 1000 was -> the model's range doubles; "
      f"the slowest channel pair needs {slowest_turn:,.0f} positions for one full turn")

# %% [markdown]
# ### A model without RoPE
#
# The walkthrough asks what happens with a model that does not use RoPE. GPT-2 learns one position
# vector per position, added to the token embeddings, up to `n_positions`: past that there is no
# vector to look up, and nothing to scale. A tiny random GPT-2 with 32 positions, fed 40 tokens:

# %%
import torch
from transformers import GPT2Config, GPT2LMHeadModel

tiny_gpt2 = GPT2LMHeadModel(GPT2Config(n_positions=32, n_embd=32, n_layer=1, n_head=2, vocab_size=100,
                                            bos_token_id=None, eos_token_id=None))
try:
    tiny_gpt2(torch.zeros(1, 40, dtype=torch.long))
    outcome = "ran"
except (IndexError, RuntimeError) as err:
    outcome = f"failed: {type(err).__name__}"
print(f"GPT-2 with 32 learned positions, fed 40 tokens: {outcome}")
assert outcome.startswith("failed")

# %% [markdown]
# ### Does unsloth patch transformers?
#
# The walkthrough guesses so from unsloth's import message. `helpers.lab.patch_probe` records what
# names such as `transformers.Trainer.train` point to, in a fresh process without unsloth and in one
# that imports it and loads the model. GPU only; the CPU shows the unpatched baseline. On an H200
# (unsloth 2026.10.9, runs/LOG.md), `import unsloth` replaced `trl.SFTTrainer` and wrapped
# `Trainer.train`; loading then replaced `Trainer.training_step` and the model's attention and
# causal-LM forward functions.

# %%
import importlib.metadata
import importlib.util

from helpers.lab.patch_probe import changes, fingerprint_all


def show_changes(title, changed):
    print(f"{title}: {len(changed)} of the probed names changed")
    for name, change in changed.items():
        old, new = change["before"], change["after"]
        print(f"  {name}\n      {old.get('module')}.{old.get('qualname')} ({old.get('source')})"
              f"\n   -> {new.get('module')}.{new.get('qualname')} ({new.get('source')})")


if profile.uses_unsloth:
    from helpers.lab.patch_probe import run_probe
    from helpers.modeling import resolve_model_source

    plain = run_probe("plain")["without unsloth"]
    probed = run_probe("unsloth", resolve_model_source(profile), str(profile.max_seq_length),
                       "1" if profile.load_in_4bit else "0")
    show_changes("import unsloth (vs a process without it)", changes(plain, probed["after import unsloth"]))
    show_changes("then from_pretrained (same process, ids compared too)",
                 changes(probed["after import unsloth"], probed["after from_pretrained"],
                         fields=("id", "module", "qualname", "source")))
    patched = changes(plain, probed["after from_pretrained"])
    assert patched, "unsloth replaced none of the probed functions"
else:
    print("skipped: unsloth cannot be imported without a GPU, so the before/after probe runs on "
          "the GPU profiles only.")
    spec = importlib.util.find_spec("unsloth")  # finds the package without importing it
    if spec is None:
        print("unsloth is not installed in this environment (the CPU path never needs it), so its source "
              "cannot be read here either.")
    else:
        print(f"unsloth {importlib.metadata.version('unsloth')} is installed but not imported: its source "
              "(e.g. unsloth/models/llama.py) can be read here, though not run.")
    baseline = fingerprint_all()
    print(f"the unpatched baseline: {len(baseline)} names, none defined by unsloth (this kernel never imported it), e.g.")
    name = "transformers.Trainer.train"
    print(f"  {name}: {baseline[name]['module']}.{baseline[name]['qualname']} ({baseline[name]['source']})")
    assert all("unsloth" not in str(fp.get("module")) for fp in baseline.values())
