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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/07_going_further.ipynb)
#
# # 07 · Going further: forgetting, the open questions, merging, packing, and your own text
#
# Notebooks 00-06 ran the walkthrough's recipe and showed that it works: the held-out perplexity on
# TinyStories fell and the model's prose moved towards the stories. This notebook asks what that
# cost and what else one needs to know before using the result:
#
# 1. **Forgetting.** Did the model get worse at text that is *not* children's stories?
# 2. **The walkthrough's open questions**, each answered by a cell that measures: does unsloth
#    patch transformers, is 4-bit quantization deterministic, what RoPE scaling does to the config,
#    why PyTorch and `nvidia-smi` disagree, whether the embedding learning rate covers `lm_head`,
#    what "training embed_tokens in mixed precision" means, how much memory LoRA saves as sequences
#    grow, and what a streamer's first chunk holds.
# 3. **Save and merge.** The adapter reloads and reproduces its text; a merged model loads with plain
#    transformers alone; and why a CPT adapter is so large.
# 4. **Packing vs padding, measured** on this profile's data.
# 5. **Your own raw text**: a folder of `.txt` files instead of TinyStories.
#
# It reuses notebook 05's adapter and trains only for a few timed steps, so on the CPU default it
# takes about a minute and a half. Cells that need a GPU say so and are skipped on the CPU, with the
# reason printed.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("07_going_further")

# %% [markdown]
# ## Inputs from the earlier notebooks
#
# The adapter trained by notebook 05, and the in-domain results of notebooks 03 (before) and 06
# (after). A missing file stops here with the name of the notebook to run first.

# %%
from helpers.paths import require
from helpers.storage import read_json

adapter_dir = require("adapter")
before = read_json(require("before"))
after = read_json(require("after"))
print(f"in-domain (held-out TinyStories) perplexity from notebooks 03/06: "
      f"{after['perplexity_before']:.2f} → {after['perplexity_after']:.2f}")

# %% [markdown]
# ## 1 · Forgetting: the price of specialising
#
# Continued pre-training optimises one thing: the likelihood of the new text. Nothing in that loss
# rewards the model for keeping what it knew about anything else, and every weight the optimizer
# moves towards children's stories was also doing some other job. When the new domain is narrow,
# the model can become measurably worse at everything outside it. This is called **catastrophic
# forgetting**, although in practice it is usually gradual rather than catastrophic.
#
# The way to see it is the same instrument as for the gain: perplexity, but on text from *outside*
# the domain, measured before and after training with the same function and cut length. We need
# out-of-domain text that ships with the repository's environment and is selected the same way every
# time. Every Python installation carries one: `pydoc_data.topics.topics`, the sections of the
# language reference that `help("assert")` prints. It is general technical English with some code in
# it, about as far from "Lily and her dog went to the park" as a small offline sample can get. The
# helper sorts the topics by name, keeps those long enough to fill the profile's evaluation window
# (`eval_max_tokens`), and takes the first 16. (The text of these topics changes slightly between
# Python versions, so compare numbers only across runs on the same version; the header prints it.)

# %%
import platform

from helpers.forgetting import general_english_passages

passages = general_english_passages(count=16)
ood_names = [name for name, _ in passages]
ood_texts = [text for _, text in passages]
print(f"{len(passages)} help topics of Python {platform.python_version()}: {', '.join(ood_names)}")
print(f"each cut to {profile.eval_max_tokens} tokens; the first one begins: {ood_texts[0][:120]!r}")

# %% [markdown]
# ### Before: the base model
#
# The base model as notebook 03 loaded it. `perplexity_per_text` scores each passage separately
# (so that we can later ask *which* ones got worse) and `pooled` combines them into one
# token-weighted perplexity, the same number that scoring all passages in one call would give.

# %%
from helpers.forgetting import perplexity_per_text, pooled
from helpers.modeling import load_model_and_tokenizer

base_model, tokenizer = load_model_and_tokenizer(profile)
if profile.uses_unsloth:
    from unsloth import FastLanguageModel

    FastLanguageModel.for_inference(base_model)
ood_before_rows = perplexity_per_text(base_model, tokenizer, ood_texts, profile.eval_max_tokens)
ood_before = pooled(ood_before_rows)
print(f"out-of-domain perplexity of the base model: {ood_before:.2f} "
      f"over {sum(r['tokens'] for r in ood_before_rows)} predicted tokens")

# %% [markdown]
# ### After: base + the CPT adapter
#
# Loaded exactly as notebook 06 does, with `helpers.modeling.load_trained_model` (which holds
# notebook 06's code): on the GPU branch unsloth's `from_pretrained` takes the
# adapter folder and loads the 4-bit base underneath it; on the plain branch `PeftModel` attaches the
# adapter to the base model we already have (which it modifies in place, so no second copy of the
# weights is made).

# %%
import gc

import torch

from helpers.modeling import load_trained_model

if profile.uses_unsloth:  # unsloth loads its own base under the adapter: free this one first
    base_model = None
    gc.collect()
    torch.cuda.empty_cache()
model, tokenizer = load_trained_model(profile, adapter_dir, base_model, tokenizer)
ood_after_rows = perplexity_per_text(model, tokenizer, ood_texts, profile.eval_max_tokens)
ood_after = pooled(ood_after_rows)
print(f"Out-of-domain perplexity: {ood_before:.2f} → {ood_after:.2f}")

# %% [markdown]
# ### In-domain gain beside out-of-domain change
#
# The in-domain numbers are notebook 03's and 06's (held-out TinyStories, never trained on). The
# relative change is `after / before - 1`: negative means the model got better at that text.

