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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/05_training.ipynb)
#
# # 05 · Training: the trainer, two learning rates, 8-bit Adam, a cosine schedule, and the loss
#
# Everything is in place: a frozen base model, adapters and embedding copies to train, and packed
# (or padded) rows of TinyStories. This notebook sets up the optimizer the way the walkthrough does,
# checks that it really is set up that way, trains, and saves the adapter.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("05_training")

# %% [markdown]
# ## Inputs from the earlier notebooks
#
# The training rows come from notebook 02 (`outputs/02_dataset`). In a fresh runtime that does not
# share 02's outputs folder (a Colab notebook opened on its own, without Google Drive),
# `helpers.handoff.training_data` rebuilds them here with 02's steps, which take seconds, and says so.
# The model and its adapters are rebuilt here with the helpers that contain notebook 01's and 04's
# code; with the same seed, the adapters start from the same random values.

# %%
from helpers.handoff import training_data
from helpers.modeling import load_model_and_tokenizer
from helpers.training import add_lora

model, tokenizer = load_model_and_tokenizer(profile)
train_dataset, text_dataset = training_data(profile, tokenizer)  # 02's rows, rebuilt here if they are missing
model = add_lora(model, profile)
print(f"{len(train_dataset)} training rows of up to {profile.max_seq_length} tokens")
model.print_trainable_parameters()

# %% [markdown]
# ## Which trainer: `UnslothTrainer`, and its plain twin
#
# `UnslothTrainer` is a subclass of TRL's `SFTTrainer`, which is itself a subclass of transformers'
# `Trainer`; unsloth adds one thing the others lack, a separate learning rate for the embedding
# matrices (`embedding_learning_rate` in `UnslothTrainingArguments`). For raw text, `SFTTrainer`'s
# extras (chat templates, completion-only loss) are not used anyway.
#
# On the CPU we cannot use `SFTTrainer` at the pinned TRL 1.15: its loss calls a fused LM-head
# kernel that exists only with Triton on a GPU, and fails on a CPU with
# `AttributeError: 'NoneType' object has no attribute 'apply'` (fixed in TRL 1.16, which unsloth
# 2026.10.9 does not allow). So the twin goes one level down, to `transformers.Trainer` with the
# causal-language-modelling collator: exactly how Hugging Face's own `run_clm` example does continued
# pre-training. `DataCollatorForLanguageModeling(mlm=False)` stacks the rows, pads if needed, and
# copies `input_ids` to `labels` with padding masked out; the model shifts labels by one position
# internally, so each token is trained to predict the next.
#
# ## Two learning rates
#
# The adapters train at `learning_rate` (5e-5 in the walkthrough); `embed_tokens` and `lm_head`
# at `embedding_learning_rate`, ten times less (5e-6). Why slower? The embedding matrices are
# trained *in full*, not through a low-rank bottleneck. Each row of `embed_tokens` belongs to one
# token and only gets a gradient when that token appears in the batch, so rows of rare tokens see
# few, noisy updates. `lm_head` is different: every row scores its token at every position through
# the softmax, so *every* row gets a gradient at every step (pushed down for all the tokens that did
# not come next), which makes it the matrix that moves most. The cell after the parameter groups
# measures both. And every row carries knowledge the model needs everywhere else. A small learning rate lets them drift towards
# the domain without wrecking what they encode. The walkthrough's own wording is that this stops the
# embeddings from being trained "too much", and it asks whether the rate also applies to `lm_head`:
# the parameter groups printed below answer that.
#
# unsloth implements this by overriding the trainer's `create_optimizer` to build two parameter
# groups. The twin, `helpers.training.EmbeddingLRTrainer`, does the same with this function:

# %%
import inspect

from helpers.training import embedding_param_groups

print(inspect.getsource(embedding_param_groups))

