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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/11_packing_vs_padding.ipynb)
#
# # 11 · Packing vs padding, measured
#
# Notebook 02 introduced the two ways of turning documents into rectangular batches. **Padding**
# (the walkthrough's setting) keeps one document per row, cut at `max_seq_length`, and fills shorter
# rows with PAD up to the longest row of the batch; the padding costs compute and teaches nothing,
# and whatever lies past `max_seq_length` is thrown away. **Packing** concatenates the documents
# (each ending in EOS) and cuts the stream into full blocks, so there is no padding and nothing is
# lost but the stream's tail. *Padding-free* batching, which unsloth switches on by itself on recent
# GPUs, gets packing's efficiency while keeping documents apart in attention. Which to choose is a
# question of speed, and speed should be measured, not assumed.
#
# **What it measures:** both kinds of rows built from this profile's training stories (notebook
# 02's), trained for a few optimizer steps each on a freshly loaded base with fresh LoRA adapters,
# with the causal-LM collator that pads each batch to its longest row. The two settings take turns
# step by step, so a slow moment on a shared machine hits both; each keeps its own weights and
# optimizer; the first step of each is not timed (first-call allocations); and the speed is the
# median of the per-step rates, counting only **real** (non-pad) tokens
# (`helpers.lab.batching_speed.measure_training_speed`). On the CPU default it takes about a minute.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("11_packing_vs_padding")

# %% [markdown]
# ## Both kinds of rows, from the same stories
#
# Notebook 02's stories, each ending in EOS, tokenized once; then cut two ways with the helpers
# notebook 02 taught: `truncate_rows` (one story per row, cut at `max_seq_length`) and `pack_blocks`
# (the stream cut into full blocks). With your own folder of text (`CPT_TEXT_DIR`), which may be too
# small to fill a batch, the measurement uses the shipped sample instead.

# %%
from datasets import disable_progress_bars, load_from_disk

from helpers.artifacts import require
from helpers.data import pack_blocks, tokenize, truncate_rows
from helpers.modeling import load_model_and_tokenizer
from helpers.training import add_lora

disable_progress_bars()  # datasets' per-call progress bars would bury the counts printed below
train_model, tokenizer = load_model_and_tokenizer(profile)  # a fresh base: LoRA is added below

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

# %% [markdown]
# ## Train each, taking turns
#
# Fresh LoRA adapters on the base model, then three timed optimizer steps per setting (after one
# untimed warm-up step each), with the profile's batch size and both learning rates. The table gives
# the median rate of real tokens per second, the speed-up over padding, the share of padded
# positions, and the mean training loss of the timed steps.
#
# On the plain branch a third setting trains the same packed blocks the way notebook 05 does:
# `helpers.data.PackedRowsCollator` restarts the positions at every story and gives each story a causal
# block of its own, so no story attends to the one before it. Does keeping them apart cost speed?
# (unsloth keeps them apart with its own kernels, so this setting is measured on the plain branch only.)

# %%
from helpers.data import PackedRowsCollator
from helpers.lab.batching_speed import format_comparison, measure_training_speed

train_model = add_lora(train_model, profile)
settings = {"padded rows": padded_rows, "packed blocks": packed_rows}
collators = {}
if not profile.uses_unsloth:  # the same blocks, each story attending only to itself (notebook 05's way)
    settings["packed, stories apart"] = packed_rows
    collators["packed, stories apart"] = PackedRowsCollator(tokenizer.eos_token_id, isolate_documents=True)
speed = measure_training_speed(
    train_model, tokenizer, settings, collators=collators,
    batch_size=profile.per_device_train_batch_size, steps=3, learning_rate=profile.learning_rate,
    embedding_learning_rate=profile.embedding_learning_rate, seed=profile.seed)
print(format_comparison(speed))
if "packed, stories apart" in speed:
    apart = speed["packed, stories apart"]["real_tokens_per_s"] / speed["packed blocks"]["real_tokens_per_s"]
    print(f"keeping the stories apart: {apart:.2f}x the speed of letting them attend across EOS")
    assert speed["packed, stories apart"]["padding_share"] == 0.0
speedup = speed["packed blocks"]["real_tokens_per_s"] / speed["padded rows"]["real_tokens_per_s"]
print(f"packing trains {speedup:.2f}x as many real tokens per second as padding "
      f"(batch {profile.per_device_train_batch_size}, 3 timed steps each)")
assert speed["packed blocks"]["padding_share"] == 0.0 < speed["padded rows"]["padding_share"]
# the same number of rows per step: full blocks carry more real tokens than padded rows (a fact, not a timing)
assert speed["packed blocks"]["real_tokens"] > speed["padded rows"]["real_tokens"]

# %% [markdown]
# Where does the gain come from? Part is the padding share in the table: those positions go through
# every layer and are then ignored by the loss. The rest is that a batch with padding needs an
# explicit attention mask, while a batch of full blocks is plain causal attention, the fastest path.
# The loss column is *not* a quality comparison: padded rows always start at a story's beginning
# (the easy, formulaic "Once upon a time" part, and the part of a long story that survives truncation),
# while packed blocks start anywhere, often mid-story with little context, so their average loss is
# higher on the same model.
#
# Which is the default? Both profiles pack (`packing=True`). Every packed step trains more real
# tokens (the table's "real tokens" column), and it keeps the long stories' endings. Whether it is
# also faster per second on two shared CPU cores varies from run to run: three timed steps are a noisy
# measure, so the cell prints the ratio but asserts only the token counts. The speed claims live in
# `benchmarks/`. The packed blocks measured above are plain causal rows,
# so a story may attend to the one before it; the training itself keeps each story's attention to
# itself (notebook 05, and the third line of the table on the plain branch). On this CPU that costs
# little or no time: the line above, and the two full trainings of
# `benchmarks/cross_document_attention.py` (231-256 s across, 231-237 s apart). It gives 4.5% lower
# held-out perplexity. On an H200 at 7B, packing with torch's variable-length attention trained the
# walkthrough's epoch in 61 s against 472 s for its padded rows, at the same tokens per optimizer step
# (2 packed rows against 16 padded stories) and the same quality on a real model. A speed-up counts
# only at the same optimization: 16 packed rows a step were as fast, but took 8 times fewer steps and
# learned far less (notebook 05's table). Either way it is one switch: `profile.replace(packing=False)`
# (or `CPT_PACKING=0`), which `helpers.data.build_train_dataset` and the trainer both follow.

# %%
print(f"this profile: packing={profile.packing} "
      f"({'packed blocks' if profile.packing else 'padded rows'}, one switch from the other)")
if profile.device == "cpu":
    assert profile.packing, "the CPU default should be the faster setting measured above"

# %% [markdown]
# ## Results
#
# The measured speeds go to `outputs/11_packing_vs_padding.json` (the per-step losses stay out).

# %%
from helpers.artifacts import save_outputs
from helpers.support.paths import artifact_path, relative

save_outputs(profile, {"packing_vs_padding": {
    "profile": profile.name,
    "stories": len(token_lists),
    "padded_rows": len(padded_rows), "rows_truncated": truncated,
    "packed_blocks": len(packed_rows), "tail_tokens_dropped": tail,
    "measured": {name: {k: v for k, v in r.items() if k != "losses"} for name, r in speed.items()},
    "packing_speedup": speedup,
}})
print(f"saved {relative(artifact_path('packing_vs_padding'))}: packing {speedup:.2f}x the real tokens per second")
