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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/09_your_own_text.ipynb)
#
# # 09 · Your own text: documents, rows, and context length
#
# *Beyond the walkthrough*, which trains on TinyStories only. Three parts, each about what happens to
# your text on its way into the model: how a folder of `.txt` files becomes documents and rows
# (part 1); how rows are batched, padded or packed, and what each costs (part 2); and what happens
# when your documents are longer than the context the model was trained for (part 3).
#
# ## Part 1 · A folder of your own text
#
# Everything so far used TinyStories. Continued pre-training is for *your* domain: manuals, notes,
# papers, a codebase's documentation. This part shows how the series takes a folder of `.txt`
# files instead, and what happens to the text on the way to training rows.
#
# To run the whole series on your text, point it at the folder:
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
# as for the stories (notebook 02): `append_eos` ends every document with the tokenizer's EOS (so the
# model learns where a document stops) and `build_train_dataset` packs the token stream into
# `max_seq_length` blocks (or pads one document per row when the profile says `packing=False`).
#
# **What it measures:** for `tests/data/own_text/`, three short texts written for this repository (or
# your folder, when `CPT_TEXT_DIR` is set), cut both ways into documents: how many documents, tokens
# and training rows result, and how much packing drops; it asserts one EOS per document and that
# packing accounts for every token. It needs only the tokenizer, no training; it takes seconds.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("09_your_own_text")

# %% [markdown]
# ### The tokenizer
#
# Only the tokenizer is needed here, loaded from the same source as the model (notebook 01), with
# the PAD token made distinct from EOS by `helpers.modeling.ensure_pad_token`, as the model loader does.

# %%
from transformers import AutoTokenizer

from helpers.modeling import ensure_pad_token, resolve_model_source

tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(profile))
ensure_pad_token(tokenizer)
print(f"{type(tokenizer).__name__}: EOS {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}), "
      f"PAD {tokenizer.pad_token!r} (id {tokenizer.pad_token_id})")
assert tokenizer.pad_token_id != tokenizer.eos_token_id

# %% [markdown]
# ### One folder, two ways of cutting it into documents
#
# The cell selects the profile twice, once per setting of `CPT_SPLIT_ON_BLANK_LINES`, loads the
# training documents, and builds the training rows; then it prints what was counted.

# %%
import os

from datasets import disable_progress_bars

from helpers.data import DataError, append_eos, build_train_dataset, load_raw_dataset, tokenize
from helpers.support.paths import relative

disable_progress_bars()  # datasets' per-call progress bars would bury the counts printed below
from helpers.profiles import SPLIT_ENV_VAR, TEXT_DIR_ENV_VAR, select_profile

text_env = {**os.environ, TEXT_DIR_ENV_VAR: os.environ.get(TEXT_DIR_ENV_VAR) or "tests/data/own_text"}
own_counts = {}
for split in (False, True):
    own_profile, own_reason = select_profile(env={**text_env, SPLIT_ENV_VAR: "1" if split else "0"})
    documents, _ = load_raw_dataset(own_profile)
    label = "one per paragraph" if split else "one per file"
    stream = tokenize(append_eos(documents, tokenizer.eos_token), tokenizer)["input_ids"]
    try:
        own_rows, own_stats = build_train_dataset(append_eos(documents, tokenizer.eos_token), tokenizer, own_profile)
    except DataError as err:  # packed, and less text than one block: refused, with what to do about it
        assert own_profile.packing and "Add at least" in str(err)
        print(f"{label}: refused: {err}")
        own_stats = {"documents": len(stream), "tokens": sum(map(len, stream)), "packing": True, "rows": 0,
                     "max_seq_length": own_profile.max_seq_length, "tail_tokens_dropped": sum(map(len, stream))}
    own_counts[label] = own_stats
    stream_eos = sum(ids.count(tokenizer.eos_token_id) for ids in stream)
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
# between paragraphs becomes an EOS, and the model is now told that every paragraph is a document of
# its own, which is right for a file of independent notes and wrong
# for a story told over several paragraphs. (The token counts differ by more than those EOS tokens
# because every tenth document, at least one, is held out for evaluation: with one document per file
# that is a whole file, with paragraphs a single paragraph.) With packing, the stream's last partial block is dropped:
# harmless for a large corpus, but a folder smaller than one block would yield *no* training rows at
# all, so `build_train_dataset` refuses it with a `DataError` that says how much text to add (this
# example is smaller than one of the GPU profile's 2,048-token blocks: run there, the cell prints that
# message and counts 0 rows; with `CPT_PACKING=0` the profile pads one document per row, so nothing is
# lost). And every document ends in exactly one EOS, which the cell asserted.
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
# ### Results
#
# The counts of part 1 go to `outputs/09_own_text.json`.