# %% [markdown]
# ## 8-bit Adam, and the schedule
#
# AdamW keeps two running statistics per trainable parameter (the mean and the variance of its
# gradient), normally in fp32: 8 bytes per parameter. For the walkthrough's 604 M trainable
# parameters (LoRA at r = 128 plus two full embedding matrices) that is about 4.8 GB of optimizer
# state. bitsandbytes' **8-bit AdamW** (`optim="adamw_8bit"`) stores both statistics block-quantized
# to 8 bits, 2 bytes per parameter, about 1.2 GB, with training curves that match 32-bit Adam in
# practice. (One exception: transformers' Trainer asks bitsandbytes to keep 32-bit state for `nn.Embedding`
# modules, whose rare rows are sensitive to quantization error.) It needs a CUDA GPU, so the CPU
# profile uses PyTorch's 32-bit AdamW, in its fused form (`optim="adamw_torch_fused"`): the same
# arithmetic, done by one kernel for all tensors instead of a Python loop over them, which on two CPU
# cores makes a step over 100 M parameters 20 times faster.
#
# The learning rate follows a **cosine schedule with linear warm-up**: it climbs from 0 over the
# first 10% of steps (Adam's variance estimates are unreliable during the first steps, and large
# early updates to freshly initialised adapters can destabilise the model), then decays along a half
# cosine towards 0, so the final steps make small, refining updates. Both groups follow the same
# shape, each scaled to its own peak. The plot draws the schedule for this run.
#
# transformers 5 removed the `warmup_ratio` argument that the walkthrough passes: a `warmup_steps`
# value below 1 is now read as a ratio, so the call below passes 0.1 that way.
#
# ## The training call
#
# This is the walkthrough's central cell, argument by argument. Each comment says what the
# walkthrough passes where this run differs. Three differences are deliberate, and each was measured
# against the walkthrough's own settings on a real model (three seeds, held-out perplexity on 600
# validation stories):
#
# | batching | tokens per optimizer step | optimizer steps for 2,500 stories | held-out perplexity |
# |---|---|---|---|
# | the walkthrough: one padded story per row, 2 rows x 8 accumulation steps | about 4,300 (16 stories) | 157 | 6.401 |
# | this profile: packed 2,048-token rows, 2 rows x 1 step | about 4,100 | 161-167 | **6.362** |
# | packed, 4 rows x 4 steps (16 rows a step) | about 33,000 | 21 | 7.241 |
#
# What a step learns depends on its tokens, not on its rows. A packed row holds about 7.7 stories, so
# 16 packed rows a step would be 8 times the walkthrough's tokens per step and 8 times fewer steps. At
# the same learning rate, with the same 10% warm-up and cosine decay, the adapters then take 8 times
# fewer updates, and the model learns far less (the last row). Packing two rows a step keeps the
# walkthrough's tokens per step and its number of updates, and throws away only the padding. (These
# are the SmolLM2 model's numbers under the 7B recipe; the CPU profile's own, smaller run is further
# down.)
#
# - **Batching**: packed rows instead of padded ones (`packing=True`), 2 rows a step. Each story
#   still attends only to itself (below). `CPT_PACKING=0` gives the walkthrough's padded 2 x 8.
# - **Embedding copies in fp32**: see "Mixed precision for the embeddings" after training.
# - **Renamed arguments**: TRL renamed `tokenizer` to `processing_class` and `max_seq_length` to
#   `max_length`, and moved the dataset options into the arguments object.
#
# Two more arguments are not in the walkthrough at all: `output_dir`, `save_strategy`, `save_steps` and
# `save_total_limit` make the run resumable (the aside under "Train" explains them). On the CPU the
# plain twin takes the same settings: `transformers.TrainingArguments` without the embedding learning
# rate, which `EmbeddingLRTrainer` takes instead, and the causal-language-modelling collator.
#
# **Mixed precision on the CPU.** The walkthrough passes `bf16 = is_bf16_supported()`: on its GPU the
# matrix products run in bf16 while the trainable weights, their updates and Adam's state stay fp32.
# The CPU twin does the same when the processor computes bf16 in hardware (recent server chips, with
# AVX512-BF16 or AMX; `helpers.training.cpu_computes_bf16` asks torch), and trains in fp32 elsewhere,
# where bf16 would only be emulated. Measured on this series' 2-core machine, with this very run and
# three seeds: bf16 training took 1.4 times less time (51 s against 72 s), and the held-out perplexity
# afterwards was 0.1% to 0.4% higher than after fp32 training (6.256 against 6.241 on average), a
# small price beside what the training itself takes off (notebook 06).
# `helpers.training.build_trainer`, which later notebooks call, holds this same code.

