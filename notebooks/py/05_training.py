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
# # 05 · Training: two learning rates, 8-bit Adam, and the loss
#
# The walkthrough's central step: `UnslothTrainer` trains the LoRA adapters and the embedding copies
# for one epoch. This notebook builds the trainer, checks that the optimizer really has two learning
# rates, trains, and reads the loss.

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
# ## The model and the data
#
# The model and its adapters are built again by the helpers that hold notebook 01's and 04's code
# (same seed, so the same adapters). The training data comes from notebook 02, and is rebuilt here in
# seconds if this runtime does not have it.

# %%
from helpers.handoff import training_data
from helpers.modeling import load_model_and_tokenizer
from helpers.training import add_lora

model, tokenizer = load_model_and_tokenizer(profile)
train_dataset, text_dataset = training_data(profile, tokenizer)  # 02's rows, and its stories with EOS
model = add_lora(model, profile)
model.print_trainable_parameters()

# %% [markdown]
# ## The trainer
#
# `UnslothTrainer` is TRL's `SFTTrainer`, itself a transformers `Trainer`, plus one thing: a separate
# learning rate for the embedding matrices, `embedding_learning_rate`, here ten times smaller than the
# adapters'. A row of `embed_tokens` carries what the model knows about its token everywhere; a small
# rate lets the domain move it without wrecking it. `adamw_8bit` is bitsandbytes' AdamW with its two
# running statistics per parameter stored in 8 bits: about 1.2 GB instead of 4.8 GB for 604 M trainable
# parameters. The learning rate climbs over the first 10% of the steps (the warm-up), then falls along
# a half cosine.
#
# The call is the walkthrough's with the profile's values; comments give the walkthrough's where they
# differ. Newer TRL and transformers renamed three of its arguments (`warmup_ratio` is gone: a
# `warmup_steps` below 1 is now a ratio). The checkpoint settings are new: they let an interrupted run
# resume (Going further). unsloth needs a GPU, so the CPU twin is transformers' `Trainer` with the same
# two learning rates and PyTorch's AdamW, built by one helper call.

# %%
from helpers.checkpoints import build_resumable_trainer, checkpoint_settings, record_checkpoints
from helpers.data import text_for_unsloth
from helpers.training import use_torch_varlen

if profile.uses_unsloth and text_for_unsloth(text_dataset, tokenizer) is not None:
    from unsloth import UnslothTrainer, UnslothTrainingArguments, is_bfloat16_supported

    trainer = UnslothTrainer(
        model=model,
        processing_class=tokenizer,  # walkthrough: tokenizer = tokenizer
        train_dataset=text_dataset,  # the stories with EOS; unsloth tokenizes them
        args=UnslothTrainingArguments(
            dataset_text_field="text",  # walkthrough also: dataset_num_proc = 8 (notebook 02 measures it)
            max_length=profile.max_seq_length,  # walkthrough: max_seq_length = 2048
            packing=profile.packing,  # walkthrough: padded stories (notebook 00)
            per_device_train_batch_size=profile.per_device_train_batch_size,  # walkthrough: 2
            gradient_accumulation_steps=profile.gradient_accumulation_steps,  # walkthrough: 8
            num_train_epochs=profile.num_train_epochs,  # 1
            max_steps=profile.max_steps,  # -1: the whole epoch
            learning_rate=profile.learning_rate,  # 5e-5
            embedding_learning_rate=profile.embedding_learning_rate,  # 5e-6
            lr_scheduler_type=profile.lr_scheduler_type,  # "cosine"
            warmup_steps=profile.warmup_ratio,  # walkthrough: warmup_ratio = 0.1
            fp16=not is_bfloat16_supported() or profile.dtype == "float16",
            bf16=is_bfloat16_supported() and profile.dtype != "float16",
            optim=profile.optim,  # "adamw_8bit"
            weight_decay=profile.weight_decay,  # 0.0
            logging_steps=profile.logging_steps,  # 1
            report_to="none",
            seed=profile.seed,  # 3407
            **checkpoint_settings(profile, train_dataset, text_dataset),  # walkthrough: output_dir = "outputs"
        ),
    )
    trainer.cpt_attention_route = use_torch_varlen() if profile.packing else None  # Going further
    record_checkpoints(trainer, profile, text_dataset)
else:  # transformers.Trainer + the embedding learning rate on 02's rows (unsloth on them if the text holds "</s>")
    trainer = build_resumable_trainer(profile, model, tokenizer, train_dataset)