# %%
from helpers.artifacts import save_outputs
from helpers.support.paths import artifact_path

save_outputs(profile, {"own_text": {"profile": profile.name, "folder": relative(own_profile.text_dir),
                                    "counts": own_counts}})
print(f"saved {relative(artifact_path('own_text'))}: "
      + "; ".join(f"{label}: {s['documents']} documents, {s['rows']} rows" for label, s in own_counts.items()))

# %% [markdown]
# ## Part 2 · Packing vs padding, measured
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

# %% [markdown]
# ### Both kinds of rows, from the same stories
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
# ### Train each, taking turns
#
# Fresh LoRA adapters on the base model, then two timed optimizer steps per setting (after one
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
    batch_size=profile.per_device_train_batch_size, steps=1, learning_rate=profile.learning_rate,
    embedding_learning_rate=profile.embedding_learning_rate, seed=profile.seed,
    cpu_bf16=profile.cpu_bf16)  # bf16 autocast where the CPU has it, as notebook 05 trains
print(format_comparison(speed))
if "packed, stories apart" in speed:
    apart = speed["packed, stories apart"]["real_tokens_per_s"] / speed["packed blocks"]["real_tokens_per_s"]
    print(f"keeping the stories apart: {apart:.2f}x the speed of letting them attend across EOS")
    assert speed["packed, stories apart"]["padding_share"] == 0.0
speedup = speed["packed blocks"]["real_tokens_per_s"] / speed["padded rows"]["real_tokens_per_s"]
print(f"packing trains {speedup:.2f}x as many real tokens per second as padding "
      f"(batch {profile.per_device_train_batch_size}, one timed step each, after one untimed)")
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
# also faster per second on two shared CPU cores varies from run to run: two timed steps are a noisy
# measure, so the cell prints the ratio but asserts only the token counts. The speed claims live in
# `benchmarks/`. The packed blocks measured above are plain causal rows,
# so a story may attend to the one before it; the training itself keeps each story's attention to
# itself (notebook 05, and the third line of the table on the plain branch). On this CPU that costs
# little or no time over a whole training: the two full trainings of
# `benchmarks/cross_document_attention.py` took 231-256 s across and 231-237 s apart (a single timed
# step, as in the line above, swings either way). It gives 4.5% lower held-out perplexity. On an H200 at 7B, packing with torch's variable-length attention trained the
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
# ### Results
#
# The measured speeds go to `outputs/09_packing_vs_padding.json` (the per-step losses stay out).

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

