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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/02_data_prep.ipynb)
#
# # 02 · Data: raw text, the end-of-sequence token, and how text becomes training rows
#
# Continued pre-training needs nothing but text. This notebook loads TinyStories (short, simple
# stories written by GPT-3.5/4 for a study of how small a fluent model can be), marks where each story
# ends, looks at how long the stories are in tokens, and turns them into the rows the trainer will
# see.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("02_data_prep")

# %% [markdown]
# ## Loading: the hub, or the shipped sample
#
# The walkthrough takes the first 2,500 stories of the hub dataset `roneneldan/TinyStories`
# (`split="train[:2500]"`). Offline, the series uses the sample in `data/tinystories-sample/`: the
# first 188 training stories and the first 640 validation stories, in the same JSON Lines shape
# (one `{"text": ...}` per line; `data/tinystories-sample/README.md` gives license and provenance).
# Both go through the same `datasets.load_dataset` call: a hub name in one case, the generic `"json"`
# builder in the other. The helper checks the file first (missing, empty, not UTF-8, a broken line,
# no `text` field) so that a bad file fails with a message that says what to fix.
#
# The code below is what `helpers.data.load_raw_dataset` runs. The hub branch is the walkthrough's
# `load_dataset("roneneldan/TinyStories", split="train[:2500]")`; it runs through the helper, which
# makes that same call and, when the hub cannot be reached, falls back to the sample, repeated up to
# the 2,500 rows asked for so that the run keeps the walkthrough's number of steps (and says so).

# %%
from datasets import load_dataset

from helpers.data import load_raw_dataset, local_sample_files, validate_jsonl
from helpers.support.paths import relative

if profile.text_dir:  # your own folder of .txt files (CPT_TEXT_DIR; see the README)
    dataset, source = load_raw_dataset(profile, split="train")
elif profile.is_local_model:  # offline profiles: the shipped sample
    path = local_sample_files(profile)["train"]
    print(f"{relative(path)}: {validate_jsonl(path)} valid rows")
    dataset, source = load_dataset("json", data_files=str(path), split="train"), f"local sample: {relative(path)}"
else:  # the walkthrough's slice of the hub dataset: load_dataset(profile.dataset_name, split=profile.dataset_split)
    dataset, source = load_raw_dataset(profile, split="train")
print(source)
print(dataset)

# %% [markdown]
# The first five stories, wrapped at 100 characters. They are the same five the walkthrough prints
# (with your own text: your first five documents).

# %%
import textwrap

for index, story in enumerate(dataset["text"][:5]):
    print(f"--- story {index} ---")
    for paragraph in story.split("\n"):
        print(textwrap.fill(paragraph, width=100) if paragraph else "")

# %% [markdown]
# The walkthrough prints these five: Lily and the needle, Beep the car, Fin the fish, the cherry tree,
# and Lily who pretends to be a princess. The cell checks the start of each, so a sample that joins
# two stories into one row (or drops one) fails here.

# %%
WALKTHROUGH_FIRST_FIVE = (
    "One day, a little girl named Lily found a needle in her room.",
    "Once upon a time, there was a little car named Beep.",
    "One day, a little fish named Fin was swimming near the shore.",
    "Once upon a time, in a land full of trees, there was a little cherry tree.",
    "Once upon a time, there was a little girl named Lily. Lily liked to pretend she was a popular princess.",
)
if not profile.text_dir:  # with your own text there is nothing to compare with
    for index, start in enumerate(WALKTHROUGH_FIRST_FIVE):
        assert dataset[index]["text"].startswith(start), f"row {index} is not the walkthrough's story {index}"
    assert all("Once upon a time" not in story[1:] for story in dataset["text"][:5]), "a row holds two stories"
    print("rows 0-4 are the walkthrough's first five stories, one story per row")
assert all(len(story) > 0 for story in dataset["text"][:5])

# %% [markdown]
# ## Why every story must end with EOS
#
# During training the stories are concatenated or batched, and the model only learns what the
# tokens show it. Without a marker between stories it sees "...and they lived happily. Once upon a
# time, Tom..." and learns that a story's last sentence is followed by the first sentence of another.
# It never learns to *stop*, so at generation time it runs on until `max_new_tokens`. Appending the
# tokenizer's end-of-sequence token to every document teaches both things: where a document ends,
# and that generation should end there (`generate` stops at EOS).
#
# Which EOS? The one `generate` stops on: `tokenizer.eos_token`, `</s>` for Mistral and
# `<|im_end|>` for our SmolLM2 (notebook 00 set it from the GGUF metadata).
#
# We append it with `Dataset.map` in batched mode, which is fast and caches its result. Empty rows
# are filtered out first: an empty story would become a lone EOS and teach nothing.

# %%
from transformers import AutoTokenizer

from helpers.modeling import ensure_pad_token, resolve_model_source

tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(profile))
ensure_pad_token(tokenizer)
eos = tokenizer.eos_token
print(f"EOS token: {eos!r} (id {tokenizer.eos_token_id}); PAD token: {tokenizer.pad_token!r} (id {tokenizer.pad_token_id})")