# %%
import torch

from helpers.checkpoints import checkpoint_settings, record_checkpoints
from helpers.training import cpu_computes_bf16

checkpoints = checkpoint_settings(profile, train_dataset, text_dataset)  # not in the walkthrough: see "Train"
if profile.device == "cuda":
    bf16 = torch.cuda.is_bf16_supported() and profile.dtype != "float16"  # walkthrough: is_bf16_supported()
else:  # not in the walkthrough: bf16 autocast on a CPU that computes bf16 in hardware (see below)
    bf16 = profile.cpu_bf16 and cpu_computes_bf16()
fp16 = profile.device == "cuda" and torch.cuda.is_available() and not bf16
settings = dict(
    per_device_train_batch_size=profile.per_device_train_batch_size,  # walkthrough: 2 (padded stories)
    gradient_accumulation_steps=profile.gradient_accumulation_steps,  # walkthrough: 8; packed rows: 1
    num_train_epochs=profile.num_train_epochs,  # 1
    max_steps=profile.max_steps,  # -1: the epoch decides (the CPU profile stops early)
    learning_rate=profile.learning_rate,  # 5e-5: the LoRA adapters
    warmup_steps=profile.warmup_ratio,  # walkthrough: warmup_ratio = 0.1
    lr_scheduler_type=profile.lr_scheduler_type,  # "cosine"
    optim=profile.optim,  # "adamw_8bit" (the CPU: PyTorch's fused AdamW)
    weight_decay=profile.weight_decay,  # 0.0
    seed=profile.seed,  # 3407
    data_seed=profile.seed,  # not in the walkthrough: the batches' order follows the same seed
    logging_steps=profile.logging_steps,  # 1
    bf16=bf16,  # mixed precision: compute in bf16, keep the weights and their updates in fp32
    fp16=fp16,
    use_cpu=profile.device == "cpu",
    report_to="none",  # "none"
    dataloader_num_workers=0,
    disable_tqdm=False,
    **checkpoints,  # walkthrough: output_dir = "outputs", no checkpoints
)
if profile.uses_unsloth:
    from unsloth import UnslothTrainer, UnslothTrainingArguments

    from helpers.training import use_torch_varlen

    route = use_torch_varlen() if profile.packing else None  # torch's flash kernel for packed rows (below)
    trainer = UnslothTrainer(
        model=model,
        processing_class=tokenizer,  # walkthrough: tokenizer = tokenizer
        train_dataset=text_dataset,  # the stories with EOS from notebook 02; unsloth tokenizes them itself
        args=UnslothTrainingArguments(
            embedding_learning_rate=profile.embedding_learning_rate,  # 5e-6: embed_tokens and lm_head
            dataset_text_field="text",  # the same
            max_length=profile.max_seq_length,  # walkthrough: max_seq_length = 2048
            packing=profile.packing,  # walkthrough: not set (padded rows)
            **settings,
        ),
    )
    trainer.cpt_attention_route = route
else:
    from transformers import DataCollatorForLanguageModeling, TrainingArguments

    from helpers.data import PackedRowsCollator
    from helpers.training import embedding_lr_trainer_class

    collator = (PackedRowsCollator(tokenizer.eos_token_id, isolate_documents=profile.isolate_documents)
                if profile.packing else DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False))
    trainer = embedding_lr_trainer_class()(  # transformers.Trainer plus the embedding learning rate
        model=model,
        processing_class=tokenizer,
        train_dataset=train_dataset,  # notebook 02's rows of token ids
        data_collator=collator,
        args=TrainingArguments(**settings),
        embedding_learning_rate=profile.embedding_learning_rate,
    )
    trainer.cpt_attention_route = ("each document attends only to itself (block-diagonal causal mask)"
                                   if profile.packing and profile.isolate_documents else
                                   "documents attend across their EOS" if profile.packing else "padded rows")
record_checkpoints(trainer, profile, text_dataset if profile.uses_unsloth else train_dataset)

# %%
import math

from helpers.checkpoints import planned_steps