# %%
from helpers.forgetting import relative_change

in_before, in_after = after["perplexity_before"], after["perplexity_after"]
in_change, ood_change = relative_change(in_before, in_after), relative_change(ood_before, ood_after)
print(f"{'text':<34}{'before':>8}{'after':>8}{'change':>9}")
domain = "held-out own text" if profile.text_dir else "held-out TinyStories"
print(f"{'in-domain: ' + domain:<34}{in_before:>8.2f}{in_after:>8.2f}{in_change:>+9.1%}")
print(f"{'out-of-domain: Python help topics':<34}{ood_before:>8.2f}{ood_after:>8.2f}{ood_change:>+9.1%}")
worse = [name for name, b, a in zip(ood_names, ood_before_rows, ood_after_rows, strict=True)
         if a["perplexity"] > b["perplexity"]]
print(f"{len(worse)} of {len(ood_names)} help topics got worse" + (f": {', '.join(worse)}" if worse else ""))
if not profile.text_dir:  # with your own (possibly tiny) folder these are reported, not asserted
    assert in_after < in_before, "CPT should have lowered the in-domain perplexity (notebook 06)"
    assert in_change < ood_change, "training should help its own domain more than unrelated text"

# %%
import matplotlib.pyplot as plt

from helpers.forgetting import plot_before_after

plot_before_after({"in-domain\n(held-out TinyStories)": (in_before, in_after),
                   "out-of-domain\n(Python help topics)": (ood_before, ood_after)},
                  title=f"Perplexity before and after CPT ({profile.name})")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Reading the result, and what to do about forgetting
#
# The two numbers answer different questions. The in-domain drop says how much the model learned
# about the new domain; the out-of-domain change says what that cost elsewhere. What matters is the
# trade: a large in-domain gain for a small out-of-domain loss is usually a good deal, and the reverse
# is a sign that training went too far.
#
# How large the cost is depends on how hard the model was pushed and how far the new domain is from
# what it knew. The offline default trains for only 12 small steps, and there the out-of-domain
# change is small next to the in-domain gain; on the committed CPU run it even fell a little.
# Forgetting is not automatic. One plausible reason for the improvement: SmolLM2-135M-*Instruct* has
# been tuned to answer chat turns, and a few steps of plain-text continuation (on any plain English)
# partly restore its skill at continuing plain text, which also helps on the help topics, while the
# story-specific habits have not yet had time to crowd anything out. The cell below prints which way
# this run went. Longer runs, higher learning rates and narrower domains push the out-of-domain number
# up; the walkthrough's full epoch on Mistral-7B is the place to watch for it.
#
# The usual remedies, roughly from most to least effective:
#
# * **Mix general text into the training data** ("replay"): a share of text like the original
#   pre-training data reminds the model of everything else while it learns the new domain.
# * **Train less hard**: a lower learning rate (and a lower *embedding* learning rate: the embedding
#   matrices are shared by every domain), a lower LoRA rank, or fewer steps. LoRA itself already
#   limits forgetting compared with full fine-tuning, because the update has low rank.
# * **Measure it during training**: evaluate an out-of-domain set like this one at checkpoints and
#   stop, or choose the checkpoint, where the trade is best.

# %%
if ood_change > 0.02:
    verdict = f"rose by {ood_change:.1%}: measurable forgetting"
elif ood_change < -0.02:
    verdict = f"fell by {-ood_change:.1%}: no forgetting at this training length"
else:
    verdict = f"barely moved ({ood_change:+.1%})"
print(f"In-domain perplexity fell by {-in_change:.1%}; out-of-domain perplexity {verdict}.")

# %% [markdown]
# ## 2 · The walkthrough's open questions, measured
#
# ### (a) Does unsloth patch transformers?
#
# unsloth's speed comes from replacing parts of other libraries while your program runs: attention
# and normalisation forwards, the causal-LM forward (to fuse the cross-entropy), TRL's trainer
# classes, gradient checkpointing. That is why it insists on being imported before transformers.
# Instead of taking that on trust we can look: `helpers.patches` records what a dotted name such as
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
# Measured on an H200 with unsloth 2026.10.9 (`docs/gpu-runs.md`, "Open questions on the GPU"):
# `import unsloth` alone replaced `trl.SFTTrainer` (by `UnslothSFTTrainer`) and wrapped
# `transformers.Trainer.train`; `FastLanguageModel.from_pretrained` then replaced
# `Trainer.training_step`, `LlamaAttention.forward` (by `LlamaAttention_fast_forward`) and
# `LlamaForCausalLM.forward` (by unsloth's fused causal-LM forward). So yes: unsloth patches
# transformers and TRL in place, partly at import and partly when a model is loaded.

# %%
import importlib.metadata
import importlib.util

from helpers.patches import changes, snapshot


def show_changes(title, changed):
    print(f"{title}: {len(changed)} of the probed names changed")
    for name, change in changed.items():
        old, new = change["before"], change["after"]
        print(f"  {name}\n      {old.get('module')}.{old.get('qualname')} ({old.get('source')})"
              f"\n   -> {new.get('module')}.{new.get('qualname')} ({new.get('source')})")


if profile.uses_unsloth:
    from helpers.modeling import resolve_model_source
    from helpers.patches import run_probe

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
    baseline = snapshot()
    print("\nthe unpatched baseline (this kernel never imported unsloth):")
    for name, fp in baseline.items():
        print(f"  {name:<72} {fp['source']}")
    assert all("unsloth" not in str(fp.get("module")) for fp in baseline.values())

