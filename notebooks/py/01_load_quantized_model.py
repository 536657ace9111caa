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
# Three settings in the walkthrough's very first call decide how much memory the run needs and what
# the model can do: `load_in_4bit=True`, `dtype=None`, and `max_seq_length=2048`. This notebook
# explains each, loads the model, and measures what was loaded.

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
# ## Why 4-bit, and why 4-bit forces LoRA
#
# A 7-billion-parameter model stored in bf16 takes 2 bytes per weight: about 14.5 GB before a single
# activation or optimizer state. **4-bit quantization** (bitsandbytes' NF4, as used by QLoRA) stores
# each weight as a 4-bit code instead. Weights are grouped in blocks of 64; each block keeps one
# scale, and each code indexes one of 16 levels placed at the quantiles of a normal distribution,
# which is how trained weights are roughly distributed. "Double quantization" then quantizes the
# per-block scales themselves. The result is a little over half a byte per weight, roughly 4 GB for
# Mistral-7B. During the forward pass each block is dequantized on the fly to the *compute dtype*
# (bf16 or fp16) just before its matrix multiplication.
#
# The price: those 4-bit codes cannot be trained. A gradient step asks for changes far smaller than
# the gap between two of the 16 levels, so they would round back to where they were, and the
# quantized tensor is not even a floating-point parameter PyTorch can update. So the base weights
# stay **frozen**, and learning happens in small extra matrices kept in higher precision next to them:
# **LoRA** adapters (notebook 04). This combination is QLoRA.
#
# The embedding matrices are not quantized at all, and not because this recipe trains them: bitsandbytes
# quantizes only linear layers, never `nn.Embedding`, and transformers leaves the output layer
# `lm_head` out of 4-bit by default (it is listed among the modules not to convert). That is what makes
# training them in full possible later (notebook 04); the cell after the loading call shows their
# storage dtype.
#
# 4-bit needs bitsandbytes' CUDA kernels, so the CPU profile loads plain fp32 weights. The recipe
# around it is unchanged.
#
# ## The compute dtype: bf16, fp16, or auto
#
# `dtype=None` means "pick for me". **bf16** keeps float32's 8-bit exponent (same range, less
# precision), so activations and gradients do not overflow, and training needs no loss scaling. It
# exists on NVIDIA Ampere and newer (A100, RTX 30xx, H100). Older GPUs such as Colab's T4 only have
# **fp16**, whose 5-bit exponent overflows above 65,504; trainers then multiply the loss by a
# scale factor to keep small gradients representable. The rule the helper applies (and unsloth
# applies for `dtype=None`): bf16 if the GPU supports it, else fp16, and fp32 on a CPU.

# %%
from helpers.modeling import resolve_dtype

print(f"compute dtype for {profile.name}: {resolve_dtype(profile)}")

# %% [markdown]
# ## The loading call, and its plain-transformers twin
#
# On a GPU the walkthrough loads through unsloth's `FastLanguageModel`, which wraps transformers'
# loader, applies bitsandbytes 4-bit quantization, and swaps in its own faster attention, RoPE and
# cross-entropy kernels. unsloth cannot even be imported without a GPU, so next to it stands the
# plain transformers call that does the same job: `BitsAndBytesConfig` for 4-bit where a GPU
# exists, nothing of the sort on a CPU. The profile decides which branch runs; later notebooks call
# `helpers.modeling.load_model_and_tokenizer`, which does the same and adds clear errors for a model
# that cannot be fetched and the check of a `max_seq_length` beyond the trained context (RoPE, below)
# (the project's tests check that this cell and the helper load the same model).

# %%
from helpers.modeling import ensure_pad_token, resolve_model_source

source = resolve_model_source(profile)  # a hub id, or the local folder converted in notebook 00

if profile.uses_unsloth:
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=source,
        max_seq_length=profile.max_seq_length,
        dtype=None,  # auto: bf16 where supported, else fp16
        load_in_4bit=profile.load_in_4bit,
    )
else:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quantization_config = (
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=resolve_dtype(profile))
        if profile.load_in_4bit else None
    )
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(
        source,
        dtype=resolve_dtype(profile),
        quantization_config=quantization_config,
        device_map={"": 0} if profile.device == "cuda" else None,
    )