# %% [markdown]
# ## Part 3 · Past the trained context: is RoPE scaling usable without extra training?
#
# The walkthrough notes that unsloth "supports RoPE scaling internally", so `max_seq_length` may
# exceed the context the model was trained for; notebook 01 showed the mechanism (linear scaling
# divides every position by a factor, so the longest sequence is rotated like the last trained
# position was). Whether the model can *use* such positions without further training stayed prose.
# This part measures it: perplexity on text past the trained context, without scaling, with
# linear scaling, and with linear scaling after a few training steps at the longer length.
#
# ### The honest caveat: a stand-in for a short context
#
# SmolLM2-135M was trained on 8,192 positions. Measuring past that means sequences of 10,000 tokens
# or more, and on two CPU cores one forward pass over such a sequence takes minutes (attention grows
# with the square of the length), training on them far longer. So this part **shrinks the
# trained context instead of lengthening the text**, by a config change: it divides RoPE's base
# (`rope_theta`, 100,000) by 64. RoPE rotates each pair of channels at its own speed, from very fast
# (these carry word order) to very slow (these tell near from far over thousands of tokens). In
# training, the fast channels turn through full circles many times, but the slow ones never
# complete a turn within 8,192 positions, so the model only knows part of their circle. Past the
# trained context those channels reach angles it never saw: that is what breaks a model there (Liu
# et al. 2023, "Scaling laws of RoPE-based extrapolation", who also give the length where it happens:
# the period of the first channel that did not complete a turn in training). Dividing the base by 64
# makes the slow channels turn faster, so the same unseen angles come much earlier; the fast
# channels barely change, so local word order keeps working.
#
# The cell below computes where the unseen angles start, from the training length and the base:
# about 8,400 positions for the real model (its trained 8,192, as it should be) and about 620 for
# the stand-in. So below, "trained context" means those ~620 positions of the stand-in, and the
# sequences are 1,024 tokens. It is an emulation, and the cells measure its cost: the stand-in's
# perplexity inside its context, beside the real model's. On a GPU the same cells run unchanged;
# with time to spare there, set `SHRINK = 1` and `LENGTH` above 8,192 to measure the real thing.
#
# **Your own model** (`CPT_MODEL`): the cell picks the divisor itself, the smallest power of two
# that brings the stand-in's context below 640 positions (64 for SmolLM2), and prints it. A model
# with **sliding-window layers** is a different case. Gemma 3 lets five of every six layers attend
# only to the last 512 tokens, with their own RoPE (base 10,000), and only the sixth over the whole
# sequence (base 1,000,000). The windowed layers never see a distance longer than their window, so
# `set_rope` changes the full-attention layers alone, and the cell says how many those are. With
# most of the model unaffected, such a model may lose quality past the stand-in's context rather
# than break down, so the final cell asserts the breakdown only for a model whose every layer
# attends over the whole sequence, and for the other kind only that the stand-in does worse there
# than the real model.

# %%
import math

from helpers.data import load_raw_dataset
from helpers.lab.long_context import long_sequences, position_perplexity, rope_base, set_rope
from helpers.lab.short_runs import small_model_profile
from helpers.modeling import load_model_and_tokenizer
from helpers.profiles import weights_are_random

small = small_model_profile(profile)  # RoPE surgery needs the plain transformers model
model, tokenizer = load_model_and_tokenizer(small)
theta = rope_base(model.config)  # Gemma 3 (CPT_MODEL): the base of its full-attention layers
trained = model.config.max_position_embeddings
head_dim = model.config.head_dim
LENGTH = 1024
SHRINK = None  # None: the smallest power of two that puts the stand-in's context below 5/8 of LENGTH (64 for SmolLM2)


# channel pairs 0, 2, 4 ... turn at speed base ** (-i / head_dim); the first one that did not complete a
# turn within the trained positions is the "critical" one (Liu et al.)
critical = 2 * math.ceil(head_dim / 2 * math.log(trained / (2 * math.pi), theta))


def extrapolation_limit(base: float) -> int:
    """Return the position where the critical channel, at RoPE base `base`, reaches angles unseen in training."""
    return int(2 * math.pi * base ** (critical / head_dim))


if SHRINK is None:
    SHRINK = 2
    while extrapolation_limit(theta / SHRINK) > LENGTH * 5 // 8:
        SHRINK *= 2
context = extrapolation_limit(theta / SHRINK)  # the stand-in's trained context
factor = LENGTH / context  # linear scaling that maps LENGTH back into the trained range
validation, _ = load_raw_dataset(small, split="validation")
eval_sequences = long_sequences(validation["text"], tokenizer, LENGTH, 2)
print(f"{small.model_label}: rope_theta {theta:,.0f}, trained on {trained:,} positions, unseen angles from "
      f"~{extrapolation_limit(theta):,}")
