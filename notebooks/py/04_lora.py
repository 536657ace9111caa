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
# # 04 · LoRA: adapters on every projection, and the embeddings trained in full
#
# The base weights stay frozen (on the GPU, in 4-bit). This notebook adds what *will* be trained,
# with the walkthrough's `FastLanguageModel.get_peft_model` call and its plain PEFT twin, and counts
# exactly what that is.

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
# ## LoRA, rank, alpha and rsLoRA
#
# **LoRA** (low-rank adaptation) leaves a weight matrix `W` (`d_out × d_in`) frozen and learns an
# update `ΔW = s · B A`, with `A` of shape `r × d_in` and `B` of shape `d_out × r`. `B` starts at
# zero, so before training the model is exactly the base model.
#
# * The **rank** `r` is the update's capacity. The walkthrough uses 128: continued pre-training asks
#   the model to absorb a whole domain, not a behaviour.
# * **`lora_alpha`** sets the scale `s`. Classic LoRA uses `α / r`, so raising the rank shrinks the
#   update; **rsLoRA** (rank-stabilised LoRA) uses `α / √r`, which keeps large ranks learning.
# * The targets are all seven linear projections of every block: attention (`q_proj`, `k_proj`,
#   `v_proj`, `o_proj`) and MLP (`gate_proj`, `up_proj`, `down_proj`).
# * `lora_dropout=0` and `bias="none"` are the values unsloth's kernels are optimised for.
#
# The cell prints the scales, and recomputes the walkthrough's count of trainable parameters from
# Mistral-7B's shapes: the adapters, plus the two embedding matrices trained in full (next section).

# %%
import math

from helpers.profiles import GPU_MISTRAL7B as walkthrough

for p in (walkthrough, profile):
    print(f"{p.name}: r={p.lora_r}, alpha={p.lora_alpha}: rsLoRA scale {p.lora_alpha / math.sqrt(p.lora_r):.2f}, "
          f"classic LoRA scale {p.lora_alpha / p.lora_r:.2f}")
hidden, kv, mlp, layers, vocab = 4096, 1024, 14336, 32, 32768  # Mistral-7B v0.3
adapters = layers * walkthrough.lora_r * (2 * (hidden + hidden) + 2 * (hidden + kv) + 3 * (hidden + mlp))
embeddings = 2 * vocab * hidden  # embed_tokens and lm_head
print(f"Mistral-7B: adapters {adapters:,} + embeddings {embeddings:,} = {adapters + embeddings:,} trainable")
assert adapters + embeddings == 603_979_776  # the walkthrough's count of trainable parameters

# %% [markdown]
# ## Why the embeddings are trained in full
#
# `embed_tokens` (one input vector per vocabulary entry) and `lm_head` (a score per vocabulary
# entry for the next token) are where the model's view of single tokens lives, and a new domain
# changes how often each token comes and what follows it. A low-rank update fits them poorly:
# every token needs its own change. So the walkthrough lists both in `target_modules`, and unsloth
# moves them to **`modules_to_save`**: PEFT's list of modules trained as full copies beside the
# frozen originals. The saved adapter holds these full copies too, so it is large.
#
# Some models, SmolLM2 among them, have **tied embeddings**: `lm_head` reuses `embed_tokens`'
# matrix. Two separate trainable copies would silently untie them; PEFT's `ensure_weight_tying=True`
# keeps one copy serving both.

# %% [markdown]
# ## The call, and its PEFT twin
#
# **Gradient checkpointing** keeps only each block's input during the forward pass and recomputes
# the rest during the backward pass: less memory, about a third more compute. The walkthrough passes
# `"unsloth"`, unsloth's variant, which also moves those inputs to CPU memory. This run passes what
# the profile chooses (printed): the 7B profile's `"auto"` turns checkpointing off when the
# activations fit the GPU's free memory and keeps `"unsloth"` when they do not; the CPU profile,
# with short blocks and a small model, turns it off.
#
# The PEFT twin splits the list (projections get LoRA, embeddings go to `modules_to_save`).
# `target_modules_for` reads the names from the model; on Llama and Mistral they are the
# walkthrough's. Later notebooks call `helpers.training.add_lora`, which holds this code.

# %%
from helpers.training import cast_embedding_copies, choose_gradient_checkpointing, target_modules_for

checkpointing, why = choose_gradient_checkpointing(profile, model)
print(f"gradient checkpointing: {checkpointing!r} ({why})")
lora_targets, full_modules = target_modules_for(profile, model)  # read from the model itself
if profile.uses_unsloth:
    from unsloth import FastLanguageModel
    model = FastLanguageModel.get_peft_model(
        model,
        r=profile.lora_r,  # the walkthrough: 128
        target_modules=lora_targets + full_modules,  # the 7 projections, "embed_tokens", "lm_head"
        lora_alpha=profile.lora_alpha,  # 32
        lora_dropout=profile.lora_dropout,  # 0
        bias=profile.bias,  # "none"
        use_gradient_checkpointing=checkpointing,  # the walkthrough: "unsloth"; this run: printed above
        random_state=profile.seed,  # 3407
        use_rslora=profile.use_rslora,  # True
        loftq_config=None,
    )
else:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    if profile.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(checkpointing))
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = LoraConfig(r=profile.lora_r, lora_alpha=profile.lora_alpha, use_rslora=profile.use_rslora,
                        lora_dropout=profile.lora_dropout, bias=profile.bias, target_modules=lora_targets,
                        modules_to_save=full_modules,  # trained in full: embed_tokens, lm_head
                        ensure_weight_tying=bool(model.config.tie_word_embeddings and full_modules),
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
if profile.embedding_dtype:  # the 7B profile stores the trainable embedding copies in fp32 (notebook 05)
    cast_embedding_copies(model, profile.embedding_dtype)
model.print_trainable_parameters()

# %% [markdown]
# ## Where the embeddings went
#
# The adapter's configuration shows that `embed_tokens` and `lm_head` are not LoRA targets. On a tied
# model such as SmolLM2 it shows more: PEFT adds the input embedding under its full path,
# `model.embed_tokens`, next to the short name we gave (one module, listed twice), and moves `lm_head`
# to `modules_to_tie`, whose copy shares that matrix. So there is one trainable embedding tensor here;
# an untied model, such as Mistral, gets two. (Notebook 05, which walks the modules rather than the
# tensors, prints the shared one under both names.)

# %%
peft_config = model.peft_config["default"]
tied = bool(model.get_base_model().config.tie_word_embeddings)
print(f"tied embeddings      : {tied}")
print(f"LoRA target_modules  : {sorted(peft_config.target_modules)}")
print(f"modules_to_save      : {peft_config.modules_to_save}")
print(f"modules_to_tie       : {sorted(getattr(peft_config, 'modules_to_tie', None) or [])}")
copies = [n for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n]
print("trainable full copies:", copies)
assert not {"embed_tokens", "lm_head"} & set(peft_config.target_modules)
assert any(m.split(".")[-1] == "embed_tokens" for m in peft_config.modules_to_save)
assert all("embed_tokens" in n or "lm_head" in n for n in copies)
assert len(copies) == (1 if tied else 2), "one trainable matrix per distinct embedding matrix"
assert (model.get_input_embeddings().weight is model.get_output_embeddings().weight) == tied

# %% [markdown]
# ## What is trainable, exactly?
#
# `get_peft_model` freezes every weight of the base model; only the LoRA matrices and the embedding
# copies train. The breakdown splits `print_trainable_parameters`' total by kind, with the dtype each
# is stored in, and checks that nothing else has `requires_grad=True` and that every `B` is still zero.

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
assert all(not p.any() for n, p in model.named_parameters() if "lora_B" in n), "B starts at zero"

# %% [markdown]
# ## Memory and hand-over
#
# We record memory at this stage (host **RSS**, the resident memory of the process, and on a GPU
# PyTorch's and NVML's readings, as in notebook 03) and save the counts. Notebook 05 rebuilds the same
# adapters (same seed, same helper) in its own kernel and trains them.

# %%
from helpers.artifacts import save_outputs
from helpers.memory import format_snapshot, record_stage
from helpers.support.paths import relative

print(format_snapshot(record_stage("LoRA added", "04")))
saved = save_outputs(profile, {"lora_info": {
    "trainable_parameters": trainable,
    "total_parameters": total,
    "breakdown": breakdown,
    "embedding_tensors": copies,
    "rslora_scale": profile.lora_alpha / math.sqrt(profile.lora_r),
}})["lora_info"]
print(f"saved {relative(saved)}")

# %% [markdown]
# ## Going further
#
# ### Checkpointing and dtypes on the GPU
#
# The cell shows whether the model now recomputes activations. On the CPU everything is fp32. On the
# GPU the LoRA matrices are fp32, and the embedding copies are fp32 with the 7B profile
# (`embedding_dtype`) but bf16 with unsloth's default; notebook 05 shows how many updates bf16
# rounds away.

# %%
print(f"gradient checkpointing: {checkpointing!r}; model reports enabled = "
      f"{getattr(model, 'is_gradient_checkpointing', False)}")
if not profile.uses_unsloth:  # transformers' own flag; unsloth's "unsloth" variant is its own code
    assert bool(getattr(model, "is_gradient_checkpointing", False)) == bool(checkpointing)

# %% [markdown]
# ### How much memory does LoRA save as sequences grow?
#
# A training step holds the weights; a gradient and two AdamW statistics per *trainable* parameter;
# and the activations, which grow with batch × sequence length whatever is trained. LoRA removes
# most of the second and none of the third. The cell (GPU only: it reads the peak of PyTorch's CUDA
# allocator) measures one step of a small random Llama (about 150 M parameters, bf16) in a fresh
# process without unsloth.
#
# On an H200 (recorded in `runs/LOG.md`), LoRA saved 52% at 512 tokens but used *more* than full
# fine-tuning at 2,048 and 8,192 tokens (-19%, -22%): for a model this small, activations soon
# outweigh the gradients and optimizer state LoRA saves. For a 7B model those are tens of GiB;
# long sequences are what gradient checkpointing is for.

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
