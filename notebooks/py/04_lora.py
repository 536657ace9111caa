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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/04_lora.ipynb)
#
# # 04 · LoRA for continued pre-training: adapters, rank, rsLoRA, and trainable embeddings
#
# The base weights are frozen (and on a GPU, stored in 4-bit). This notebook adds what *will* be
# trained: low-rank adapters on every projection, plus full copies of the two embedding matrices,
# and counts exactly what that amounts to.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("04_lora")

# %%
from helpers.modeling import load_model_and_tokenizer

model, tokenizer = load_model_and_tokenizer(profile)

# %% [markdown]
# ## What LoRA does
#
# Fine-tuning changes a weight matrix `W` (shape `d_out × d_in`) by some update `ΔW`. LoRA's bet
# is that the useful update has low rank, so it writes `ΔW = (α / r) · B A`, with `A` of shape
# `r × d_in` and `B` of shape `d_out × r`, and trains only `A` and `B`. For one of Mistral's
# 4096 × 4096 attention projections at rank `r = 128` that is 2 × 128 × 4096 ≈ 1 M trainable numbers
# instead of 16.8 M. `B` starts at zero, so at step 0 the adapted model is exactly the base model.
#
# * **Rank `r`**: the capacity of the update. SFT usually gets by with 8 to 64; continued
#   pre-training asks the model to absorb a whole domain, so the walkthrough uses 128.
# * **`lora_alpha`**: a scale on the update. Classic LoRA multiplies by `α / r`, which means raising
#   the rank *shrinks* each direction's contribution, so a higher rank barely helps unless α grows
#   with it.
# * **rsLoRA** (rank-stabilised LoRA) scales by `α / √r` instead, which keeps the update's magnitude
#   stable as `r` grows, so large ranks actually learn. With the walkthrough's α = 32, r = 128 that is
#   a scale of 32 / 11.3 ≈ 2.83, where plain LoRA would use 0.25.
# * **Targets**: the walkthrough adapts all seven linear projections of every block: attention
#   (`q_proj`, `k_proj`, `v_proj`, `o_proj`) and MLP (`gate_proj`, `up_proj`, `down_proj`). Knowledge
#   is thought to live largely in the MLPs, so attention-only LoRA is a poor fit for CPT.
# * **`lora_dropout = 0`, `bias = "none"`**: no dropout on the adapter input and no bias training;
#   both are unsloth's fast path and lose little for a single epoch.

# %%
import math

scale_rslora = profile.lora_alpha / math.sqrt(profile.lora_r)
scale_classic = profile.lora_alpha / profile.lora_r
print(f"r={profile.lora_r}, alpha={profile.lora_alpha}: rsLoRA scale {scale_rslora:.3f}, classic LoRA scale {scale_classic:.3f}")

# %% [markdown]
# ## Why CPT also trains `embed_tokens` and `lm_head`
#
# The input embedding (`embed_tokens`, one vector per vocabulary entry) and the output head
# (`lm_head`, which turns the last hidden state into a score per vocabulary entry) are where the
# model's view of *individual tokens* lives. A new domain uses tokens with different frequencies and
# meanings (legal terms, a new language, or simply a children's-book register), and the next-token
# distribution the head produces is exactly what CPT is changing. A low-rank adapter on these
# matrices is a poor fit: every token needs its own adjustment. So the walkthrough lists both in
# `target_modules`, and unsloth moves them to **`modules_to_save`** (it says so as it does it:
# "Training embed_tokens in mixed precision"): PEFT's mechanism for training a *full*, un-quantized
# copy of a module next to the frozen original.
#
# That has two costs worth knowing. Memory: for Mistral-7B each matrix is 32,768 × 4,096 ≈ 134 M
# parameters, so the two together are ~268 M trainable numbers, on top of ~336 M in the LoRA
# adapters at r = 128 (10.5 M per layer × 32 layers): the walkthrough's 603,979,776 trainable
# parameters. And the saved adapter: it contains both full matrices, so a CPT adapter is
# hundreds of megabytes, not the few MB of an SFT adapter.
#
# Some models, SmolLM2 among them, **tie** the two matrices: `lm_head` *is* `embed_tokens`. Training
# two separate full copies would silently untie them. Both unsloth and the PEFT twin below keep them
# tied (PEFT's `ensure_weight_tying=True`), so there is one trainable matrix serving both roles.
#
# ## The call, and its PEFT twin
#
# The walkthrough lists its targets by name, and those names are Llama's and Mistral's. Other
# families name their layers differently (GPT-2's `c_attn`, `c_fc`; its embedding is `wte`), so
# `helpers.training.target_modules_for` reads them from the model itself: every linear layer inside
# the numbered transformer blocks (attention and MLP), plus the modules that
# `get_input_embeddings()` and `get_output_embeddings()` return. On this model that gives exactly the
# walkthrough's list; with `CPT_MODEL` it gives your model's own names.
#
# > **The walkthrough says** that modules left out of `target_modules` are still trained. **In fact**
# > `get_peft_model` freezes every weight of the base model first; only the LoRA matrices of the listed
# > projections and the full copies of the listed embedding modules train. **Shown by** the breakdown
# > below: nothing else has `requires_grad=True`, and notebook 05 asserts the optimizer's groups.
#
# unsloth's `get_peft_model` takes that list directly. The plain PEFT twin has to split it
# (projections get LoRA, embeddings go to `modules_to_save`) and turn on gradient checkpointing
# through transformers. Later notebooks use `helpers.training.add_lora`, which holds this same code
# (the project's tests check that both build the same model). It adds one argument for
# multi-GPU runs: unsloth writes the frozen embeddings it offloads to a file and memory-maps it back,
# and under a launcher every process needs its own file (`temporary_location`, see docs/multi-gpu.md).