# %% [markdown]
# ### (b) Is 4-bit quantization deterministic?
#
# NF4 quantization (notebook 01) splits a weight matrix into blocks of 64, stores one scale per block
# (its largest absolute value) and replaces each weight by the nearest of 16 fixed levels. Nothing in
# that is random, so quantizing the same weights twice should give identical bytes, and loading the
# same checkpoint in 4-bit twice should give the same model. The cell checks it with bitsandbytes'
# own `quantize_4bit` on a seeded bf16 matrix: the packed codes, the block scales, and the dequantized
# result. bitsandbytes' 4-bit kernels need CUDA, so on the CPU the cell is skipped.
#
# Measured on an H200 (`docs/gpu-runs.md`): 16.8 M bf16 weights quantized twice gave identical packed
# codes (8.4 MB of uint8), identical block scales and identical dequantized weights; the mean absolute
# rounding error was 0.073 for weights of standard deviation 1. NF4 quantization is deterministic.

# %%
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
# ### (c) RoPE: what a `max_seq_length` beyond the trained context does to the config
#
# Notebook 01 showed the arithmetic of linear RoPE scaling (position interpolation: position 2,000
# rotated exactly like position 1,000 was) and what happens to a model *without* RoPE, GPT-2 with its
# learned position table, fed more tokens than it has positions: it fails. Here is the other half:
# what actually changes in the model's configuration when you ask for a longer context.
#
# In the pinned unsloth (2026.10.9, `unsloth/models/llama.py`), `from_pretrained` with a
# `max_seq_length` above the config's `max_position_embeddings` sets
# `rope_scaling = {"type": "linear", "factor": max_seq_length / max_position_embeddings, ...}` (keeping a
# model's native `llama3` scaling where it has one), prints a notice, and widens
# `max_position_embeddings` to the new length. The cell builds the same change on a copy of this
# model's config, 2.5 times its trained context, and asks transformers' own RoPE code for the
# frequencies. For contrast it also builds the *dynamic* (NTK) variant transformers offers, which
# changes nothing until a sequence actually exceeds the trained length and then raises the RoPE base
# instead of dividing the positions.

# %%
import copy

from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

config = copy.deepcopy(model.config)
trained = config.max_position_embeddings
wanted = trained * 5 // 2
linear = copy.deepcopy(config)
linear.rope_parameters = {**config.rope_parameters, "rope_type": "linear", "factor": wanted / trained}
linear.max_position_embeddings = wanted
dynamic = copy.deepcopy(config)
dynamic.rope_parameters = {**config.rope_parameters, "rope_type": "dynamic", "factor": wanted / trained}
print(f"trained context {trained}, asked for {wanted}")
print(f"original config: rope_parameters={config.rope_parameters}, max_position_embeddings={trained}")
print(f"linear scaling : rope_parameters={linear.rope_parameters}, max_position_embeddings={wanted}")
head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
theta = config.rope_parameters["rope_theta"]
plain_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))  # as in notebook 01
linear_freq, _ = ROPE_INIT_FUNCTIONS["linear"](linear, "cpu")
dynamic_short, _ = ROPE_INIT_FUNCTIONS["dynamic"](dynamic, "cpu", seq_len=trained)
dynamic_long, _ = ROPE_INIT_FUNCTIONS["dynamic"](dynamic, "cpu", seq_len=wanted)
print(f"slowest inverse frequency: plain {plain_freq[-1]:.3e}, linear {linear_freq[-1]:.3e}, "
      f"dynamic at {trained} tokens {dynamic_short[-1]:.3e}, at {wanted} tokens {dynamic_long[-1]:.3e}")
assert torch.allclose(linear_freq * wanted / trained, plain_freq)  # every frequency divided by the factor
assert torch.allclose(dynamic_short, plain_freq) and dynamic_long[-1] < plain_freq[-1]

# %% [markdown]
# Linear scaling divides every frequency by the same factor, so *all* positions are squeezed,
# including the short distances the model relies on most; that is why a model usually needs some
# training at the longer length after linear scaling. Dynamic scaling leaves short contexts exactly as
# trained (its frequencies at the trained length are the original ones) and stretches mainly the slow,
# long-range channels once a sequence gets longer. For this walkthrough none of this applies:
# Mistral-7B v0.3 was trained for 32,768 positions and the recipe asks for 2,048.
#
# ### (d) Why does PyTorch report less GPU memory than `nvidia-smi`?
#
# Notebook 01 answered this with a cell that reads every probe at the same moment: PyTorch's
# *allocated* memory counts live tensors, its *reserved* memory adds the blocks its caching allocator
# keeps for reuse, and the driver (NVML, `nvidia-smi`) additionally counts the CUDA context: the loaded
# kernels of PyTorch, cuBLAS and friends, typically several hundred MiB. The same reading for this
# notebook's process, on the GPU only:

# %%
from helpers.memory import snapshot as memory_snapshot

reading = memory_snapshot()
if reading["torch"] and (reading["nvml"] or reading["nvidia_smi"]):
    driver = (reading["nvml"] or reading["nvidia_smi"])["used_gib"]
    t = reading["torch"]
    print(f"torch allocated {t['allocated_gib']:.2f} GiB <= reserved {t['reserved_gib']:.2f} GiB "
          f"<= driver {driver:.2f} GiB (context and other processes: {driver - t['reserved_gib']:.2f} GiB)")
    assert t["allocated_gib"] <= t["reserved_gib"] <= driver