trainer.create_optimizer()
num_steps = planned_steps(trainer)  # max_steps, or the batches of the epochs / gradient accumulation
print(f"{type(trainer).__name__} with {type(trainer.optimizer).__name__}, {num_steps} optimizer steps")

# %% [markdown]
# unsloth's trainer prints a banner when training starts: examples, epochs, total steps, batch sizes
# and trainable parameters. The walkthrough's read: 2,500 examples, 1 epoch, 156 steps, batch 2 x 8 =
# 16, 603,979,776 trainable parameters of 7,852,003,328 (7.69%). The plain `transformers.Trainer`
# prints none of it, so the cell prints the same facts from the trainer itself, on every path.

# %%
world = trainer.args.world_size
per_epoch = max(1, len(trainer.train_dataset) // (trainer.args.per_device_train_batch_size * world)
                // trainer.args.gradient_accumulation_steps)
epochs = math.ceil(trainer.args.max_steps / per_epoch) if trainer.args.max_steps > 0 else trainer.args.num_train_epochs
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
total_params = sum(p.numel() for p in model.parameters())
batch = trainer.args.per_device_train_batch_size
accumulation = trainer.args.gradient_accumulation_steps
print(f"Num examples = {len(trainer.train_dataset):,} | Num Epochs = {epochs} | Total steps = {num_steps}")
print(f"Batch size per device = {batch} | Gradient accumulation steps = {accumulation}")
print(f"Data Parallel GPUs = {world} | Total batch size ({batch} x {accumulation} x {world}) = {batch * accumulation * world}")
print(f"Trainable parameters = {trainable:,} of {total_params:,} ({100 * trainable / total_params:.2f}% trained)")
assert num_steps > 0 and trainable > 0

# %%
import matplotlib.pyplot as plt
import torch
from transformers import get_scheduler

probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=profile.learning_rate)
sched = get_scheduler(profile.lr_scheduler_type, probe, num_warmup_steps=trainer.args.get_warmup_steps(num_steps),
                      num_training_steps=num_steps)
lrs = []
for _ in range(num_steps):
    lrs.append(sched.get_last_lr()[0])
    probe.step()
    sched.step()
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(range(1, num_steps + 1), lrs, marker="o", label="LoRA adapters")
ax.plot(range(1, num_steps + 1), [lr * profile.embedding_learning_rate / profile.learning_rate for lr in lrs],
        marker="o", label="embed_tokens / lm_head")
ax.set_xlabel("optimizer step")
ax.set_ylabel("learning rate")
ax.set_title(f"{profile.lr_scheduler_type} schedule, {trainer.args.get_warmup_steps(num_steps)} warm-up step(s) of {num_steps}")
ax.legend()
plt.show()
assert max(lrs) <= profile.learning_rate + 1e-12 and lrs[-1] < max(lrs)

# %% [markdown]
# How are rows batched, and what does each token attend to? Both branches pack the stories into
# `max_seq_length`-token rows (the profiles say `packing=True`), so almost nothing is padded, and both
# keep every story's attention to itself: a row holds several stories, and a story should not learn
# to lean on the unrelated one before it (measured on SmolLM2 in `benchmarks/RESULTS.md`: letting
# them attend across costs about 4.5% held-out perplexity, with no speed gained on the CPU).
#
# - `transformers.Trainer` receives the packed blocks of notebook 02, all exactly `max_seq_length`
#   tokens. `helpers.data.PackedRowsCollator` restarts the positions at every story and gives the
#   attention a block-diagonal causal mask, one block per story.
# - unsloth's trainer receives the text and packs it itself (TRL's best-fit packing), telling the
#   attention where each story starts. Without the `flash-attn` package, unsloth on torch 2.11 would
#   run one attention call per story; the training call above hands it torch's own variable-length
#   flash kernel instead (`helpers.training.use_torch_varlen`), one call per row, which made the
#   walkthrough's epoch about 1.3x faster than unsloth's own route on an H200. That kernel needs an
#   Ampere or newer GPU: on a T4 or a V100 the swap is not installed, the route says why, and unsloth
#   keeps its own. With padded rows (`CPT_PACKING=0`) unsloth switches on **padding-free** batching by
#   itself on recent GPUs.
#
# The cell prints the flags and the attention route the trainer took.

