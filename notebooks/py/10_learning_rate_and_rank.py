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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/10_learning_rate_and_rank.ipynb)
#
# # 10 · Learning rate and rank: two of the walkthrough's open questions, measured
#
# The walkthrough trains with a learning rate of 5e-5 and LoRA rank 128, and leaves two questions
# open: *is 5e-5 a pretty small learning rate?* and *how do I pick the rank?* This notebook answers
# both with short training runs of the series' own recipe (`helpers.training.add_lora` and
# `build_trainer`, through `helpers.lab.short_runs.short_run`), scored on held-out stories with
# `helpers.evaluation.perplexity`.
#
# The runs are short on purpose (a few optimizer steps each, so that the notebook takes a couple of
# minutes on two CPU cores), which shapes what they can tell: they measure how far each setting
# moves the model *in the first steps*, not where a full epoch would end. The closing note says what
# carries over.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("10_learning_rate_and_rank")

# %% [markdown]
# ## Data: notebook 02's training rows, and held-out stories
#
# Every run trains on the same rows (notebook 02's, in the same order) and is scored on the same
# validation stories, which no run trains on. The runs are kept small: 4 optimizer steps of one row
# each, no warm-up (a warm-up over 4 steps would leave hardly any steps at the peak rate), and 8
# held-out stories cut to 128 tokens.

# %%
from datasets import load_from_disk

from helpers.artifacts import require
from helpers.data import load_raw_dataset
from helpers.lab.short_runs import short_run, sweep_profile, untrained_copy
from helpers.profiles import weights_are_random

train_rows = load_from_disk(str(require("dataset")))
# unsloth packs the stories itself, each attending only to itself, as in notebook 05
text_rows = load_from_disk(str(require("text_dataset"))) if profile.uses_unsloth else None
validation, source = load_raw_dataset(profile, split="validation")
eval_texts = validation["text"][:8]
EVAL_TOKENS, STEPS, ROWS = 128, 4, 1
random_weights = weights_are_random(profile)
print(f"{len(train_rows)} training rows; {len(eval_texts)} held-out stories from {source}")

# %% [markdown]
# ## Is 5e-5 a small learning rate?
#
# Four learning rates for the adapters, from the walkthrough's 5e-5 up to 2e-3, each with the
# embeddings at a tenth of it (the walkthrough's ratio). Before the sweep, the held-out perplexity of
# the untrained model, the number every run starts from.

# %%
from helpers.evaluation import perplexity
from helpers.modeling import load_model_and_tokenizer

base_model, tokenizer = load_model_and_tokenizer(profile)
ppl_base = perplexity(base_model, tokenizer, eval_texts, max_tokens=EVAL_TOKENS, progress=False, cpu_bf16=profile.cpu_bf16)
print(f"held-out perplexity of the untrained model: {ppl_base:.2f}")

# %%
learning_rates = [5e-5, 2e-4, 5e-4, 2e-3]
lr_runs = []
for lr in learning_rates:
    run_profile = sweep_profile(profile, learning_rate=lr, max_steps=STEPS, batch_size=ROWS)
    given = untrained_copy(profile, base_model, tokenizer)  # every run starts from the untrained model
    result, _, _ = short_run(run_profile, train_rows, eval_texts, eval_max_tokens=EVAL_TOKENS, model_and_tokenizer=given,
                             text_dataset=text_rows)
    lr_runs.append(result)
    print(f"lr {lr:.0e}: loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}, "
          f"held-out perplexity {ppl_base:.2f} -> {result.perplexity:.2f} ({result.seconds:.0f} s)")

# %%
import matplotlib.pyplot as plt

fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(11, 3.8))
for result in lr_runs:
    ax_loss.plot(range(1, len(result.losses) + 1), result.losses, marker="o", label=f"lr {result.learning_rate:.0e}")
ax_loss.set_xlabel("optimizer step")
ax_loss.set_ylabel("training loss")
ax_loss.set_title("Training loss per step")
ax_loss.legend(fontsize=8)
ax_ppl.plot(learning_rates, [r.perplexity for r in lr_runs], marker="o", label=f"after {STEPS} steps")
ax_ppl.axhline(ppl_base, color="grey", linestyle="--", label="untrained")
ax_ppl.set_xscale("log")
ax_ppl.set_xlabel("learning rate (adapters; embeddings at 1/10)")
ax_ppl.set_ylabel("held-out perplexity")
ax_ppl.set_title("Held-out perplexity")
ax_ppl.legend(fontsize=8)
fig.tight_layout()
plt.show()

best_lr = min(lr_runs, key=lambda r: r.perplexity)
walkthrough_lr = lr_runs[0]
print(f"lowest held-out perplexity after {STEPS} steps: lr {best_lr.learning_rate:.0e} ({best_lr.perplexity:.2f}); "
      f"the walkthrough's 5e-5: {walkthrough_lr.perplexity:.2f} (untrained {ppl_base:.2f})")
if not random_weights:
    assert walkthrough_lr.perplexity <= ppl_base * 1.01, "5e-5 should not make the model worse"
    assert best_lr.learning_rate > 5e-5, "in a few steps, a larger rate should move further than 5e-5"

