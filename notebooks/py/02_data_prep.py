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
# Continued pre-training needs nothing but text. This notebook loads the walkthrough's TinyStories
# (short stories that GPT-3.5 and GPT-4 wrote in the words of a small child), marks where each story
# ends, and turns the stories into the rows the trainer will see.

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
# ## Loading the stories
#
# The walkthrough takes the first 2,500 stories of the hub dataset `roneneldan/TinyStories`. The CPU
# profile reads its first 188 from `data/tinystories-sample/`, with the same `load_dataset` and its
# `"json"` builder: a JSON Lines file, one `{"text": ...}` object per line. `validate_jsonl`
# checks that file first, so a broken one fails with what to fix. A GPU without network falls back to
# the sample, repeated to 2,500 rows, and says so.

# %%
from datasets import load_dataset

from helpers.data import load_raw_dataset, local_sample_files, validate_jsonl
from helpers.support.paths import relative

if profile.text_dir:  # your own folder of .txt files (CPT_TEXT_DIR; see the README)
    dataset, source = load_raw_dataset(profile, split="train")
elif profile.is_local_model:  # the CPU profile: the shipped sample
    path = local_sample_files(profile)["train"]
    print(f"{relative(path)}: {validate_jsonl(path)} valid rows")
    dataset = load_dataset("json", data_files=str(path), split="train")
    source = f"local sample: {relative(path)}"
else:  # the walkthrough: load_dataset("roneneldan/TinyStories", split="train[:2500]")
    try:
        dataset = load_dataset(profile.dataset_name, split=profile.dataset_split)
        source = f"hub: {profile.dataset_name} {profile.dataset_split}"
    except Exception:  # no network: the helper loads the sample instead, and says so
        dataset, source = load_raw_dataset(profile, split="train")
print(source)
print(dataset)

# %% [markdown]
# ## Every story ends with EOS
#
# Without a marker between stories the model reads "...happily ever after. Once upon a time, Tom..."
# and learns that a story runs on into the next: it never learns to stop. So the walkthrough appends
# the tokenizer's **end-of-sequence (EOS)** token, the one `generate` stops at, to every story: `</s>`
# for Mistral, `<|im_end|>` for SmolLM2. Its `map` is batched: the function gets a list of stories at
# a time. A blank row would become a lone EOS, so blank rows are dropped first.

# %%
from transformers import AutoTokenizer

from helpers.modeling import ensure_pad_token, resolve_model_source

tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(profile))  # the tokenizer notebook 01 loaded
ensure_pad_token(tokenizer)  # a padding token that is not EOS (below)

EOS_TOKEN = tokenizer.eos_token


def formatting_prompts_func(examples):
    return {"text": [example + EOS_TOKEN for example in examples["text"]]}


dataset = dataset.filter(lambda row: bool(row["text"] and row["text"].strip()))
dataset = dataset.map(formatting_prompts_func, batched=True)
assert all(text.endswith(EOS_TOKEN) for text in dataset["text"])
print(f"EOS {EOS_TOKEN!r} (id {tokenizer.eos_token_id}); PAD {tokenizer.pad_token!r} (id {tokenizer.pad_token_id})")

# %% [markdown]
# The first five stories, wrapped at 100 characters as the walkthrough prints them, each now ending in
# EOS. The cell checks that they are the walkthrough's five, one story per row (with your own text:
# your first five documents, unchecked).

# %%
import textwrap

for index, story in enumerate(dataset["text"][:5]):
    print(f"--- story {index} ---")
    for paragraph in story.split("\n"):
        print(textwrap.fill(paragraph, width=100) if paragraph else "")

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
assert all(len(story) > len(EOS_TOKEN) for story in dataset["text"][:5])

# %% [markdown]
# **The padding token must not be EOS.** A batch of rows of different lengths fills the short ones
# with a **padding** token (PAD), and transformers' language-model collator (the function that builds
# batches) keeps PAD out of the loss by its token id. If PAD were EOS, every real EOS would leave the loss too, and the model
# would never learn to stop. `ensure_pad_token` picked a PAD that is not EOS.

# %%
assert tokenizer.pad_token_id != tokenizer.eos_token_id
print("PAD and EOS are different tokens: EOS stays in the loss")

# %% [markdown]
# ## The stories in tokens
#
# Lengths decide how stories become rows. The cell tokenizes every story whole and counts those longer
# than `max_seq_length`.