else:
    print("skipped: no CUDA device, so there is no GPU memory to compare (see notebook 01's GPU cell); "
          f"this process's host memory (RSS) is {reading['rss_gib']:.2f} GiB.")

# %% [markdown]
# ### (e) Does the embedding learning rate also apply to `lm_head`?
#
# Notebook 05 printed the optimizer's parameter groups for this profile. SmolLM2 **ties** its input
# and output embeddings, so there `lm_head` *is* `embed_tokens`: one matrix, one trainable copy, and
# the question cannot be told apart from "does it apply to embed_tokens". Mistral-7B does not tie
# them. To answer for an untied model without downloading one, we build a tiny random Llama with
# `tie_word_embeddings=False`, add LoRA with the helpers' own configuration (this profile's targets,
# rank lowered to suit the tiny size), build the trainer with `helpers.training.build_trainer`
# (`EmbeddingLRTrainer`, the plain twin of `UnslothTrainer`) and print the groups its optimizer really
# has. The tiny model runs on the CPU on every profile; it only has to have the right *shape*.

# %%
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from helpers.paths import outputs_dir
from helpers.training import EMBEDDING_GROUP, add_lora, build_trainer, describe_param_groups

tiny_profile = profile.replace(backend="transformers", device="cpu", load_in_4bit=False, dtype="float32",
                               use_gradient_checkpointing=False, optim="adamw_torch", lora_r=8)
torch.manual_seed(profile.seed)
tiny = LlamaForCausalLM(LlamaConfig(
    vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
tiny = add_lora(tiny, tiny_profile)
tiny_trainer = build_trainer(tiny_profile, tiny, tokenizer, Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 4}),
                             output_dir=str(outputs_dir() / "07_tiny_trainer"))
tiny_trainer.create_optimizer()
tiny_groups = describe_param_groups(tiny_trainer.optimizer, tiny)
for group in tiny_groups:
    print(f"{group['group']:<36} lr={group['lr']:.1e}  tensors={group['tensors']:3d}  modules: "
          f"{', '.join(group['modules'][:4])}{' ...' if len(group['modules']) > 4 else ''}")
embedding_group = next(g for g in tiny_groups if g["group"] == EMBEDDING_GROUP)
assert {"embed_tokens", "lm_head"} <= set(embedding_group["modules"])
assert embedding_group["lr"] == tiny_profile.embedding_learning_rate
tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
print(f"\nuntied model: lm_head is in the embedding group at lr={embedding_group['lr']:.0e}, beside embed_tokens.")
print(f"this profile's model ties them: lm_head is embed_tokens -> {tied}")

# %% [markdown]
# So yes: the separate, smaller learning rate applies to both matrices, which is what `UnslothTrainer`
# does as well (notebook 05 asserted its groups on the GPU branch).
#
# ### (f) What does "Training embed_tokens in mixed precision" mean?
#
# unsloth prints `Unsloth: Training embed_tokens in mixed precision to save VRAM` when the embeddings
# are trained. Reading the pinned source (`_offload_frozen_module_for_training` in
# `unsloth/models/llama.py`) tells what happens: PEFT keeps two copies of each embedding module, the
# frozen original and the trainable copy (`modules_to_save`). unsloth keeps the trainable copy on the GPU
# in the **model's dtype** (bf16, or fp32 where the model is fp16, because fp16 weights cannot be
# trained with a gradient scaler), and moves the frozen original to **CPU memory**, since it is never
# used again while the copy exists. "Mixed precision" therefore means: the embedding copies are
# stored and updated in 16 bits (bf16), not in fp32 like the LoRA matrices, next to a 4-bit frozen
# body; that halves their weight and optimizer-state memory. The cell prints what this run holds.

# %%
wrappers = [(name, m) for name, m in model.named_modules()
            if hasattr(m, "original_module") and hasattr(m, "modules_to_save")]
for name, wrapper in wrappers:
    original, copy_ = wrapper.original_module.weight, wrapper.modules_to_save["default"].weight
    print(f"{name.split('.')[-1]:<13} frozen original: {original.dtype} on {original.device}; "
          f"trained copy: {copy_.dtype} on {copy_.device}")
frozen_projection = next(p for n, p in model.named_parameters() if "q_proj.base_layer.weight" in n)
lora_matrix = next(p for n, p in model.named_parameters() if "lora_A" in n)
print(f"frozen q_proj weight: {frozen_projection.dtype}; LoRA A matrix: {lora_matrix.dtype}")
assert wrappers and all(w.modules_to_save["default"].weight.dtype.is_floating_point for _, w in wrappers)