print(f"stand-in: rope_theta {theta:,.0f} / {SHRINK} = {theta / SHRINK:,.1f}, unseen angles (its trained context) from ~{context}; "
      f"{len(eval_sequences)} held-out sequences of {LENGTH} tokens; linear factor {factor:.2f}")
assert abs(extrapolation_limit(theta) - trained) / trained < 0.1  # the formula recovers the real model's context

# %% [markdown]
# ### What a `max_seq_length` beyond the trained context does to the config
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
# instead of dividing the positions. (A model with one RoPE per layer type, such as Gemma 3, gets
# the change on its full-attention layers' entry, as in notebook 01.)

# %%
import copy

import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

config = copy.deepcopy(model.config)  # the real model's config (the stand-in is set later)
wanted = trained * 5 // 2
rope = config.rope_parameters.get("full_attention", config.rope_parameters)  # Gemma 3: one entry per layer type
linear = copy.deepcopy(config)
linear.rope_parameters = {**rope, "rope_type": "linear", "factor": wanted / trained}
linear.max_position_embeddings = wanted
dynamic = copy.deepcopy(config)
dynamic.rope_parameters = {**rope, "rope_type": "dynamic", "factor": wanted / trained}
print(f"trained context {trained}, asked for {wanted}")
print(f"original config: rope_parameters={config.rope_parameters}, max_position_embeddings={trained}")
print(f"linear scaling : rope_parameters={linear.rope_parameters}, max_position_embeddings={wanted}")
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

# %% [markdown]
# ### Perplexity inside and beyond the trained context
#
# `helpers.lab.long_context.position_perplexity` scores every token of each sequence and splits the
# perplexity at the trained context: tokens predicted inside the first ~620 positions (SmolLM2; the
# cell above printed this model's), and tokens
# beyond. (In ordinary text, later tokens are *easier*, since the model has more context, so a
# healthy model shows a lower perplexity beyond than inside.) `helpers.lab.long_context.set_rope` sets
# the rotation speeds in place, so all conditions use one loaded model.

# %%
layer_types = list(getattr(model.config, "layer_types", None) or ["full_attention"] * model.config.num_hidden_layers)
windowed = sum(t != "full_attention" for t in layer_types)
print(f"layers whose RoPE the stand-in changes: {len(layer_types) - windowed} full-attention layers of {len(layer_types)}"
      + (f"; the other {windowed} attend within a window of {model.config.sliding_window} tokens and keep theirs"
         if windowed else ""))
REAL = f"real model (theta {theta:,.0f})"
results = {}
for label, base, linear in ((REAL, theta, 1.0),
                            ("stand-in, no scaling", theta / SHRINK, 1.0),
                            (f"stand-in, linear scaling x{factor:.2f}", theta / SHRINK, factor)):
    set_rope(model, base, linear)
    results[label] = position_perplexity(model, eval_sequences, boundary=context, cpu_bf16=small.cpu_bf16)
    r = results[label]
    print(f"{label:<34} inside {r['inside']:8.2f}   beyond {r['beyond']:8.2f}")

# %% [markdown]
# ### A few training steps at the longer length, with linear scaling
#
# The usual remedy (position interpolation, Chen et al. 2023) is linear scaling *plus* a short
# training run at the new length, so that the model adapts to positions that are now closer
# together than it learned. Here: the series' LoRA recipe (`helpers.lab.short_runs.short_run`: adapters
# plus full embeddings) on the stand-in with linear scaling, for 2 steps of one 1,024-token sequence
# of *training* stories each, then the same held-out sequences. Unlike notebook 05, each sequence is
# trained as one causal row (`isolate_documents=False`): a story that attended only to itself would
# never see a position past its own few hundred tokens, and the far positions are what this run is
# meant to teach.

# %%
from datasets import Dataset

from helpers.lab.short_runs import short_run, sweep_profile