# %% [markdown]
# **Reading it.** Over a handful of steps 5e-5 barely moves the model: the held-out perplexity stays
# close to the untrained one, while larger rates lower it quickly, up to a point where the updates
# overshoot and the loss turns noisy or climbs. So yes, for LoRA 5e-5 *is* small: LoRA learning rates
# are typically 1e-4 to 2e-4 for fine-tuning, and unsloth's own recipes use 2e-4. The walkthrough's
# choice makes sense for its setting, though: 156 steps instead of four, and `embed_tokens` and
# `lm_head` trained in full, where large steps do damage (its embedding rate is 5e-6). A low rate
# over a full epoch is the safe choice for CPT; a few-step sweep like this one is how to find out how
# much faster you may go on your own data, and the run to trust is a full one at the chosen rate.
#
# **Learning rate, steps and tokens per step go together.** A small rate works because the walkthrough
# takes about 160 steps. Anything that cuts the number of steps at the same rate (more rows per step,
# fewer stories) cuts how far the adapters travel, as this sweep shows in miniature. The project
# measured it at full scale, on the real SmolLM2 under the 7B recipe with three seeds: packing 16
# rows of 2,048 tokens a step (21 steps) left held-out perplexity at 7.24, against 6.40 for the
# walkthrough's 157 padded steps and 6.36 for 2 packed rows a step (161 steps, the walkthrough's tokens
# per step). That is why the GPU profile packs 2 rows a step, not 16. To take fewer, bigger steps you
# would have to raise the learning rate, and then measure again.
#
# ## How do I pick the rank?
#
# Three ranks, r = 8, the profile's own (16 on the CPU) and 128 (the walkthrough's; 32 takes the
# middle place on its profile), at the profile's learning rate, with
# `lora_alpha` fixed and rsLoRA, so the update is scaled by alpha / sqrt(r) (notebook 04). Each run
# reports held-out perplexity, its trainable parameters, and memory: the bytes of Adam's state,
# measured from the optimizer (two fp32 numbers per trainable parameter), and on a GPU the peak
# reserved memory of the run and its share used by training (peak minus start, the walkthrough's
# way). Every run, here and in the sweep above, starts from the same untrained model: a copy of the
# one loaded above (`helpers.lab.short_runs.untrained_copy`; on the unsloth branch a fresh load, since
# a 4-bit model cannot be copied). The profile's own rank at the profile's learning rate is a run the
# sweep above already made, with the same seed and data, so its row is taken from there.

# %%
ranks = sorted({8, profile.lora_r, 128} | ({32} if profile.lora_r in (8, 128) else set()))
already_run = {r.lora_r: r for r in lr_runs if r.learning_rate == profile.learning_rate}  # the profile's rank
rank_runs = []
for rank in ranks:
    result = already_run.get(rank) or short_run(
        sweep_profile(profile, lora_r=rank, max_steps=STEPS, batch_size=ROWS), train_rows, eval_texts,
        eval_max_tokens=EVAL_TOKENS, model_and_tokenizer=untrained_copy(profile, base_model, tokenizer),
        text_dataset=text_rows)[0]
    rank_runs.append(result)
    gpu = (f", peak reserved {result.peak_reserved_gib:.2f} GiB, for training {result.training_gib:.2f} GiB"
           if result.peak_reserved_gib is not None else "")
    print(f"r={rank:<4} trainable {result.trainable_parameters / 1e6:7.2f} M  Adam state {result.optimizer_state_gib:.3f} GiB"
          f"  held-out perplexity {result.perplexity:.2f}{gpu}  "
          + ("(the sweep's run above)" if rank in already_run else f"({result.seconds:.0f} s)"))
params = [r.trainable_parameters for r in rank_runs]
assert params[0] < params[1] < params[2], "a higher rank trains more parameters"
assert all(abs(r.optimizer_state_gib * 1024**3 / (8 * r.trainable_parameters) - 1) < 0.02 for r in rank_runs
           if profile.optim.startswith("adamw_torch"))

# %% [markdown]
# **Reading it.** The trainable parameters grow linearly with the rank for the adapters, on top of a
# fixed cost that does not depend on the rank at all: the full `embed_tokens` / `lm_head` copies,
# which for SmolLM2 (28 M parameters, one tied matrix) are larger than its adapters at any rank below 64. Memory
# follows the parameters: Adam keeps 8 bytes per trainable parameter in fp32 (2 in 8-bit), plus
# the gradients. Over a few steps the ranks end at similar perplexities: with rsLoRA the update's
# size does not shrink as r grows, and a short run has not yet asked for more capacity than r = 8
# holds. Rank is capacity, and it shows when there is more to learn than a few steps teach: a
# large, new domain over a full epoch (the walkthrough's 2,500 stories at r = 128), or knowledge the
# model lacks (notebook 07). A practical rule: start at 16 to 64, raise the rank when a longer run's
# held-out loss flattens above where a higher rank gets, and keep it where the memory allows.

# %%
summary = {
    "untrained_perplexity": ppl_base,
    "learning_rate_sweep": {f"{r.learning_rate:.0e}": r.perplexity for r in lr_runs},
    "rank_sweep": {r.lora_r: {"perplexity": r.perplexity, "trainable_parameters": r.trainable_parameters,
                              "adam_state_gib": r.optimizer_state_gib, "peak_reserved_gib": r.peak_reserved_gib}
                   for r in rank_runs},
}
print(summary)