if ensure_pad_token(tokenizer):  # a brand-new PAD token needs a row in the embedding matrix
    model.resize_token_embeddings(len(tokenizer))
print(type(model).__name__, "loaded from", profile.model_label)

# %% [markdown]
# ## What was loaded
#
# Counting parameters and grouping them by storage dtype shows what "4-bit" means in practice. On
# a GPU most of the weights are `uint8` tensors, each byte packing two 4-bit codes (so a count of
# stored elements is half the number of weights), while the embeddings and the normalisation weights
# stay in the compute dtype. On the CPU profile everything is fp32.

# %%
from collections import Counter

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

# %% [markdown]
# ### Is 4-bit quantization deterministic?
#
# NF4 quantization splits a weight matrix into blocks of 64, stores one scale per block (its largest
# absolute value) and replaces each weight by the nearest of 16 fixed levels. Nothing in that is
# random, so quantizing the same weights twice should give identical bytes, and loading the same
# checkpoint in 4-bit twice the same model. The cell checks it with bitsandbytes' own `quantize_4bit`
# on a seeded bf16 matrix: the packed codes, the block scales, and the dequantized result.
# bitsandbytes' 4-bit kernels need CUDA, so on the CPU the cell is skipped. On an H200, 16.8 M bf16
# weights quantized twice gave identical codes, scales and dequantized weights, with a mean absolute
# rounding error of 0.073 for weights of standard deviation 1: NF4 quantization is deterministic.

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
# ## `max_seq_length` and RoPE scaling
#
# `max_seq_length` is the longest sequence *this run* will feed the model; it sizes buffers and
# decides how text is cut into training rows. It is not the same thing as the context length the
# model was *trained* for, `max_position_embeddings` in its config.
#
# Llama-family models encode positions with **rotary position embeddings (RoPE)**: each pair of
# channels in a query or key vector is rotated by an angle proportional to the token's position,
# with a different frequency per pair (`inv_freq = 1 / theta^(2i/d)`). Attention then depends only on
# the *difference* of two positions. A model has only seen the angles that occur up to its trained
# length, so positions far beyond it produce rotations it never learned to read.
#
# **RoPE scaling** stretches the model's range: *linear* scaling (position interpolation) divides
# every position by a factor, so position 4,000 with factor 2 gets exactly the angles position 2,000
# had. Newer schemes (NTK-aware, YaRN, Llama-3's) scale low and high frequencies differently. When
# asked for a `max_seq_length` beyond the trained context, unsloth's loader adds such a scaling to the
# config and prints a notice. Mistral-7B v0.3's config says 32,768 positions, so the walkthrough's
# 2,048 needs none.
#
# > **The walkthrough says** that Mistral's context length is 8,192 and that RoPE adds position vectors
# > to the token embeddings. **In fact** 8,192 was the sliding-window size of the first Mistral-7B
# > (v0.1); v0.3's config has `max_position_embeddings = 32768` and no sliding window. And RoPE adds
# > nothing to the embeddings: it rotates the query and key vectors inside every attention layer,
# > which is why it can be rescaled after training. **Shown by** the config printed below, and by the
# > rotation angles this cell computes from transformers' own RoPE code (learned position vectors
# > that *are* added to the embeddings are GPT-2's way, measured at the end of this notebook).
#
# The cell below measures the claim with transformers' own RoPE code: the inverse frequencies of the
# model's configuration, with and without linear scaling by 2, and the rotation angles they give.

# %%
import copy
import math

import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

print(f"trained context (max_position_embeddings): {config.max_position_embeddings}")
print(f"this run's max_seq_length: {profile.max_seq_length}")
print(f"RoPE parameters in the config: {config.rope_parameters}")
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
# And a model **without RoPE**? GPT-2 learns one absolute position vector per position, up to
# `n_positions`. There is nothing to scale: past that length there is simply no vector to look up.
# The cell builds a tiny randomly initialised GPT-2 with 32 positions and feeds it 40 tokens.

