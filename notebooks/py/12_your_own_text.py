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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/12_your_own_text.ipynb)
#
# # 12 · Your own raw text
#
# Everything so far used TinyStories. Continued pre-training is for *your* domain: manuals, notes,
# papers, a codebase's documentation. This notebook shows how the series takes a folder of `.txt`
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

profile = start("12_your_own_text")

# %% [markdown]
# ## The tokenizer
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
# ## One folder, two ways of cutting it into documents
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
# ## Results
#
# The counts go to `outputs/12_own_text.json`.

# %%
from helpers.artifacts import save_outputs
from helpers.support.paths import artifact_path

save_outputs(profile, {"own_text": {"profile": profile.name, "folder": relative(own_profile.text_dir),
                                    "counts": own_counts}})
print(f"saved {relative(artifact_path('own_text'))}: "
      + "; ".join(f"{label}: {s['documents']} documents, {s['rows']} rows" for label, s in own_counts.items()))