# %%
from helpers.training import (
    cast_embedding_copies,
    choose_gradient_checkpointing,
    lora_config,
    target_modules_for,
)

checkpointing, why = choose_gradient_checkpointing(profile, model)  # the profile's, or "auto": by free GPU memory
print(f"gradient checkpointing: {checkpointing!r} ({why})")
if profile.uses_unsloth:
    from unsloth import FastLanguageModel

    lora_targets, full_modules = target_modules_for(profile, model)  # read from the model itself
    model = FastLanguageModel.get_peft_model(
        model,
        r=profile.lora_r,
        target_modules=lora_targets + full_modules,  # the projections, plus "embed_tokens", "lm_head"
        lora_alpha=profile.lora_alpha,
        lora_dropout=profile.lora_dropout,
        bias=profile.bias,
        use_gradient_checkpointing=checkpointing,  # the walkthrough's "unsloth"
        random_state=profile.seed,
        use_rslora=profile.use_rslora,
        loftq_config=None,
    )
else:
    from peft import get_peft_model, prepare_model_for_kbit_training

    if profile.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(checkpointing))
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora_targets, full_modules = target_modules_for(profile, model)  # read from the model itself
    print(f"LoRA on {lora_targets}; trained in full: {full_modules}")
    config = lora_config(profile, tie_embeddings=model.config.tie_word_embeddings, model=model)
    model = get_peft_model(model, config)
if profile.embedding_dtype:  # the GPU profile keeps the trainable embedding copies in fp32 (notebook 05 says why)
    cast_embedding_copies(model, profile.embedding_dtype)

model.print_trainable_parameters()

# %% [markdown]
# Where did `embed_tokens` and `lm_head` end up? The adapter configuration answers it: on both
# branches they are *not* LoRA targets but modules to save (trained in full). unsloth moves them
# there itself, and says so when it does.

# %%
peft_config = model.peft_config["default"]
print(f"LoRA target_modules : {sorted(peft_config.target_modules)}")
print(f"modules_to_save     : {sorted(peft_config.modules_to_save or [])}")
assert "embed_tokens" in (peft_config.modules_to_save or [])
assert not {"embed_tokens", "lm_head"} & set(peft_config.target_modules)

# %% [markdown]
# ## What is trainable, exactly?
#
# `print_trainable_parameters` gives one total. The breakdown below splits it into the LoRA `A` and
# `B` matrices per projection type and the full embedding copies, and prints the dtype each is
# stored in. It answers the walkthrough's question about "training `embed_tokens` in mixed
# precision", in one sentence: the frozen base is 4-bit (dequantized to bf16 or fp16 for compute), and
# unsloth stores the trainable embedding copies in 16 bits (bf16 on a bf16 GPU), where almost every
# update of the embedding learning rate rounds away, so this project's GPU profile stores them in
# fp32. Notebook 05 measures it after training; on the real SmolLM2, 1.1% of the trained rows'
# entries changed with bf16 copies, 100% with fp32 ones.

# %%
from helpers.training import trainable_breakdown

breakdown = trainable_breakdown(model)
trainable = sum(entry["parameters"] for entry in breakdown.values())
total = sum(p.numel() for p in model.parameters())
for key, entry in breakdown.items():
    print(f"{key:<28}{entry['parameters'] / 1e6:10.2f} M  {', '.join(entry['dtypes'])}")
print(f"{'trainable':<28}{trainable / 1e6:10.2f} M of {total / 1e6:.1f} M parameters ({100 * trainable / total:.1f}%)")
others = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n and "modules_to_save" not in n]
assert not others, f"trainable outside the LoRA matrices and the embedding copies: {others[:3]}"