training_stories, _ = load_raw_dataset(small, split="train")
train_rows = Dataset.from_dict({"input_ids": long_sequences(training_stories["text"], tokenizer, LENGTH, 6)})
set_rope(model, theta / SHRINK, factor)
# one causal sequence per row: the point is positions beyond the old context, so here the stories in a
# row attend across their EOS (as in long-context pre-training), not each on its own as in notebook 05
long_profile = sweep_profile(small, learning_rate=5e-4, max_steps=2, batch_size=1).replace(isolate_documents=False)
run, tuned, _ = short_run(long_profile, train_rows, model_and_tokenizer=(model, tokenizer))
label = f"stand-in, linear x{factor:.2f} + {run.steps} steps"
results[label] = position_perplexity(tuned, eval_sequences, boundary=context, cpu_bf16=small.cpu_bf16)
print(f"loss {run.losses[0]:.2f} -> {run.losses[-1]:.2f} in {run.seconds:.0f} s")
print(f"{label:<34} inside {results[label]['inside']:8.2f}   beyond {results[label]['beyond']:8.2f}")

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(9, 3.6))
labels = list(results)
x = range(len(labels))
ax.bar([i - 0.2 for i in x], [results[k]["inside"] for k in labels], width=0.4, label=f"inside ({context} positions)")
ax.bar([i + 0.2 for i in x], [results[k]["beyond"] for k in labels], width=0.4, label=f"beyond (to {LENGTH})")
ax.set_xticks(list(x), [k.replace(", ", ",\n") for k in labels], fontsize=8)
ax.set_yscale("log")
ax.set_ylabel("held-out perplexity (log scale)")
ax.set_title("Perplexity past the trained context")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ### The answer
#
# Read the bars from left to right. The real model is the reference: like any healthy model on
# running text, it finds later tokens *easier* (beyond below inside), since it has more context.
# The stand-in costs some perplexity inside its context (the price of the emulation). Without
# scaling, past its trained context its perplexity explodes: angles it never saw break it. Linear
# scaling without training removes the explosion: squeezed by a factor of 1.65, the positions fall
# back into the trained range, and the cost inside stays small at this factor. (That is SmolLM2; on a model with
# sliding-window layers, such as Gemma 3, the middle bars show a cost rather than an explosion: see the
# caveat at the top.) But beyond remains no
# easier than inside, so the model uses the extra context poorly; and a larger factor costs more
# (an earlier run of this part, at 512 tokens with a factor of 4, measured a perplexity of about 39
# past its boundary with linear scaling, against about 10 without). A few training steps at the longer length with the scaling in
# place bring back the healthy shape, beyond below inside. (Those steps train on TinyStories, so part
# of the drop everywhere is the domain, as in notebook 06; the shape within the arm is the signal.)
#
# So: linear RoPE scaling is usable without training in the sense that the model no longer falls
# apart past its context, at a cost that grows with the factor; to use the longer context well, train
# at the new length, which CPT at a longer `max_seq_length` does anyway.

# %%
stand_in = results["stand-in, no scaling"]
scaled = results[f"stand-in, linear scaling x{factor:.2f}"]
tuned_result = results[label]
print(f"beyond the trained context: no scaling {stand_in['beyond']:.1f}, linear scaling {scaled['beyond']:.1f}, "
      f"linear scaling + {run.steps} steps {tuned_result['beyond']:.1f} (real model {results[REAL]['beyond']:.1f})")
if not weights_are_random(small):
    if not windowed:  # every layer attends over the whole sequence: past its context the stand-in breaks down
        assert stand_in["beyond"] > 2 * stand_in["inside"], "past its context the unscaled stand-in should break down"
    else:  # sliding-window layers (Gemma 3) never see the unseen angles: a cost, not a breakdown
        assert stand_in["beyond"] > results[REAL]["beyond"], "the unscaled stand-in should lose quality past its context"
    assert scaled["beyond"] < stand_in["beyond"], "linear scaling should remove the breakdown"
    assert tuned_result["beyond"] < scaled["beyond"], "a few training steps should recover some quality"
    assert tuned_result["beyond"] <= tuned_result["inside"], "after training, later tokens should be easier again"