# %% [markdown]
# On the CPU everything is fp32: there is no 4-bit and nothing to save by mixing precisions. On the
# GPU branch the frozen projections show up as packed `uint8` (4-bit), the embedding copies in bf16
# and the LoRA matrices in fp32 (the project's GPU run record, `docs/gpu-runs.md`, shows the same
# for training).
#
# ### (g) How much memory does LoRA save as the sequence grows?
#
# A training step holds three things: the weights; for every *trainable* parameter a gradient and
# AdamW's two statistics; and the activations kept for the backward pass, which grow with batch ×
# sequence length no matter what is trained. LoRA removes almost all of the second item and none of
# the third, so its relative saving is largest for short sequences and shrinks as they grow
# (gradient checkpointing, notebook 04, is the tool for activations). The cell measures one step of a
# small random Llama (about 150 M parameters, bf16) at three lengths: full fine-tuning, this profile's
# CPT LoRA (embeddings trained in full), and LoRA on the projections only. PyTorch's CUDA allocator
# reports the peak; there is no equivalent on the CPU, so the cell is skipped there. The measurement
# runs in a fresh process without unsloth: this kernel's unsloth has patched the Llama classes for
# its own loader, and the question is about plain LoRA, not about unsloth's kernels.
#
# What it measured on an H200 (`docs/gpu-runs.md`, "Open questions on the GPU"): peak GiB of one step
# at 512 / 2,048 / 8,192 tokens were 1.61 / 1.78 / 6.18 for full fine-tuning and 0.77 / 2.12 / 7.53 for
# LoRA on the projections. LoRA saved 52% at 512 tokens and then used *more* memory than full
# fine-tuning (-19%, -22%). For a model this small the weights, gradients and optimizer state that
# LoRA saves are about 1 GiB, while activations grow with the sequence, and PEFT's LoRA adds
# activations of its own: by default it keeps the adapter weights in fp32, so each of the seven
# adapted projections per layer casts its bf16 input to an fp32 copy for the adapter path, and that
# copy is saved for the backward pass. (That explanation fits the numbers but was not profiled.) For
# a 7B model the saved part is tens of GiB and dominates; for long sequences the activation side is
# what gradient checkpointing (and unsloth's fused LoRA kernels) are for. The asserts below hold what
# was measured: LoRA saves at the shortest length, its relative saving shrinks as sequences grow, and
# training the embeddings in full costs more than LoRA alone.

# %%
if torch.cuda.is_available():
    from helpers.lora_memory import compare_in_fresh_process

    memory_rows = compare_in_fresh_process([512, 2048, 8192], lora_r=16)
    print(f"{'tokens':>7}{'full FT':>10}{'CPT LoRA':>10}{'LoRA':>9}   peak GiB of one step, batch 1")
    for row in memory_rows:
        print(f"{row['tokens']:>7}{row['full']:>10.2f}{row['CPT LoRA']:>10.2f}{row['LoRA']:>9.2f}   "
              f"LoRA saves {1 - row['LoRA'] / row['full']:.0%}")
    assert memory_rows[0]["LoRA"] < memory_rows[0]["full"], "LoRA should save memory on short sequences"
    assert all(row["LoRA"] < row["CPT LoRA"] for row in memory_rows), "full embedding copies cost memory"
    assert 1 - memory_rows[-1]["LoRA"] / memory_rows[-1]["full"] < 1 - memory_rows[0]["LoRA"] / memory_rows[0]["full"]
else:
    print("skipped: peak memory of a training step is read from PyTorch's CUDA allocator, which needs a "
          "GPU; on the CPU there is no comparable per-step peak to read.")

# %% [markdown]
# ### (h) What does the streamer's first chunk hold?
#
# Notebook 03 measured it with `skip_prompt=False`: the first chunk is the prompt minus its last word,
# because the streamer only releases text up to the last space it has seen (the next token might
# still extend the current word). With `skip_prompt=True`, which `helpers.streaming.stream_generate`
# uses, the prompt is never emitted, and the first chunk is what the first generated token releases:
# at most the space in front of a word that may not be finished yet, and with tokenizers that do not
# put the space into the token, nothing at all. A short re-check on this model:

# %%
from threading import Thread

from transformers import TextIteratorStreamer

streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
inputs = tokenizer(profile.prompt, return_tensors="pt").to(next(model.parameters()).device)
thread = Thread(target=model.generate, kwargs=dict(inputs, streamer=streamer, max_new_tokens=8, do_sample=False,
                                                   pad_token_id=tokenizer.pad_token_id))
thread.start()
first_chunks = list(streamer)
thread.join()
print(f"notebook 03, skip_prompt=False: first chunk {before['first_chunk']!r}")
print(f"here, skip_prompt=True: first chunks {first_chunks[:4]}")
assert first_chunks[0].strip() == "", "with skip_prompt=True the first chunk holds no word yet"

# %% [markdown]
# ## 3 · Save and merge
#
# Notebook 05 saved the result as a **PEFT adapter**: only what was trained, plus a config that names
# the base model. That is compact to share and lets one base serve several adapters, but using it
# needs the base model *and* the `peft` library. For serving, or for tools that know nothing of PEFT,
# one **merges**: every LoRA pair is folded into the weight it adapts (`W ← W + (α/√r) · B A` with
# rsLoRA), the trained embedding copies replace the originals, and what remains is an ordinary model.
#
# ### The adapter reloads and reproduces its text
#
# This kernel is a fresh process: it loaded the adapter from disk, exactly as anyone receiving the
# folder would. Greedy decoding has no randomness, so the same prompt must give notebook 06's text,
# token for token.

# %%
import textwrap

from helpers.merging import greedy_text

adapter_text = greedy_text(model, tokenizer, profile.prompt, profile.max_new_tokens)
print(textwrap.fill(profile.prompt + adapter_text, width=100))
print(f"\nsame text as notebook 06: {adapter_text == after['text_after']}")
assert adapter_text == after["text_after"], "the reloaded adapter should reproduce notebook 06's greedy text"