# %%
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
# ## Memory after loading
#
# The walkthrough reports GPU memory at each stage of the run, and so do we. `helpers.memory`
# records every probe it can read (PyTorch's allocator, NVML, `nvidia-smi`, and the process's host
# memory) into `outputs/memory_stages.json`; notebook 06 plots the stages. On a CPU run only the
# host memory (RSS) is meaningful. We record once after loading and once after a forward pass,
# which allocates activations on top of the weights.

# %%
from helpers.memory import format_snapshot, record_stage

print(format_snapshot(record_stage("model loaded", "01")))

# %%
inputs = tokenizer(profile.prompt, return_tensors="pt").to(model.device)
with torch.no_grad():
    logits = model(**inputs).logits
print(f"logits shape {tuple(logits.shape)} = (batch, prompt tokens, vocabulary)")
assert logits.shape[-1] == config.vocab_size
print(format_snapshot(record_stage("after a forward pass", "01")))

# %% [markdown]
# ## Why does PyTorch report less GPU memory than `nvidia-smi`?
#
# The walkthrough prints PyTorch's figures and notices they are below what `nvidia-smi` shows. Both
# are right; they count different things:
#
# * `torch.cuda.memory_allocated()`: bytes held by live tensors right now.
# * `torch.cuda.memory_reserved()`: bytes PyTorch's **caching allocator** has obtained from the
#   driver. Freed tensors return their blocks to this cache, not to the driver, so that the next
#   allocation of a similar size is instant. Reserved ≥ allocated, and the gap is cache.
# * NVML (what `nvidia-smi` reads): everything the driver has handed to processes on the card, i.e.
#   the reserved memory *plus* the **CUDA context** (the loaded kernels of PyTorch, cuBLAS, cuDNN,
#   Triton..., typically 300-600 MiB) and any other process's memory.
#
# The cell reads all of them at the same moment. On a machine without a GPU it says so.

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
    print("no CUDA device: the GPU memory comparison runs on the GPU profiles only (process RSS "
          f"here: {snap['rss_gib']:.2f} GiB)")

# %% [markdown]
# ## Aside: does unsloth patch transformers?
#
# unsloth's speed comes from replacing parts of other libraries while your program runs: attention
# and normalisation forwards, the causal-LM forward (to fuse the cross-entropy), TRL's trainer
# classes, gradient checkpointing. That is why it insists on being imported before transformers.
# Instead of taking that on trust we can look: `helpers.lab.patch_probe` records what a dotted name such as
# `transformers.Trainer.train` points at (the object's `id`, `__module__`, `__qualname__` and the file
# and line that define its code) and compares two records.
#
# Import order is the whole point, so the measurement runs in fresh subprocesses (`python -c`), not
# in this kernel (which on the GPU branch imported unsloth in its first cell): one process imports
# the plain libraries without unsloth; the other imports unsloth first, records, loads the model with
# `FastLanguageModel.from_pretrained`, and records again. Object ids mean nothing across processes,
# so between processes the module, qualname and source location are compared; within the unsloth
# process the ids are compared too.
#
# unsloth cannot even be imported without an NVIDIA GPU, so on the CPU the probe is skipped. What the
# CPU *can* show is the unpatched baseline the GPU cell compares against (this kernel never imported
# unsloth), and whether unsloth's source is installed for reading.
#
# Measured on an H200 with unsloth 2026.10.9:
# `import unsloth` alone replaced `trl.SFTTrainer` (by `UnslothSFTTrainer`) and wrapped
# `transformers.Trainer.train`; `FastLanguageModel.from_pretrained` then replaced
# `Trainer.training_step`, `LlamaAttention.forward` (by `LlamaAttention_fast_forward`) and
# `LlamaForCausalLM.forward` (by unsloth's fused causal-LM forward). So yes: unsloth patches
# transformers and TRL in place, partly at import and partly when a model is loaded.

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
    print("skipped: unsloth cannot be imported without an NVIDIA GPU, so the before/after probe runs on "
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

# %% [markdown]
# ## Hand-over to the next notebooks
#
# The facts measured here go to `outputs/01_model_info.json`, with a manifest saying which model and
# profile they belong to (`helpers.artifacts.save_outputs`, explained in notebook 02).

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