def add_eos(batch):
    return {"text": [text + eos for text in batch["text"]]}


dataset = dataset.filter(lambda row: bool(row["text"].strip()))
dataset = dataset.map(add_eos, batched=True, desc="Appending EOS")
assert all(text.endswith(eos) for text in dataset["text"])
print(repr(dataset[0]["text"][-60:]))

# %% [markdown]
# A related trap: the **padding token must not be the EOS token**. When rows of different lengths
# are batched, the collator pads them and sets the label of every padding position to -100 (ignored
# by the loss), *identifying padding by its token id*. If PAD and EOS share an id, every real EOS is
# masked too, and the model never learns to end a story, exactly what appending EOS was for. Many
# tutorials set `pad_token = eos_token`; with a causal-LM collator that silently undoes this step.

# %%
assert tokenizer.pad_token_id != tokenizer.eos_token_id
print("PAD and EOS are different tokens: EOS stays in the loss")

# %% [markdown]
# ## How long are the stories, in tokens?
#
# Lengths decide `max_seq_length`, batch shapes and therefore memory. We tokenize without
# truncation (`add_special_tokens=False`: the stories carry their own EOS now) and summarise.

# %%
from helpers.data import length_summary, tokenize

tokenized = tokenize(dataset, tokenizer)
lengths = [len(ids) for ids in tokenized["input_ids"]]
summary = length_summary(lengths)
print(summary)
longer = sum(n > profile.max_seq_length for n in lengths)
print(f"{longer} of {len(lengths)} stories are longer than max_seq_length={profile.max_seq_length}")
assert tokenized[0]["input_ids"][-1] == tokenizer.eos_token_id

# %% [markdown]
# ### What does `dataset_num_proc` buy?
#
# The walkthrough passes `dataset_num_proc = 8` to its trainer, which hands it to `Dataset.map` as
# `num_proc`: the tokenization is split across that many worker processes (this machine has two cores,
# so the cell compares one process with two). Whether that saves time
# depends on how much text there is, because starting the workers and shipping the rows to them and
# back costs a fixed amount. The cell times the same tokenization with 1 and 2 processes, on this
# sample and on the walkthrough's 2,500 stories (the sample repeated to that length), with the
# datasets cache off so that each call really tokenizes. Fast tokenizers can also use threads inside
# one call; that is switched off here (as it is in forked workers anyway) so that only the processes
# differ.

# %%
import os
import time

from datasets import concatenate_datasets
from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

os.environ["TOKENIZERS_PARALLELISM"] = "false"


def time_tokenization(data, num_proc: int) -> float:
    started = time.perf_counter()
    data.map(lambda batch: tokenizer(batch["text"], add_special_tokens=False), batched=True,
             remove_columns=data.column_names, num_proc=num_proc, load_from_cache_file=False,
             desc=f"Tokenizing ({num_proc} proc)")
    return time.perf_counter() - started