# %% [markdown]
# ### Merging, in which precision
#
# The sum `W + scale · B A` has to be computed and stored in a floating-point format. In bf16, with its
# 8 significant bits, an update smaller than about 0.4% of a weight is rounded away, so merges are best
# computed in fp32 and then stored in the model's dtype (which is what unsloth's merge does). On the
# CPU the model *is* fp32, so merging is exact up to fp32 rounding and we save fp32:
# `helpers.merging.merge_adapter` (PEFT's `merge_and_unload`, refusing a quantized base) and
# `save_merged` (written atomically to `outputs/07_merged`).
#
# A 4-bit base cannot be merged into: the sum is not an NF4 value, and re-quantizing it would add new
# rounding error. On the GPU branch the cell uses the walkthrough's own one-liner,
# `model.save_pretrained_merged(folder, tokenizer, save_method="merged_16bit")`, which in the pinned
# unsloth fetches the base model's original 16-bit weights and adds the LoRA products to them. One
# subtlety: the adapter was trained on top of the NF4-*rounded* weights, so the 16-bit merged model is
# slightly different from the one that was trained, and its greedy text may part from the 4-bit run's
# after a while. The GPU branch therefore reports that comparison instead of asserting it.

# %%
from helpers.merging import merge_adapter, save_merged
from helpers.paths import artifact_path, relative
from helpers.storage import save_directory_atomically

if profile.uses_unsloth:
    merged_dir = save_directory_atomically(
        artifact_path("merged"),
        lambda folder: model.save_pretrained_merged(str(folder), tokenizer, save_method="merged_16bit"))
    merged_text = None  # no merged model in this kernel: the check below loads the folder
else:
    merged = merge_adapter(model)
    merged_text = greedy_text(merged, tokenizer, profile.prompt, profile.max_new_tokens)
    print(f"{type(merged).__name__} ({merged.dtype}); any PEFT layers left: "
          f"{any('lora_' in n or 'modules_to_save' in n for n, _ in merged.named_parameters())}")
    print(f"merged model, same greedy text as the adapter: {merged_text == adapter_text}")
    assert merged_text == adapter_text
    merged_dir = save_merged(merged, tokenizer, artifact_path("merged"))
print(f"merged model saved to {relative(merged_dir)}")

# %% [markdown]
# ### The merged folder loads with transformers alone
#
# The proof that the folder needs nothing else is a fresh Python process in which `peft` is made
# unimportable *before* transformers is imported (`sys.modules["peft"] = None`): it loads the folder
# with `AutoModelForCausalLM.from_pretrained` in the dtype it was saved in, and generates greedily from
# the same prompt.

# %%
from helpers.merging import generate_without_peft

fresh = generate_without_peft(merged_dir, profile.prompt, profile.max_new_tokens,
                              device="cuda:0" if profile.device == "cuda" else "cpu")
print(f"{relative(merged_dir)}: loaded as {fresh['class']} ({fresh['dtype']}) in a process without peft "
      f"(peft imported there: {fresh['peft_imported']})")
assert not fresh["peft_imported"] and fresh["text"].strip()
if merged_text is not None:
    print(f"same greedy text as the merged model in this kernel: {fresh['text'] == merged_text}")
    assert fresh["text"] == merged_text == adapter_text
else:
    same = fresh["text"] == adapter_text
    print(f"same greedy text as the 4-bit adapter run: {same}"
          + ("" if same else " (expected to differ a little: the adapter was trained on NF4-rounded weights)"))
    print(textwrap.fill(profile.prompt + fresh["text"], width=100))

# ### Why a CPT adapter is nearly as large as the model
#
# An SFT adapter of LoRA matrices alone is a few megabytes. A CPT adapter also carries **full copies**
# of `embed_tokens` and `lm_head` (notebook 04), each `vocabulary × hidden` numbers. PEFT stores both
# even when they are tied (one matrix saved under two names), and for a small model with a large
# vocabulary those matrices are a big share of all weights: SmolLM2-135M's 49,152 × 576 embedding is a
# fifth of its parameters. For Mistral-7B the two 32,768 × 4,096 matrices are 268 M numbers (about
# 0.54 GB in bf16), plus about 0.34 GB of rank-128 LoRA matrices: under a GB, against 14.5 GB for the
# merged bf16 model, but still hundreds of times an SFT adapter.

# %%
from helpers.merging import adapter_composition, folder_size_bytes

adapter_bytes = folder_size_bytes(adapter_dir, "*.safetensors")
model_bytes = folder_size_bytes(merged_dir, "*.safetensors")
for kind, entry in adapter_composition(adapter_dir).items():
    print(f"  {kind:<36} {entry['tensors']:4d} tensors {entry['parameters'] / 1e6:8.2f} M parameters "
          f"{entry['bytes'] / 1e6:8.1f} MB")
print(f"adapter {adapter_bytes / 1e6:.0f} MB vs merged model {model_bytes / 1e6:.0f} MB "
      f"({adapter_bytes / model_bytes:.0%} of it)")
assert adapter_bytes > 0.1 * model_bytes, "the full embedding copies should make the adapter a sizeable share"

# %% [markdown]
# ## 4 · Packing vs padding, measured
#
# Notebook 02 introduced the two ways of turning documents into rectangular batches. **Padding**
# (the walkthrough's setting) keeps one document per row, cut at `max_seq_length`, and fills shorter
# rows with PAD up to the longest row of the batch; the padding costs compute and teaches nothing,
# and whatever lies past `max_seq_length` is thrown away. **Packing** concatenates the documents
# (each ending in EOS) and cuts the stream into full blocks, so there is no padding and nothing is
# lost but the stream's tail. *Padding-free* batching, which unsloth switches on by itself on recent
# GPUs, gets packing's efficiency while keeping documents apart in attention.
#
# The measurement: both kinds of rows built from this profile's training stories (notebook 02's),
# trained for a few optimizer steps each on a freshly loaded base with fresh LoRA adapters, with the
# causal-LM collator that pads each batch to its longest row. The two settings take turns step by
# step, so a slow moment on a shared machine hits both; each keeps its own weights and optimizer;
# the first step of each is not timed (first-call allocations); and the speed is the median of the
# per-step rates, counting only **real** (non-pad) tokens.