# %% [markdown]
# ### Does the embedding learning rate really apply, and to `lm_head` too?
#
# The walkthrough asks. Two bugs in unsloth's history made this setting fail silently (the rate was
# ignored; the embeddings were dropped from training), so the cell reads the optimizer's parameter
# groups instead of trusting the arguments. SmolLM2 **ties** `lm_head` to `embed_tokens` (one matrix,
# one trainable copy); Mistral's own `lm_head` sits in the same group as `embed_tokens`.

# %%
from helpers.training import describe_param_groups

trainer.create_optimizer()
groups = describe_param_groups(trainer.optimizer, model)
for group in groups:
    print(f"{group['group']:<36} lr={group['lr']:.1e}  {group['parameters'] / 1e6:7.2f} M parameters  "
          f"modules: {', '.join(group['modules'][:4])}{' ...' if len(group['modules']) > 4 else ''}")
embedding_groups = [g for g in groups if {"embed_tokens", "lm_head"} & set(g["modules"])]
assert len(embedding_groups) == 1 and set(embedding_groups[0]["modules"]) <= {"embed_tokens", "lm_head"}
assert abs(embedding_groups[0]["lr"] - profile.embedding_learning_rate) < 1e-12
assert all(abs(g["lr"] - profile.learning_rate) < 1e-12 for g in groups if g not in embedding_groups and g["parameters"])
tied = model.get_base_model().config.tie_word_embeddings
assert ("lm_head" in embedding_groups[0]["modules"]) == (not tied)  # untied: lm_head has its own copy

# %% [markdown]
# ## Train
#
# `trainer.train()`, as in the walkthrough. Around it, the walkthrough's memory readings: PyTorch's
# peak reserved memory, and the part of it that training added (the peak minus a reading taken before).
# The walkthrough took that first reading before its first generation; here it is taken right before
# training. On the CPU the same arithmetic runs on the process's resident memory (RSS: the RAM it
# holds), an analogue rather than the same quantity.

# %%
from helpers.memory import format_snapshot, record_stage, training_memory_end, training_memory_start
from helpers.training import snapshot_embeddings

embeddings_before = snapshot_embeddings(model)  # to check afterwards that the embeddings moved
memory_at_start = training_memory_start()  # walkthrough: start_gpu_memory
trainer_stats = trainer.train()
training_memory = training_memory_end(memory_at_start)
steps = trainer_stats.global_step
print(f"{steps} optimizer steps in {trainer_stats.metrics['train_runtime']:.1f} s")
print(f"peak {training_memory['peak_gib']:.3f} GiB, of which training {training_memory['training_gib']:.3f} GiB "
      f"({training_memory['measure']})")
print(format_snapshot(record_stage("after training", "05")))  # the walkthrough's nvidia-smi reading after training
assert training_memory["peak_gib"] >= training_memory["start_gib"]
if training_memory["device"] == "cuda":
    assert training_memory["training_gib"] > 0, "the start reading already held a larger peak"

# %% [markdown]
# ## Did both learning rates train?
#
# `assert_embeddings_trained` checks that each trainable embedding copy still requires gradients,
# sits in the group with the embedding learning rate, and changed; then one LoRA matrix is checked too.

# %%
from helpers.training import assert_embeddings_trained, is_lora_matrix

report = assert_embeddings_trained(model, embeddings_before, trainer.optimizer, profile.embedding_learning_rate,
                                   modules=("embed_tokens",) if tied else ("embed_tokens", "lm_head"))
for name, facts in report.items():
    print(f"{name}: trained at lr {facts['lr']:.1e}, largest change {facts['max_change']:.2e}")
if tied:  # PEFT lists the one tied matrix under both names (notebook 04)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
lora_b = next(p for n, p in model.named_parameters() if is_lora_matrix(n) and "lora_B" in n)
assert lora_b.detach().abs().max() > 0, "LoRA B starts at zero: training must have moved it"

# %% [markdown]
# ## Reading the loss
#
# The logged loss is the mean cross-entropy per predicted token, in nats, on each step's batch;
# `exp(loss)` is that batch's perplexity. A good model starts low on simple English; a loss near
# `ln(vocabulary size)` means guessing uniformly: weights that did not load, or labels that do not
# match. Judge the trend: a fall over the first steps, flattening as the learning rate decays. A loss
# near 0 means the model sees its labels or memorises; `nan` or a climb means the learning rate is too
# high.
#
# Why does the training loss sit above the held-out loss that notebook 06 measures? Each step's loss is
# measured on rows the model has not trained on yet, by the model as it was before that step, and the
# average over the run includes the early, untrained steps. The held-out number comes from the final
# model. The cell scores 16 training rows again with the final model to show the difference. What
# remains of the gap is no sign of trouble: the CPU default's 12 steps memorise nothing, and a packed
# row often starts in the middle of a story, cut off from its beginning, while each held-out story is
# scored from its start.