walkthrough_size = concatenate_datasets([dataset] * (2500 // len(dataset) + 1)).select(range(2500))
num_proc_seconds = {}
bars_were_on = is_progress_bar_enabled()
disable_progress_bar()  # only the timings below, not eight progress bars
for label, data in ((f"{len(dataset)} stories", dataset), ("2,500 stories", walkthrough_size)):
    num_proc_seconds[label] = {n: time_tokenization(data, n) for n in (1, 2)}
    one, two = num_proc_seconds[label][1], num_proc_seconds[label][2]
    print(f"{label:>14}: num_proc=1 {one:.2f} s, num_proc=2 {two:.2f} s ({one / two:.2f}x)")
if bars_were_on:  # switched off for the saved outputs (HF_DATASETS_DISABLE_PROGRESS_BARS): leave them off
    enable_progress_bar()
print(f"this machine has {os.cpu_count()} CPU cores")

# %% [markdown]
# On a couple of thousand short stories the whole tokenization takes a few seconds either way, and a
# second process saves little or nothing (on the run committed here, with the two cores shared with
# other work, the ratios above): the fixed cost of starting it is of the same size as the work. `dataset_num_proc` pays off on datasets of hundreds of thousands of
# documents, and then up to the number of cores; the walkthrough's setting is harmless, not a
# speed-up you would notice.

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(8, 3.5))
ax.hist(lengths, bins=30, color="tab:blue", edgecolor="white")
ax.axvline(profile.max_seq_length, color="tab:red", linestyle="--", label=f"max_seq_length = {profile.max_seq_length}")
ax.set_xlabel("tokens per story (including EOS)")
ax.set_ylabel("stories")
ax.set_title(f"TinyStories token lengths ({len(lengths)} stories)")
ax.legend()
plt.show()

# %% [markdown]
# ## From stories to training rows: padding or packing
#
# A batch is a rectangle of tokens, so stories of different lengths must be made to fit. There are
# two classic answers.
#
# * **Padding** (the walkthrough's setting): one story per row, cut at `max_seq_length`, shorter rows
#   filled with PAD up to the longest row of the batch. Simple, and every row starts at a story's
#   beginning, but the padding positions cost compute and teach nothing, and whatever lies beyond
#   `max_seq_length` is thrown away.
# * **Packing**: concatenate all stories (each ending in EOS) into one stream and cut it into blocks
#   of exactly `max_seq_length`. No padding at all; a long story simply continues into the next
#   block, so nothing is dropped except the stream's final partial block. The cost: a block may start
#   mid-story, and unless told otherwise a token attends across the EOS into the previous story.
#   That can be prevented: restart the positions at every story and give the attention one causal
#   block per story (notebook 05 shows how each branch does it). It matters: on SmolLM2, training
#   with attention across stories left the model 4.5% worse on held-out stories than the same
#   training with each story kept apart.
#   "Padding-free" batching, which unsloth enables by default on recent GPUs, gets packing's
#   efficiency in the same way: rows are concatenated without padding and the attention kernel is
#   told where each one starts.
#
# Both profiles pack (`packing=True`) and keep each story's attention to itself. On the CPU its
# stories are often longer than its 256-token blocks, so padding would throw most of their text
# away; on the GPU, packing with a variable-length attention kernel trains the walkthrough's epoch
# several times faster than padded rows. One switch, `packing` (`CPT_PACKING=0`), gives the
# walkthrough's padded rows.
#
# **Packing changes how many rows make an optimizer step.** The walkthrough's step is 16 padded
# stories: about 4,300 real tokens. A 2,048-token packed row holds about 7.7 stories, so the GPU
# profile takes 2 packed rows a step, the same tokens per step and about the same 160 steps for the
# 2,500 stories. Taking 16 packed rows a step instead would be 8 times the tokens per step and 8 times
# fewer steps (21); at the walkthrough's learning rate the model then learned far less (held-out
# perplexity 7.24 against 6.40, measured on the real SmolLM2 under the 7B recipe, three seeds; notebook
# 05 has the table). Notebook 09 measures the speed difference on this machine.
#
# A coincidence to avoid misreading below: on the CPU the 188 stories pack into about as many
# 256-token blocks as there are stories. A block is not a story: a long story runs over several
# blocks, and a block holds the end of one story and the beginning of the next.

# %%
from helpers.data import pack_blocks, truncate_rows

token_lists = tokenized["input_ids"]
blocks, tail = pack_blocks(token_lists, profile.max_seq_length)
rows, truncated = truncate_rows(token_lists, profile.max_seq_length)
padded_cells = len(rows) * profile.max_seq_length
real_in_padded = sum(len(r) for r in rows)
print(f"packing : {len(blocks)} blocks of {profile.max_seq_length} tokens, {tail} tail tokens left out, 0 padding")
print(f"padding : {len(rows)} rows, {truncated} stories truncated, "
      f"{sum(lengths) - real_in_padded} story tokens cut off, "
      f"{100 * (1 - real_in_padded / padded_cells):.0f}% padding if every row were padded to max_seq_length")
assert sum(len(b) for b in blocks) + tail == sum(lengths)  # packing keeps every token but the tail

# %% [markdown]
# ## The training set, saved for notebook 05
#
# `helpers.data.build_train_dataset` does the steps above (tokenize, then pack or truncate according to
# the profile) and returns the rows with their counts; we save the result with
# `Dataset.save_to_disk` so notebook 05 can load it without repeating the work. We also save the
# stories with EOS as text: on the GPU, unsloth's trainer tokenizes them itself and picks packing or
# padding-free batching (notebook 05). Notebook 03 uses the validation stories, which are never
# trained on.
#
# The three are saved as one unit by `helpers.artifacts.save_outputs`, each with a small manifest
# (`outputs/manifests/`): the profile, the model, the data (its source and a hash of the text), the
# settings that shaped it, and a hash of every file. Every later notebook reads them through
# `helpers.artifacts.require`, which checks that manifest: a dataset made from other text, for another
# model or with another `max_seq_length`, or a file cut off, stops with a message naming the notebook
# to re-run, instead of a silently wrong result. An interrupted save leaves the previous three intact.

# %%
from helpers.artifacts import save_outputs
from helpers.data import build_train_dataset
from helpers.support.files import text_sha256
from helpers.support.paths import artifact_path

train_dataset, stats = build_train_dataset(dataset, tokenizer, profile)  # refuses a corpus smaller than one row
print(stats)
assert stats["rows"] == len(train_dataset) > 0
save_outputs(profile, {
    "dataset": lambda folder: train_dataset.save_to_disk(str(folder)),
    # the stories with EOS, untokenized: unsloth's trainer tokenizes and packs them itself (notebook 05)
    "text_dataset": lambda folder: dataset.save_to_disk(str(folder)),
    "data_stats": {**stats, "length_summary": summary},
}, data={"source": source, "documents": len(dataset), "text_sha256": text_sha256(dataset["text"])})
print(f"saved {len(train_dataset)} rows to {relative(artifact_path('dataset'))}")