# %%
packing_flag, padding_free_flag = getattr(trainer.args, "packing", None), getattr(trainer.args, "padding_free", None)
row_lengths = [len(row["input_ids"]) for row in trainer.train_dataset.select(range(min(64, len(trainer.train_dataset))))]
print(f"packing: {packing_flag}, padding_free: {padding_free_flag} "
      f"({'flags of TRL/unsloth' if packing_flag is not None else 'not options of transformers.Trainer'})")
print(f"{len(trainer.train_dataset)} training rows; first rows' lengths: min {min(row_lengths)}, max {max(row_lengths)}")
print(f"attention: {trainer.cpt_attention_route}")
if profile.packing and not profile.uses_unsloth:
    assert "only to itself" in trainer.cpt_attention_route  # the plain branch keeps stories apart

# %% [markdown]
# ## Check the optimizer before training
#
# Two bugs in unsloth's history made this exact setting fail *silently*: in one the
# embedding learning rate was accepted and then ignored (unsloth issue #4492), in another the
# embeddings were dropped from training altogether (#9326). So we do not trust the arguments; we
# look at the optimizer's parameter groups and assert them.

# %%
from helpers.training import describe_param_groups

groups = describe_param_groups(trainer.optimizer, model)
for group in groups:
    print(f"{group['group']:<36} lr={group['lr']:.1e}  tensors={group['tensors']:4d}  "
          f"parameters={group['parameters'] / 1e6:7.2f} M  weight_decay={group['weight_decay']}")
    print(f"{'':<36} modules: {', '.join(group['modules'][:8])}{' ...' if len(group['modules']) > 8 else ''}")

embedding_groups = [g for g in groups if {"embed_tokens", "lm_head"} & set(g["modules"])]
assert len(embedding_groups) == 1, "exactly one group should hold the embedding matrices"
embedding_group = embedding_groups[0]
assert abs(embedding_group["lr"] - profile.embedding_learning_rate) < 1e-12
assert set(embedding_group["modules"]) <= {"embed_tokens", "lm_head"}
other = [g for g in groups if g is not embedding_group and g["parameters"] > 0]
assert other and all(abs(g["lr"] - profile.learning_rate) < 1e-12 for g in other)
print("\nembedding LR applies to:", embedding_group["modules"],
      "(lm_head shares embed_tokens' matrix)" if model.get_base_model().config.tie_word_embeddings else "")

# %% [markdown]
# ### Does the embedding learning rate also apply to `lm_head`? And which rows get a gradient?
#
# SmolLM2 **ties** its input and output embeddings, so there `lm_head` *is* `embed_tokens`: one
# matrix, one trainable copy. Mistral-7B does not tie them. To see both cases on every profile, we
# build a tiny random model with untied embeddings and this tokenizer's vocabulary, on the CPU (OLMo's
# layout, which has Llama's module names and which unsloth leaves alone), add LoRA the helpers' way
# (rank lowered to suit its size), and print the groups that `embedding_param_groups` (printed above)
# makes of it. Then one forward and backward pass on the first training row counts the rows of each
# matrix that get a non-zero gradient
# (`helpers.training.embedding_gradient_rows`).
#
# The tiny model stands in for the real one on purpose: a forward and backward pass on the model
# being trained, outside the trainer, costs a 7B model's full-vocabulary gradients in memory, and
# unsloth then resets its compiled graphs before training. And no second `Trainer` is built here:
# transformers resets accelerate's process-wide state (device, mixed precision) for every new one,
# which silently re-points the trainer above. `train_resumable` below refuses to train if that
# happened.

# %%
from types import SimpleNamespace

from transformers import OlmoConfig, OlmoForCausalLM  # a layout unsloth does not patch: plain PyTorch

from helpers.training import EMBEDDING_GROUP, add_lora, embedding_gradient_rows, embedding_param_groups

tiny_profile = profile.replace(backend="transformers", device="cpu", load_in_4bit=False, dtype="float32",
                               use_gradient_checkpointing=False, lora_r=8)
torch.manual_seed(profile.seed)
tiny = add_lora(OlmoForCausalLM(OlmoConfig(
    vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)), tiny_profile)