# %%
import math

from helpers.profiles import weights_are_random

losses = [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
print("  ".join(f"{step}: {loss:.3f}" for step, loss in losses))
first, last = losses[0][1], sum(loss for _, loss in losses[-3:]) / min(3, len(losses))
mean_logged = sum(loss for _, loss in losses) / len(losses)
rescored = trainer.evaluate(eval_dataset=trainer.train_dataset.select(range(min(16, len(trainer.train_dataset)))))
final_loss = rescored["eval_loss"]
print(f"logged: first step {first:.3f}, mean {mean_logged:.3f}, last three steps {last:.3f}; "
      f"the final model on 16 training rows: {final_loss:.3f}")
assert all(math.isfinite(loss) and loss < math.log(len(tokenizer)) + 1 for _, loss in losses)
assert last < first, "the loss did not go down"
if not weights_are_random(profile):
    assert final_loss < mean_logged, "the final model should score training rows below the run's average loss"

# %% [markdown]
# ## Save the adapter
#
# The walkthrough keeps its model in memory. Here notebook 06 needs it, so `save_pretrained` writes
# what was trained: the LoRA matrices, the full embedding copies, and a config naming the base model.
# `helpers.checkpoints.save_adapter` calls it into a temporary folder that replaces the old one only
# when complete, with a record of the data and settings it was trained with.

# %%
from helpers.checkpoints import save_adapter
from helpers.support.files import folder_size_bytes
from helpers.support.paths import relative

train_result = {"profile": profile.name, "metrics": trainer_stats.metrics, "steps": steps,
                "seconds_per_step": trainer_stats.metrics["train_runtime"] / steps,
                "log_history": trainer.state.log_history, "param_groups": groups,
                "embedding_max_change": max(f["max_change"] for f in report.values()),
                "training_memory": training_memory, "final_model_rows_loss": final_loss}
adapter_dir = save_adapter(model, tokenizer, profile=profile, also={"train_result": train_result})
print(f"adapter saved to {relative(adapter_dir)}: {folder_size_bytes(adapter_dir) / 1e6:.0f} MB")

# %% [markdown]
# ## Going further
#
# ### An untied model, and which embedding rows get a gradient
#
# A tiny random model with untied embeddings and this tokenizer's vocabulary, on the CPU (OLMo's
# layout: Llama's module names, and unsloth leaves it alone), shows both matrices in the embedding group,
# and one forward and backward pass counts the rows that get a gradient. No second `Trainer` is built:
# transformers resets accelerate's process-wide state (device, precision) for each one, which would
# re-point the trainer above; `trainer.train()` refuses to run if that happened.

# %%
from types import SimpleNamespace

import torch
from transformers import OlmoConfig, OlmoForCausalLM

from helpers.training import EMBEDDING_GROUP, embedding_gradient_rows, embedding_param_groups

tiny_profile = profile.replace(backend="transformers", device="cpu", load_in_4bit=False, dtype="float32",
                               use_gradient_checkpointing=False, lora_r=8)
torch.manual_seed(profile.seed)
tiny = add_lora(OlmoForCausalLM(OlmoConfig(
    vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)), tiny_profile)
tiny_groups = describe_param_groups(SimpleNamespace(param_groups=embedding_param_groups(
    tiny, profile.learning_rate, profile.embedding_learning_rate, profile.weight_decay)), tiny)
tiny_embedding = next(g for g in tiny_groups if g["group"] == EMBEDDING_GROUP)
print(f"untied: {tiny_embedding['modules']} at lr {tiny_embedding['lr']:.0e}")
assert {"embed_tokens", "lm_head"} <= set(tiny_embedding["modules"])
probe_ids = torch.tensor([trainer.train_dataset[0]["input_ids"][: profile.max_seq_length]])
rows = embedding_gradient_rows(tiny, probe_ids)
print(f"one row of {probe_ids.numel()} tokens ({rows['distinct_input_tokens']} distinct): embed_tokens rows with a "
      f"gradient {rows['embed_tokens']:,}, lm_head rows {rows['lm_head']:,} of {rows['vocabulary']:,}")
assert rows["embed_tokens"] <= rows["distinct_input_tokens"] < rows["vocabulary"] / 10
assert rows["lm_head"] >= 0.99 * rows["vocabulary"]

# %% [markdown]
# A row of `embed_tokens` gets a gradient only when its token occurs (Adam's momentum then keeps it
# moving for some steps); every row of `lm_head` gets one at every step, because the softmax pushes down
# every token that did not come next. So the small rate matters most for `lm_head`. In SmolLM2's tied
# matrix every row therefore moves.
#
# ### Embedding copies in fp32, not bf16
#
# unsloth keeps the trainable embedding copies in bf16 on a bf16 GPU. bf16 keeps 8 significant bits:
# near a weight of 0.02, neighbouring values are about 1.2e-4 apart, and an Adam step of about the
# learning rate, 5e-6, rounds away. The GPU profiles keep the copies in fp32 instead. On the real SmolLM2
# under the 7B recipe, over one epoch, 1.1% of the entries in the rows that trained changed with bf16
# copies and 100% with fp32 ones; held-out perplexity was lower with fp32 copies in all six same-seed
# pairs on two texts, by about 0.1%, less than the spread between seeds. The cell measures this run.

# %%
from helpers.training import embedding_change_report, parameter_kind, rounding_survival

for name, facts in embedding_change_report(model, embeddings_before).items():
    print(f"{parameter_kind(name):<13} stored as {facts['dtype']:<9} entries changed {facts['changed_share']:7.2%}, "
          f"rows touched {facts['rows_touched_share']:7.2%}, changed in those rows {facts['changed_in_touched_rows']:7.2%}")
    assert facts["changed_in_touched_rows"] > 0.9
matrix = next(iter(embeddings_before.values()))
kept = {dtype: rounding_survival(matrix, profile.embedding_learning_rate, dtype) for dtype in ("float32", "bfloat16")}
print(f"one step of {profile.embedding_learning_rate:.0e} changes {kept['float32']:.1%} of the entries in fp32, "
      f"{kept['bfloat16']:.1%} in bf16")
assert kept["bfloat16"] < 0.5 < kept["float32"]

# %% [markdown]
# ### The schedule
#
# The learning rate of each group at every step of this run: a linear warm-up, then a half cosine.

# %%
import matplotlib.pyplot as plt

lrs = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(range(1, len(lrs) + 1), lrs, marker="o", label="LoRA adapters")
ax.plot(range(1, len(lrs) + 1), [lr * profile.embedding_learning_rate / profile.learning_rate for lr in lrs],
        marker="o", label="embed_tokens / lm_head")
ax.set_xlabel("optimizer step")
ax.set_ylabel("learning rate")
ax.legend()
plt.show()
assert max(lrs) <= profile.learning_rate + 1e-12 and lrs[-1] < max(lrs)

# %% [markdown]
# ### Resuming after an interruption
#
# Kernels die and Colab disconnects. The trainer writes a checkpoint (adapter, optimizer, scheduler and
# random-number state) about every quarter of the run into `outputs/05_trainer`, and `trainer.train()`,
# as built here, starts from the last complete one: run the training cell again and it continues, with
# the same result as an uninterrupted run. It also guards against an unsloth bug that reloads the
# embedding copies frozen ([#3108](https://github.com/unslothai/unsloth/issues/3108)).

# %%
from helpers.checkpoints import last_complete_checkpoint

print(f"last checkpoint: {relative(last_complete_checkpoint(trainer.args.output_dir))}, every {trainer.args.save_steps} steps")
assert last_complete_checkpoint(trainer.args.output_dir) is not None

# %% [markdown]
# ### Packed rows, and what each story attends to
#
# Both branches pack the stories into rows of `max_seq_length` tokens and keep each story's attention
# to itself: the plain twin with a block-diagonal causal mask (one block per story), unsloth by telling
# its attention where each story starts. There the training call hands unsloth torch's variable-length
# ("varlen") flash-attention kernel, one call per row instead of one per story; it needs an Ampere or
# newer GPU, and the route says why when it is not used.

# %%
print(f"attention: {trainer.cpt_attention_route}")
if profile.uses_unsloth and trainer.cpt_attention_route:
    from helpers.support.varlen_attention import wrapper_calls

    assert wrapper_calls() != 0, "the varlen wrapper was installed, but unsloth's attention never called it"