# %%
from datasets import disable_progress_bars, load_from_disk

from helpers.data import pack_blocks, tokenize, truncate_rows

disable_progress_bars()  # datasets' per-call progress bars would bury the counts printed below

model = merged = None  # free the inference models before loading a fresh one to train
gc.collect()
if torch.cuda.is_available():
    torch.cuda.empty_cache()
if profile.text_dir:  # a small folder of your own may not fill a batch: measure on the shipped sample
    from helpers.data import append_eos, load_raw_dataset

    stories = append_eos(load_raw_dataset(profile.replace(text_dir=None))[0], tokenizer.eos_token)
else:
    stories = load_from_disk(str(require("text_dataset")))  # notebook 02's stories, each ending in EOS
token_lists = tokenize(stories, tokenizer)["input_ids"]
padded_rows, truncated = truncate_rows(token_lists, profile.max_seq_length)
packed_rows, tail = pack_blocks(token_lists, profile.max_seq_length)
print(f"{len(token_lists)} stories -> padded: {len(padded_rows)} rows ({truncated} truncated); "
      f"packed: {len(packed_rows)} blocks of {profile.max_seq_length} ({tail} tail tokens left out)")

# %%
from helpers.packing import format_comparison, measure_training_speed

train_model, tokenizer = load_model_and_tokenizer(profile)
train_model = add_lora(train_model, profile)
speed = measure_training_speed(
    train_model, tokenizer, {"padded rows": padded_rows, "packed blocks": packed_rows},
    batch_size=profile.per_device_train_batch_size, steps=3, learning_rate=profile.learning_rate,
    embedding_learning_rate=profile.embedding_learning_rate, seed=profile.seed)
print(format_comparison(speed))
speedup = speed["packed blocks"]["real_tokens_per_s"] / speed["padded rows"]["real_tokens_per_s"]
print(f"packing trains {speedup:.2f}x as many real tokens per second as padding "
      f"(batch {profile.per_device_train_batch_size}, 3 timed steps each)")
assert speed["packed blocks"]["padding_share"] == 0.0 < speed["padded rows"]["padding_share"]
assert speedup >= 1.0, "packing should not train fewer real tokens per second than padding"

# %% [markdown]
# Where does the gain come from? Part is the padding share in the table: those positions go through
# every layer and are then ignored by the loss. The rest is that a batch with padding needs an
# explicit attention mask, while a batch of full blocks is plain causal attention, the fastest path.
# The loss column is *not* a quality comparison: padded rows always start at a story's beginning
# (the easy, formulaic "Once upon a time" part, and the part of a long story that survives truncation),
# while packed blocks start anywhere, often mid-story with little context, so their average loss is
# higher on the same model.
#
# Which is the default? The CPU profile packs (`packing=True`), the faster setting here, and the
# one that also keeps the long stories' endings. The GPU profile keeps the walkthrough's padded rows,
# where unsloth's padding-free batching removes most of the padding cost anyway. Either way it is one
# switch: `profile.replace(packing=False)` (or `True`), which `helpers.data.build_train_dataset` and the
# trainer both follow.

# %%
print(f"this profile: packing={profile.packing} "
      f"({'packed blocks' if profile.packing else 'padded rows'}, one switch from the other)")
if profile.device == "cpu":
    assert profile.packing, "the CPU default should be the faster setting measured above"

# %% [markdown]
# ## 5 · Your own raw text
#
# Everything above used TinyStories. To continue pre-training on your own text, point the series at
# a folder of `.txt` files:
#
# ```bash
# CPT_TEXT_DIR=path/to/folder make run                               # one document per file
# CPT_TEXT_DIR=path/to/folder CPT_SPLIT_ON_BLANK_LINES=1 make run    # one document per paragraph
# ```
#
# `helpers.profiles.select_profile` (which every notebook's first cell calls) then returns the chosen
# profile with `text_dir` set, a relative path being taken from the project root, and the header says
# so. `helpers.data.load_text_folder` reads every `*.txt` below the folder as UTF-8, one document per
# file or one per blank-line-separated paragraph, and skips empty ones. From there the path is the same
# as for the stories: `append_eos` ends every document with the tokenizer's EOS (so the model learns
# where a document stops) and `build_train_dataset` packs the token stream into `max_seq_length` blocks
# (or pads one document per row when the profile says `packing=False`).
#
# The cell runs this on `tests/data/own_text/`, three short texts written for this repository (or on
# your folder, when `CPT_TEXT_DIR` is set), both ways of cutting documents, and prints what gets counted.

# %%
import os

from helpers.data import append_eos, build_train_dataset, load_raw_dataset
from helpers.profiles import SPLIT_ENV_VAR, TEXT_DIR_ENV_VAR, select_profile

text_env = {**os.environ, TEXT_DIR_ENV_VAR: os.environ.get(TEXT_DIR_ENV_VAR) or "tests/data/own_text"}
own_counts = {}
for split in (False, True):
    own_profile, own_reason = select_profile(env={**text_env, SPLIT_ENV_VAR: "1" if split else "0"})
    documents, _ = load_raw_dataset(own_profile)
    own_rows, own_stats = build_train_dataset(append_eos(documents, tokenizer.eos_token), tokenizer, own_profile)
    own_counts["one per paragraph" if split else "one per file"] = own_stats
    stream_eos = sum(ids.count(tokenizer.eos_token_id) for ids in tokenize(append_eos(documents, tokenizer.eos_token),
                                                                            tokenizer)["input_ids"])
    assert stream_eos == own_stats["documents"], "exactly one EOS per document"
    if own_stats["packing"]:
        assert own_stats["rows"] * own_stats["max_seq_length"] + own_stats["tail_tokens_dropped"] == own_stats["tokens"]