tiny_groups = describe_param_groups(SimpleNamespace(param_groups=embedding_param_groups(
    tiny, profile.learning_rate, profile.embedding_learning_rate, profile.weight_decay)), tiny)
for group in tiny_groups:
    print(f"{group['group']:<36} lr={group['lr']:.1e}  tensors={group['tensors']:3d}  modules: "
          f"{', '.join(group['modules'][:4])}{' ...' if len(group['modules']) > 4 else ''}")
tiny_embedding_group = next(g for g in tiny_groups if g["group"] == EMBEDDING_GROUP)
assert {"embed_tokens", "lm_head"} <= set(tiny_embedding_group["modules"])
assert tiny_embedding_group["lr"] == profile.embedding_learning_rate

probe_ids = torch.tensor([trainer.train_dataset[0]["input_ids"][: profile.max_seq_length]])
rows = embedding_gradient_rows(tiny, probe_ids)
print(f"\none row of {probe_ids.numel()} tokens, {rows['distinct_input_tokens']} distinct; vocabulary {rows['vocabulary']:,} rows")
print(f"embed_tokens rows with a gradient: {rows['embed_tokens']:,} ({rows['embed_tokens'] / rows['vocabulary']:.2%})")
print(f"lm_head rows with a gradient     : {rows['lm_head']:,} ({rows['lm_head'] / rows['vocabulary']:.2%})")
assert rows["embed_tokens"] <= rows["distinct_input_tokens"] < rows["vocabulary"] / 10
assert rows["lm_head"] >= 0.99 * rows["vocabulary"]
tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
print(f"this profile's model ties its two matrices: {tied}")

# %% [markdown]
# So one row touches a few hundred rows of `embed_tokens` and (nearly) all rows of `lm_head`. The
# embedding learning rate slows both, which matters most for `lm_head`: every one of its rows moves at
# every step.
#
# ## Train
#
# The walkthrough calls `trainer.train()`. This cell calls `helpers.checkpoints.train_resumable(trainer,
# profile)`, which is `trainer.train()` with one aside, the reason for the checkpoint arguments in the
# training call. A real CPT run takes hours, and kernels die, Colab disconnects, people press stop. So
# the trainer writes a **checkpoint** (adapter, optimizer and scheduler state, random-number state)
# every quarter of the run into `outputs/05_trainer`, and `train_resumable` starts from the last
# *complete* checkpoint when there is one: run this cell again after an interruption and it continues
# where it stopped, with the same result as an uninterrupted run (the project's tests check that). It
# also guards against a known unsloth bug: when a checkpoint is reloaded, the trainable copies of
# `embed_tokens` / `lm_head` can come back frozen, and the saved optimizer state then no longer fits
# the optimizer's groups; the helper restores the recorded trainable set first and checks the groups.
# A checkpoint that ends a finished run is not "resumed": the run starts over.
#
# Before training we keep a copy of the trainable embedding matrix and one adapter matrix, so that
# afterwards we can *prove* they changed rather than assume it.

# %%
import time

from helpers.checkpoints import train_resumable
from helpers.memory import format_snapshot, record_stage, training_memory_start
from helpers.training import snapshot_embeddings

embeddings_before = snapshot_embeddings(model)  # copies of the trainable embed_tokens / lm_head
lora_b_param = next(p for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n)
lora_b_before = lora_b_param.detach().float().clone()

memory_at_start = training_memory_start()  # the walkthrough's start_gpu_memory (host RSS on the CPU)
started = time.perf_counter()
train_output = train_resumable(trainer, profile)
wall_seconds = time.perf_counter() - started
steps = trainer.state.global_step
print(f"{steps} optimizer steps in {train_output.metrics['train_runtime']:.1f} s "
      f"({train_output.metrics['train_runtime'] / steps:.2f} s per step)")
print(format_snapshot(record_stage("after training", "05")))
if profile.uses_unsloth and trainer.cpt_attention_route:  # packed on unsloth: did torch's varlen kernel serve it?
    from helpers.support.varlen_attention import unsloth_attention_route, wrapper_calls

    print(f"attention after training: {unsloth_attention_route()}")
    assert wrapper_calls() != 0, "the varlen wrapper was installed, but unsloth's attention never called it"