# %%
embedding_names = [n for n, p in model.named_parameters() if p.requires_grad and ("embed_tokens" in n or "lm_head" in n)]
print("trainable embedding tensors:", embedding_names)
assert embedding_names and all("modules_to_save" in n for n in embedding_names)
assert not any("lora_" in n for n in embedding_names), "embeddings must be full copies, not LoRA"
if model.get_base_model().config.tie_word_embeddings:
    assert len(embedding_names) == 1, "tied embeddings must stay one matrix"
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
else:
    assert len(embedding_names) == 2

# %% [markdown]
# ## Gradient checkpointing
#
# Backpropagation needs the activations of every layer from the forward pass. Storing them all
# costs memory proportional to layers × sequence length × hidden size × batch, which for a 7B
# model at 2,048 tokens dwarfs the 4-bit weights. **Gradient checkpointing** stores only each
# block's input and recomputes the block's inside during the backward pass: about a third more
# compute for a large cut in activation memory. unsloth's `"unsloth"` variant goes one step further
# and parks those block inputs in CPU memory, fetching them back asynchronously when the backward
# pass reaches the block; it falls back to ordinary checkpointing for short sequences. The walkthrough
# always passes `"unsloth"`. This project's GPU profile passes `"auto"` to the helper above, which
# turns checkpointing off when the activations fit the GPU's free memory with a margin (on an 80 GB
# or larger GPU the 7B epoch then runs faster, at about 24 GiB peak) and keeps unsloth's offloading
# on a smaller one, such as Colab's 16 GB T4. The CPU profile turns checkpointing off: with
# 256-token blocks and a 135M model, activations are small, and recomputation would only cost time.

# %%
print(f"gradient checkpointing: {checkpointing!r}; "
      f"model reports enabled = {getattr(model, 'is_gradient_checkpointing', False)}")

# %% [markdown]
# On the CPU everything is fp32: there is no 4-bit and nothing to save by mixing precisions. On the
# GPU branch the frozen projections show up as packed `uint8` (4-bit), the LoRA matrices in fp32, and
# the embedding copies in fp32 with the GPU profile's default (bf16 with unsloth's own).
#
# ### How much memory does LoRA save as the sequence grows?
#
# A training step holds three things: the weights; for every *trainable* parameter a gradient and
# AdamW's two statistics; and the activations kept for the backward pass, which grow with batch ×
# sequence length no matter what is trained. LoRA removes almost all of the second item and none of
# the third, so its relative saving is largest for short sequences and shrinks as they grow
# (gradient checkpointing, above, is the tool for activations). The cell measures one step of a
# small random Llama (about 150 M parameters, bf16) at three lengths: full fine-tuning, this profile's
# CPT LoRA (embeddings trained in full), and LoRA on the projections only. PyTorch's CUDA allocator
# reports the peak; there is no equivalent on the CPU, so the cell is skipped there. The measurement
# runs in a fresh process without unsloth: this kernel's unsloth has patched the Llama classes for
# its own loader, and the question is about plain LoRA, not about unsloth's kernels.
#
# What it measured on an H200: peak GiB of one step
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
import torch

if torch.cuda.is_available():
    from helpers.lab.lora_memory import compare_in_fresh_process

    memory_rows = compare_in_fresh_process([512, 2048, 8192], lora_r=16)
    print(f"{'tokens':>7}{'full FT':>10}{'CPT LoRA':>10}{'LoRA':>9}   peak GiB of one step, batch 1")
    for row in memory_rows:
        print(f"{row['tokens']:>7}{row['full']:>10.2f}{row['CPT LoRA']:>10.2f}{row['LoRA']:>9.2f}   "
              f"LoRA saves {1 - row['LoRA'] / row['full']:.0%}")
    assert memory_rows[0]["LoRA"] < memory_rows[0]["full"], "LoRA should save memory on short sequences"
    assert all(row["LoRA"] < row["CPT LoRA"] for row in memory_rows), "full embedding copies cost memory"
    assert 1 - memory_rows[-1]["LoRA"] / memory_rows[-1]["full"] < 1 - memory_rows[0]["LoRA"] / memory_rows[0]["full"]
else:
    memory_rows = None
    print("skipped: peak memory of a training step is read from PyTorch's CUDA allocator, which needs a "
          "GPU; on the CPU there is no comparable per-step peak to read.")

# %% [markdown]
# ## Memory and hand-over
#
# Adding LoRA allocates the adapters and the full embedding copies; we record that stage and save
# the counts for the closing summary. Notebook 05 rebuilds the same adapters (same seed, same
# helper) inside its own kernel and trains them.

# %%
from helpers.artifacts import save_outputs
from helpers.memory import format_snapshot, record_stage
from helpers.support.paths import relative

print(format_snapshot(record_stage("LoRA added", "04")))
saved = save_outputs(profile, {"lora_info": {
    "trainable_parameters": trainable,
    "total_parameters": total,
    "breakdown": breakdown,
    "embedding_tensors": embedding_names,
    "rslora_scale": scale_rslora,
}})["lora_info"]
print(f"saved {relative(saved)}")