print(f"folder: {relative(own_profile.text_dir)}; profile: {own_profile.name} "
      f"(packing={own_profile.packing}, max_seq_length={own_profile.max_seq_length})")
print(f"{'cut into documents':<20}{'documents':>10}{'tokens':>8}{'rows':>6}{'tail dropped':>14}{'truncated':>11}")
for label, s in own_counts.items():
    print(f"{label:<20}{s['documents']:>10}{s['tokens']:>8}{s['rows']:>6}"
          f"{s.get('tail_tokens_dropped', 0):>14}{s.get('rows_truncated', 0):>11}")

# %% [markdown]
# Three things to notice. Splitting on blank lines gives more, shorter documents: each blank line
# between paragraphs becomes an EOS, so the token count hardly changes, but the model is now told that
# every paragraph is a document of its own, which is right for a file of independent notes and wrong
# for a story told over several paragraphs. With packing, the stream's last partial block is dropped:
# harmless for a large corpus, but a folder smaller than one block yields *no* training rows at all
# (this example is smaller than one of the GPU profile's 2,048-token blocks; that profile pads one
# document per row instead, so nothing is lost there). And every document ends in exactly one EOS,
# which the cell asserted.
#
# Practical tips: save files as **UTF-8** (the loader stops with a message naming the file otherwise;
# `iconv -f latin1 -t utf-8` converts); put **one document per file** when documents are long and
# self-contained (articles, chapters), and **split on blank lines** when a file is a collection of
# short independent pieces (notes, entries), so that EOS marks the real boundaries; remove
# boilerplate such as headers, footers and licence blocks repeated in every file, which the model
# would otherwise learn very well. Held-out evaluation needs text the model is not trained on: the
# loader keeps every tenth document of the folder (at least one) aside as the validation split, which
# notebooks 03 and 06 use for the perplexity; the counts above are for the training documents.

# %% [markdown]
# ## 6 · Going further: more than one GPU
#
# Everything here ran on one device. `scripts/train_cpt.py` is the same recipe as a script: it reads
# the same profiles and calls the same helpers as notebooks 01 to 05, and runs unchanged on one GPU
# (`python scripts/train_cpt.py`) and on N GPUs (`accelerate launch --num_processes N
# scripts/train_cpt.py`, or `torchrun --nproc_per_node N ...`). Three strategies exist; for this recipe
# the choice is easy:
#
# * **DDP (data parallel)**: each GPU holds the whole model (the frozen 4-bit base, the adapters, the
#   embedding copies), trains on its share of the batch, and the GPUs average the trainable
#   gradients once per optimizer step. Right whenever the model trains on one card, which is the case
#   here: Mistral-7B in 4-bit with r = 128 and both embedding copies peaked at about 10 GiB in
#   `benchmarks/RESULTS.md`. The script keeps the *global* batch of the recipe (it divides gradient
#   accumulation by N), so the learning rates and the loss curve stay those of one GPU; only rank 0
#   prints, evaluates and saves, and `--check-sync` proves that every rank holds identical adapter
#   weights after a step.
# * **FSDP** (FSDP-QLoRA) shards parameters, gradients and optimizer state across GPUs and gathers
#   each layer just before it runs: for models that do *not* fit one card (70B in 4-bit). It needs
#   `bnb_4bit_quant_storage=torch.bfloat16` so that the packed 4-bit weights are float tensors FSDP can
#   shard, and PEFT lists `modules_to_save` (how the embeddings train here) as untested under FSDP.
# * **DeepSpeed ZeRO** 1/2/3 shards optimizer state, then gradients, then parameters; ZeRO-3 is
#   FSDP's counterpart with its own configuration, and not among this project's pins.
#
# Measured on 2 GPUs with the small smoke profile (`docs/gpu-runs.md`, "Multi-GPU (DDP) run"):
# identical weights on both ranks after every checked step, the same loss as one GPU to within
# 2e-6, and 1.55x the one-GPU throughput: a 52 M-parameter model spends much of each step on work
# that a second GPU does not split (optimizer update, logging), so a 7B model should scale better.
# `docs/multi-gpu.md` has the full comparison, the launch commands and the FSDP settings.

# %% [markdown]
# ## Results
#
# The numbers of this notebook go to `outputs/07_results.json`.

# %%
from helpers.storage import write_json

results = {
    "profile": profile.name,
    "in_domain_perplexity": [in_before, in_after],
    "out_of_domain_perplexity": [ood_before, ood_after],
    "out_of_domain_topics": ood_names,
    "adapter_mb": adapter_bytes / 1e6,
    "merged_model_mb": model_bytes / 1e6,
    "merged_text_matches_adapter": fresh["text"] == adapter_text,
    "packing": {name: {k: v for k, v in r.items() if k != "losses"} for name, r in speed.items()},
    "packing_speedup": speedup,
    "own_text": own_counts,
}
write_json(artifact_path("going_further"), results)
print(f"saved {relative(artifact_path('going_further'))}")
print(f"in-domain {in_before:.2f} → {in_after:.2f}; out-of-domain {ood_before:.2f} → {ood_after:.2f}; "
      f"packing {speedup:.2f}x; adapter {adapter_bytes / 1e6:.0f} MB vs model {model_bytes / 1e6:.0f} MB")