# %% [markdown]
# ## Memory used for training, the walkthrough's way
#
# The walkthrough reads `torch.cuda.max_memory_reserved()` right before `trainer.train()` ("start")
# and again after it ("peak"), and reports the peak, the difference ("memory for training"), and both
# as a share of the GPU's memory. `helpers.memory.training_memory_start` took the start reading at the
# top of the training cell, just before `train_resumable`; on the CPU the same arithmetic runs on
# host memory (the process's RSS before training, its peak RSS after), which is an analogue, not the
# same quantity. Notebook 06 puts these figures beside the walkthrough's. On a GPU the cell also
# asserts that training needed *some* memory beyond the start: a start reading that already held an
# earlier, larger peak would otherwise report 0.0 GiB without any error.

# %%
from helpers.memory import training_memory_end

training_memory = training_memory_end(memory_at_start)
print(f"measure: {training_memory['measure']}")
print(f"start {training_memory['start_gib']:.3f} GiB, peak {training_memory['peak_gib']:.3f} GiB "
      f"= {training_memory['peak_pct']:.2f}% of {training_memory['total_gib']:.1f} GiB")
print(f"memory used for training: {training_memory['training_gib']:.3f} GiB = {training_memory['training_pct']:.2f}%")
assert training_memory["peak_gib"] >= training_memory["start_gib"]
if training_memory["device"] == "cuda":  # activations and gradients must show: 0.0 means the start was wrong
    assert training_memory["training_gib"] > 0, "the start reading already held a larger peak than training's"

# %% [markdown]
# ## Did both groups really train?
#
# `helpers.training.assert_embeddings_trained` checks, for each trainable embedding copy, that it
# still requires gradients, sits in the optimizer group with the embedding learning rate, and
# changed during training; it raises with the list of failed checks otherwise.

# %%
from helpers.training import assert_embeddings_trained

tied = model.get_base_model().config.tie_word_embeddings
embedding_report = assert_embeddings_trained(model, embeddings_before, trainer.optimizer, profile.embedding_learning_rate,
                                             modules=("embed_tokens",) if tied else ("embed_tokens", "lm_head"))
for name, facts in embedding_report.items():
    print(f"{name}: trained at lr {facts['lr']:.1e}, largest change {facts['max_change']:.2e}")
lora_change = (lora_b_param.detach().float() - lora_b_before).abs().max().item()
print(f"largest change in a LoRA B matrix: {lora_change:.2e}")
assert lora_change > 0, "the LoRA adapters did not change"
embedding_change = max(facts["max_change"] for facts in embedding_report.values())

# %% [markdown]
# ## "Mixed precision" for the embeddings: do their updates survive?
#
# When it adds the adapters, unsloth prints "Training embed_tokens in mixed precision to save VRAM",
# and the walkthrough asks what that means for a 16-bit model. Measured, the answer is: on a bf16 GPU
# unsloth stores the trainable embed_tokens / lm_head copies in bf16, and almost every update of the
# embedding learning rate is then rounded away. bf16 keeps 8 bits of mantissa, so the gap between two
# neighbouring values near a weight of 0.02 is about 1.2e-4; Adam moves each entry by about the learning
# rate, 5e-6, which is less than half that gap, and the weight stays where it was. On the real SmolLM2
# with the 7B recipe, over the whole epoch, 1.1% of the entries in the embedding rows that trained
# changed with bf16 copies, against 100% with fp32 copies. The GPU profile therefore keeps the copies in
# fp32: at 7B that is about 1 GB more for the two matrices' weights and gradients.
# `CPT_EMBEDDING_DTYPE=bfloat16` gives back unsloth's copies, and the check above then fails and says
# why.
#
# The cell measures, for each trainable embedding matrix, the dtype it is stored in, the share of its
# entries that changed, the share of rows that changed at all (a token row of `embed_tokens` only
# changes if the token occurred), and the share of entries changed within those rows. Then it applies
# one step of the embedding learning rate to the matrix as it was before training, stored once in fp32
# and once in bf16, to show the rounding on this very model, CPU included.