# %%
import matplotlib.pyplot as plt

from helpers.data import length_summary, tokenize

tokenized = tokenize(dataset, tokenizer)  # no truncation, no special tokens added: each story ends in its EOS
lengths = [len(ids) for ids in tokenized["input_ids"]]
summary = length_summary(lengths)
print(summary)
longer = sum(n > profile.max_seq_length for n in lengths)
print(f"{longer} of {len(lengths)} stories are longer than max_seq_length={profile.max_seq_length}")
assert tokenized[0]["input_ids"][-1] == tokenizer.eos_token_id

fig, ax = plt.subplots(figsize=(8, 3.5))
ax.hist(lengths, bins=30, color="tab:blue", edgecolor="white")
ax.axvline(profile.max_seq_length, color="tab:red", linestyle="--", label=f"max_seq_length = {profile.max_seq_length}")
ax.set_xlabel("tokens per story (including EOS)")
ax.set_ylabel("stories")
ax.set_title(f"TinyStories token lengths ({len(lengths)} stories)")
ax.legend()
plt.show()

# %% [markdown]
# ## From stories to rows: padding or packing
#
# A batch is a rectangle of tokens. Two ways to fill it:
#
# * **Padding** (the walkthrough): one story per row, cut at `max_seq_length`, short rows filled with
#   PAD. Each row starts a story, but PAD costs compute and teaches nothing, and text past
#   `max_seq_length` is lost.
# * **Packing**: all stories, each ending in EOS, in one stream cut into blocks of exactly
#   `max_seq_length` tokens. Nothing is padded or cut but the stream's last partial block; a long story
#   runs on into the next block. So that a story does not attend to the one before it in its block,
#   positions restart at each story and attention gets a **block-diagonal mask**: one causal block
#   (each token sees only the tokens before it) per story (notebook 05).
#
# Both default profiles pack: on the CPU, padding would cut every story longer than 256 tokens; on the
# GPU, packing is faster. There unsloth hands the stories to TRL, which packs whole stories into rows of
# up to 2,048 tokens by best fit instead of cutting one stream. `CPT_PACKING=0` gives the walkthrough's
# padded rows. A block is not a story: it may hold the end of one and the start of the next.

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
assert truncated == longer  # padding cuts every story longer than max_seq_length

# %% [markdown]
# ## The training set, saved
#
# `build_train_dataset` does the steps above as the profile asks (tokenize, then pack or cut). The
# cell saves its rows for notebook 05, the stories with EOS as text (on the GPU, unsloth's trainer
# tokenizes text itself), and the counts. `save_outputs` gives each a **manifest**: a small file naming
# the profile, model, data (with a hash of the text) and settings. Later notebooks read them through
# `require`, which stops, naming the notebook to re-run, when they belong to another run.

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

# %% [markdown]
# ## Going further
#
# ### Packing, measured
#
# The walkthrough's optimizer step is 2 rows × 8 gradient-accumulation steps (the gradients of 8
# batches summed before one update): 16 padded stories, about 4,300 tokens with Mistral's tokenizer on
# the shipped sample.
# A 2,048-token packed row holds about 7.7 stories, so the packed GPU profile takes 2 rows a step:
# about the same tokens and number of steps. Measured on the real SmolLM2 under the 7B recipe, three
# seeds (benchmarks/RESULTS.md), in held-out perplexity (how surprised the model is by stories it never
# trained on; lower is better): these packed rows reached 6.36, the padded rows 6.40; 16 packed rows a
# step took 7.5× fewer steps and reached only 7.24. Letting each story attend to the one before it in
# its row cost 4.5% in perplexity (the CPU recipe, three seeds).
#
# ### What does `dataset_num_proc` buy?
#
# The walkthrough passes `dataset_num_proc = 8` to its trainer, commented "How many threads to use for
# tokenization?". They are processes, not threads: `Dataset.map(num_proc=8)` splits the rows over 8
# worker processes, and starting them and shipping rows to them costs a fixed time. The cell times one
# and two processes (this machine has two cores) on the sample and on 2,500 stories, with the cache
# and the tokenizer's own threads off.

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
# On these few thousand short stories the tokenization took seconds at most, and a second process
# changed that by a fraction of a second, one way or the other: far from the 2× two cores could give,
# because of that fixed cost (the ratios above, on two cores shared with other work). `dataset_num_proc` pays off on hundreds of
# thousands of documents, up to the number of cores.
