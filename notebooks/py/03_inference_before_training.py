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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/03_inference_before_training.ipynb)
#
# # 03 · Inference before training: streaming text, and a number to beat
#
# Before changing the model we record what it does now, in two ways: the text it writes from the
# walkthrough's prompt (judged by eye), and its **perplexity on held-out stories** (judged by
# number). Notebook 06 repeats both after training.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("03_inference_before_training")

# %% [markdown]
# ## Load the model
#
# Notebook 01 taught the loading code; from here on we call the helper that contains it.

# %%
from helpers.modeling import load_model_and_tokenizer

model, tokenizer = load_model_and_tokenizer(profile)
if profile.uses_unsloth:
    from unsloth import FastLanguageModel

    FastLanguageModel.for_inference(model)  # unsloth's faster generation path (notebook 04 explains)
print(type(model).__name__, "on", model.device)

# %% [markdown]
# ## Streaming generation in a thread
#
# `model.generate` returns only when the whole continuation is done. To watch the text appear
# token by token, transformers offers *streamers*: objects that `generate` calls after every new
# token. `TextIteratorStreamer` decodes the tokens into text and puts the pieces in a queue that
# you can iterate over. Since `generate` blocks its caller, it must run in a **separate thread**,
# while the main thread reads from the streamer and prints. The streamer yields text only once it
# can be decoded unambiguously (typically at word boundaries), so the chunks are words or bits of
# words, with their spaces attached.
#
# First, what the chunks look like. With `skip_prompt=False` the streamer also emits the prompt.
# The cell collects every chunk and checks what the **first chunk** holds.

# %%
from threading import Thread

import torch
from transformers import TextIteratorStreamer

torch.manual_seed(profile.seed)
inputs = tokenizer(profile.prompt, return_tensors="pt").to(model.device)
streamer = TextIteratorStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
generation = dict(inputs, streamer=streamer, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.pad_token_id)
thread = Thread(target=model.generate, kwargs=generation)
thread.start()
chunks = list(streamer)
thread.join()
print(f"{len(chunks)} chunks, {chunks.count('')} of them empty")
print(f"first chunk : {chunks[0]!r}")
print(f"second chunk: {chunks[1]!r}")
assert profile.prompt.startswith(chunks[0]) and chunks[0] != profile.prompt

# %% [markdown]
# The first chunk is the prompt **minus its last word**: the streamer only releases text up to the
# last space it has seen, because the next token might still extend the current word. The prompt's
# final word ("away,") therefore arrives together with the first generated word. Empty chunks
# appear while a word spread over several tokens is still incomplete. With `skip_prompt=True` the
# prompt is never emitted at all. A printer has to cope with all three: partial words, empty
# chunks, and a prompt that may or may not be part of the stream.
#
# ## Printing a stream readably: three naive attempts
#
# The walkthrough wraps the streamed text at a fixed width. It is worth seeing why the obvious ways
# do not work; each is shown on the chunks collected above, without calling the model again.
#
# **1. Print each chunk as it comes** (`print(chunk, end="")`). Correct text, but no wrapping: one
# paragraph becomes one very long line.

# %%
print("".join(chunks))

# %% [markdown]
# **2. Wrap each chunk separately** (`textwrap.fill(chunk)`). Each chunk is a word or less, so wrapping
# it does nothing useful, and printing every piece on its own line destroys the text.

# %%
import textwrap

for chunk in chunks[:8]:
    print(textwrap.fill(chunk, width=30))

# %% [markdown]
# **3. Re-wrap everything received so far, after every chunk.** The *result* is right, but the work
# grows with the square of the length, and in a terminal each re-print scrolls the screen (in
# Jupyter you would need `clear_output`, which flickers). Here we only count the characters printed.

# %%
printed, received = 0, ""
for chunk in chunks:
    received += chunk
    printed += len(textwrap.fill(received, width=30))
print(f"text of {len(received)} characters -> {printed} characters printed by re-wrapping after every chunk")

# %% [markdown]
# **The fix: wrap incrementally.** Keep track of the current column; hold back the word being
# received until a space or newline completes it; then either print it on the current line or start
# a new line first. The model's own newlines are honoured, and a word longer than a line is cut.
# That is `helpers.streaming.WrappedPrinter` (unit-tested in `tests/test_streaming.py` for long
# words, newlines inside chunks, empty chunks, and chunks that land exactly on the width), and
# `helpers.streaming.stream_generate` wraps the thread and the streamer above around it.

# %%
from helpers.streaming import WrappedPrinter

lines = []
printer = WrappedPrinter(width=30, write=lines.append)
for chunk in chunks:
    printer.feed(chunk)
printer.close()
wrapped = "".join(lines)
print(wrapped)
assert max(len(line) for line in wrapped.splitlines()) <= 30
assert wrapped.split() == "".join(chunks).split()  # same words, only the line breaks differ

# %% [markdown]
# ## The "before" story
#
# Now the real thing: the walkthrough's prompt, greedy decoding (always the most likely next token,
# so the result is reproducible), wrapped at 100 characters as it streams.

# %%
from helpers.streaming import stream_generate

before = stream_generate(model, tokenizer, profile.prompt, max_new_tokens=profile.max_new_tokens, width=100)
assert before.text.strip(), "the model generated nothing"

# %% [markdown]
# Small instruct models asked to continue a prompt like this often fall into a loop, repeating a
# phrase with small variations; large base models produce something fluent but not necessarily in
# TinyStories' style. Keep this text in mind for notebook 06.
#
# ## Held-out perplexity
#
# Reading samples is subjective. **Perplexity** on text the model will not be trained on is the
# standard objective measure: the exponential of the average negative log-probability the model
# assigns to each actual next token. A perplexity of 8 means the model is, on average, as uncertain
# as if it chose uniformly among 8 tokens. After continued pre-training on TinyStories it should fall
# on *held-out* TinyStories (the validation split), which shows the model learned the domain rather
# than memorised the training rows.
#
# `helpers.evaluation.perplexity` cuts each story to the profile's `eval_max_tokens`, batches them,
# and averages over real tokens only (padding excluded).

# %%
import math

from helpers.data import load_raw_dataset
from helpers.evaluation import perplexity

validation, source = load_raw_dataset(profile, split="validation")
eval_texts = validation["text"][: profile.eval_stories]
print(f"held-out stories: {len(eval_texts)} from {source}")
ppl_before = perplexity(model, tokenizer, eval_texts, max_tokens=profile.eval_max_tokens)
print(f"held-out perplexity before training: {ppl_before:.2f}")
assert math.isfinite(ppl_before) and ppl_before > 1.0
if not profile.is_smoke_model:  # a trained model is far better than guessing among all tokens
    assert ppl_before < len(tokenizer) / 100

# %% [markdown]
# ## Memory and hand-over
#
# We record memory after inference and save the "before" text and perplexity for notebook 06.

# %%
from helpers.memory import format_snapshot, record_stage
from helpers.paths import artifact_path, relative
from helpers.storage import write_json

print(format_snapshot(record_stage("inference before training", "03")))
saved = write_json(artifact_path("before"), {
    "profile": profile.name,
    "prompt": profile.prompt,
    "text": before.text,
    "perplexity": ppl_before,
    "eval_stories": len(eval_texts),
    "eval_max_tokens": profile.eval_max_tokens,
    "first_chunk": chunks[0],
})
print(f"saved {relative(saved)}")