# %%
from helpers.training import embedding_change_report, parameter_kind, rounding_survival

change_report = embedding_change_report(model, embeddings_before)
print(f"{'matrix':<14}{'stored as':<11}{'entries changed':>17}{'rows touched':>14}{'changed in touched rows':>25}")
for name, facts in change_report.items():
    print(f"{parameter_kind(name):<14}{facts['dtype']:<11}{facts['changed_share']:>17.2%}"
          f"{facts['rows_touched_share']:>14.2%}{facts['changed_in_touched_rows']:>25.2%}")
matrix_before = next(iter(embeddings_before.values()))  # fp32 copy of the embedding matrix before training
kept = {dtype: rounding_survival(matrix_before, profile.embedding_learning_rate, dtype) for dtype in ("float32", "bfloat16")}
print(f"one step of {profile.embedding_learning_rate:.0e} on this matrix changes {kept['float32']:.1%} of its entries "
      f"stored in fp32 and {kept['bfloat16']:.1%} stored in bf16")
assert all(facts["changed_in_touched_rows"] > 0.9 for facts in change_report.values())
assert kept["bfloat16"] < 0.5 < kept["float32"]

# %% [markdown]
# ## Reading the training loss
#
# The logged loss is the average cross-entropy per predicted token on each step's batch, in nats:
# `exp(loss)` is the perplexity on that batch. What to look for:
#
# * **Level.** A good pre-trained model starts low on simple English (around 2 to 2.5 here); a
#   starting loss near `ln(vocabulary size)` ≈ 10.8 would mean a broken model or broken labels.
# * **Trend, not single steps.** Each step sees different stories, so the curve is noisy; judge it by
#   its trend. A fall during the first steps, flattening as the learning rate decays, is the healthy
#   shape for one epoch of CPT.
# * **Warning signs.** A loss that drops to near 0 means the model sees its labels (a collator bug) or
#   memorises repeated data; one that climbs or turns into `nan` means the learning rate is too high,
#   or fp16 overflowed.

# %%
losses = [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
for step, loss in losses:
    print(f"step {step:3d}  loss {loss:.3f}")
first, last = losses[0][1], sum(loss for _, loss in losses[-3:]) / min(3, len(losses))
print(f"first step {first:.3f} -> mean of the last three {last:.3f}")
uniform_guess = math.log(len(tokenizer))  # the loss of a model that knows nothing: ln(vocabulary size)
assert all(math.isfinite(loss) and loss < uniform_guess + 1 for _, loss in losses), "loss is nan or implausibly high"
assert last < first, "the loss did not go down"

# %% [markdown]
# ## Save the adapter
#
# `save_pretrained` on a PEFT model writes only what was trained: the LoRA matrices and the full
# embedding copies, plus the adapter config that names the base model. `helpers.checkpoints.save_adapter`
# calls it (and the tokenizer's) on a temporary folder that is swapped in only once complete, so an
# interrupted save can never leave a half-written adapter that would load, and a full disk stops with
# a message naming the folder and the free space. Its manifest (`helpers.artifacts`, notebook 02)
# records the data and settings it was trained with, which notebook 06 checks before it loads the
# adapter on top of a fresh base model.

# %%
from helpers.checkpoints import save_adapter
from helpers.memory import snapshot
from helpers.support.files import folder_size_bytes
from helpers.support.paths import relative

train_result = {
    "profile": profile.name,
    "metrics": train_output.metrics,
    "steps": steps,
    "seconds_per_step": train_output.metrics["train_runtime"] / steps,
    "wall_seconds": wall_seconds,
    "log_history": trainer.state.log_history,
    "param_groups": groups,
    "embedding_max_change": embedding_change,
    "memory": snapshot(),
    "training_memory": training_memory,
}
# the adapter and the training record are committed together, as one unit (notebook 02 explains why)
adapter_dir = save_adapter(model, tokenizer, profile=profile, also={"train_result": train_result})
size_mb = folder_size_bytes(adapter_dir) / 1e6
print(f"adapter saved to {relative(adapter_dir)}: {size_mb:.0f} MB")
print(sorted(p.name for p in adapter_dir.iterdir()))
