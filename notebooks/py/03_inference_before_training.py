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
# # 03 · Inference before training: a streamed story, and a number to beat
#
# Before we train, we record what the model does now, in two ways: the story it writes from the
# walkthrough's prompt (read by eye) and its perplexity on held-out stories (a number). Notebook 06
# repeats both after training.

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
# Notebook 01 showed the loading code; from here on a helper holds it. On the GPU, unsloth's
# `for_inference` switches the model to its faster generation path (notebook 06 says more).

# %%
from helpers.modeling import load_model_and_tokenizer

model, tokenizer = load_model_and_tokenizer(profile)
if profile.uses_unsloth:
    from unsloth import FastLanguageModel

    FastLanguageModel.for_inference(model)
print(type(model).__name__, "on", model.device)

# %% [markdown]
# ## Stream a story
#
# `model.generate` returns only when the whole text is done. To watch it appear, we pass a
# **streamer**: an object that `generate` hands each new token to. `TextIteratorStreamer` decodes
# the tokens and lets us loop over the text in pieces ("chunks", about a word each). Because
# `generate` blocks until it finishes, it runs in a background `Thread` while our loop prints.
#
# The code is the walkthrough's, with its printing loop: the first chunk (which echoes the prompt) is
# wrapped with `textwrap`, after that a newline goes out before a chunk that would reach
# `max_print_width`, and the count restarts when the model writes a newline itself. We add two
# arguments: `do_sample=False` asks for **greedy decoding** (always the single most likely next token),
# so the text is reproducible, and `repetition_penalty`, which is 1 (no penalty, the walkthrough's
# decoding) on the GPU profiles and 1.1 on the CPU default, where the small model would otherwise loop
# (notebook 06 explains). The `chunks` list keeps the text for notebook 06. The limit is
# `profile.story_tokens` new tokens: 200 on the CPU, 384 on the 7B profile.

# %%
import textwrap
from threading import Thread

from transformers import TextIteratorStreamer

text_streamer = TextIteratorStreamer(tokenizer)
max_print_width = 100
story_tokens = profile.story_tokens

inputs = tokenizer([profile.prompt], return_tensors="pt").to(model.device)
generation_kwargs = dict(inputs, streamer=text_streamer, max_new_tokens=story_tokens, use_cache=True,
                         do_sample=False, repetition_penalty=profile.repetition_penalty)
thread = Thread(target=model.generate, kwargs=generation_kwargs)
thread.start()

chunks = []  # what the streamer yielded, for notebook 06
line_length = 0
for j, new_text in enumerate(text_streamer):
    chunks.append(new_text)
    if j == 0:  # the prompt, minus its last word
        lines = textwrap.wrap(new_text, width=max_print_width, drop_whitespace=False)
        line_length = len(lines[-1])
        print("\n".join(lines), end="")
    elif line_length + len(new_text) >= max_print_width:
        print()
        print(new_text, end="")
        line_length = len(new_text)
    else:
        print(new_text, end="")
        line_length = 0 if "\n" in new_text else line_length + len(new_text)  # the model's own newline
thread.join()

# %% [markdown]
# Greedy decoding tends to **loop**: once a phrase has repeated, repeating it again becomes the most
# likely continuation. The walkthrough's Mistral-7B did so before training: one sentence 13 times in
# full, and a 14th cut off by the token limit. On the CPU default the repetition penalty prevents it;
# the cell measures this story: the share of 4-word sequences that already occurred earlier in it, and
# its most frequent sentence.

# %%
from collections import Counter

from helpers.profiles import weights_are_random
from helpers.streaming import story_from_stream

before = story_from_stream(tokenizer, profile.prompt, chunks, model.generation_config.eos_token_id)
words = before["text"].split()
grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
repeated = sum(gram in set(grams[:i]) for i, gram in enumerate(grams)) / max(1, len(grams))
sentence, times = Counter(s.strip() for s in before["text"].split(".") if s.strip()).most_common(1)[0]
print(f"{before['new_tokens']} new tokens, {'stopped by itself (EOS)' if before['stopped_at_eos'] else 'no EOS: cut at the limit'}")
print(f"repeated 4-word sequences: {repeated:.0%}; most frequent sentence ({times}x): {sentence!r}")
assert before["text"].strip(), "the model generated nothing"
assert before["new_tokens"] <= story_tokens
if profile.name == "cpu-smollm2" and profile.is_default_model and not weights_are_random(profile):
    assert repeated < 0.5, "with the repetition penalty, SmolLM2's story should not loop"

# %% [markdown]
# ## Held-out perplexity: the number to beat
#
# Reading samples is subjective. **Perplexity** is the standard number: the exponential of the
# average negative log-probability the model gives each actual next token of a text. Lower is
# better; a perplexity of 8 means the model is, on average, as unsure as if it chose among 8 tokens.
# We measure it on **held-out** stories: TinyStories' validation split, which training never sees. If
# it falls after training, the model learned the domain rather than memorising its training rows.
#
# `helpers.evaluation.perplexity` cuts each story to `profile.eval_max_tokens` tokens and averages
# over real tokens only (padding excluded); `cpu_bf16` computes in bf16 on a CPU built for it, as
# notebook 05 trains. Notebook 06 scores the trained model with the same stories and settings.

# %%
import math

from helpers.data import load_raw_dataset
from helpers.evaluation import perplexity

validation, source = load_raw_dataset(profile, split="validation")
eval_texts = validation["text"][: profile.eval_stories]
print(f"held-out stories: {len(eval_texts)} from {source}")
ppl_before = perplexity(model, tokenizer, eval_texts, max_tokens=profile.eval_max_tokens, cpu_bf16=profile.cpu_bf16)
print(f"held-out perplexity before training: {ppl_before:.2f}")
assert math.isfinite(ppl_before) and ppl_before > 1.0
if not weights_are_random(profile):  # a trained model is far better than guessing among all tokens
    assert ppl_before < len(tokenizer) / 100
else:
    print("random weights: this perplexity is not a quality measure (see the run header)")

# %% [markdown]
# ## Memory, and the hand-over to notebook 06
#
# We record memory at this stage: the process's **RSS** (resident set size: the host memory it
# holds) and, on a GPU, what PyTorch's allocator and **NVML** (NVIDIA's management library, which
# `nvidia-smi` reads) report. Then the story and the perplexity go to `outputs/` for notebook 06.

# %%
from helpers.artifacts import save_outputs
from helpers.memory import format_snapshot, record_stage
from helpers.support.files import text_sha256
from helpers.support.paths import relative

print(format_snapshot(record_stage("inference before training", "03")))
saved = save_outputs(profile, {"before": {
    "profile": profile.name,
    "prompt": profile.prompt,
    **before,  # text, new_tokens, stopped_at_eos
    "perplexity": ppl_before,
    "eval_stories": len(eval_texts),
    "eval_max_tokens": profile.eval_max_tokens,
    "first_chunk": chunks[0],
    "max_new_tokens": story_tokens,
}}, data={"source": source, "documents": len(eval_texts), "text_sha256": text_sha256(eval_texts)})["before"]
print(f"saved {relative(saved)}")

# %% [markdown]
# ## Going further
#
# ### What the streamer yields
#
# The streamer releases text only up to the last space it has seen, since the next token might
# still extend the current word. So the first chunk is the prompt minus its last word, and a word
# spread over several tokens leaves empty chunks until it is complete. There is one chunk per token
# (plus one for the prompt and one at the end), which is how the hand-over counted the new tokens.
# With `skip_prompt=True`, as `helpers.streaming.stream_generate` uses, the prompt is not echoed: the
# short generation below yields one chunk per token plus the end.

# %%
import torch

from helpers.streaming import stream_generate

print(f"{len(chunks)} chunks, {chunks.count('')} of them empty")
print(f"first chunk : {chunks[0]!r}\nsecond chunk: {chunks[1]!r}")
first = chunks[0].replace(tokenizer.bos_token or "", "").lstrip()  # some tokenizers print a BOS first
assert profile.prompt.startswith(first) and first != profile.prompt
if profile.name == "cpu-smollm2" and profile.is_default_model:  # this text: the made-up name "Zorvath" takes 4 tokens
    assert "" in chunks, "a word spread over several tokens should leave empty chunks"
torch.manual_seed(profile.seed)
short = stream_generate(model, tokenizer, profile.prompt, max_new_tokens=8, echo_prompt=False)
print(f"\nskip_prompt=True: {len(short.token_ids)} tokens, {len(short.chunks)} chunks, the first {short.chunks[:4]}")
assert short.chunks[0].strip() == "", "with skip_prompt=True the first chunk holds no word yet"
assert len(short.chunks) == len(short.token_ids) + 1, "one chunk per token, plus one at the end"

# %% [markdown]
# ### The original notebook's printing loop
#
# The walkthrough shows an example output of unsloth's original notebook whose loop was slightly
# different. The cell runs that loop on the same chunks, into a string, and measures it:
#
# * `textwrap.wrap` drops the first chunk's trailing space, so the prompt's last two words run
#   together ("far faraway,"): the one character lost;
# * when the count restarts at 0, the chunk that crossed the width is not counted, so the next line
#   can run past the width by up to one chunk;
# * chunks carry their trailing space, so lines end in a space;
# * an empty first chunk makes `textwrap.wrap` return an empty list, and the loop stops with an
#   `IndexError`.

# %%
def original_wrap(chunks: list[str], max_print_width: int) -> str:
    out, length = "", 0
    for j, new_text in enumerate(chunks):
        if j == 0:
            wrapped_text = textwrap.wrap(new_text, width=max_print_width)
            length = len(wrapped_text[-1])
            out += "\n".join(wrapped_text)
        else:
            length += len(new_text)
            if length >= max_print_width:
                length = 0
                out += "\n"
            out += new_text
    return out


printed = original_wrap(chunks, max_print_width)
lines = printed.split("\n")
too_long = [len(line) for line in lines if len(line) > max_print_width]
lost = len("".join(chunks).replace("\n", "")) - len(printed.replace("\n", ""))  # newlines aside
print(f"lines longer than {max_print_width}: {too_long}; lines ending in a space: "
      f"{sum(line.endswith(' ') for line in lines)} of {len(lines)}; characters lost: {lost}")
assert lost > 0 and max(len(line) for line in lines) <= max_print_width + max(len(c) for c in chunks)
try:
    original_wrap([""] + chunks[1:], max_print_width)
    error = None
except IndexError as err:
    error = err
print(f"first chunk empty -> {type(error).__name__}: {error}")
assert isinstance(error, IndexError)

# %% [markdown]
# ### A printer without the quirks
#
# `helpers.streaming.WrappedPrinter` wraps on words: it holds back each word until a space or a
# newline completes it, then prints it on the current line or starts a new one. Newlines from the
# model reset the column; empty chunks need no special case. `stream_generate` runs the thread and
# the streamer around it.

# %%
from helpers.streaming import WrappedPrinter

pieces = []
printer = WrappedPrinter(width=max_print_width, write=pieces.append)
for chunk in [""] + chunks:  # an empty first chunk is no problem
    printer.feed(chunk)
printer.close()
wrapped = "".join(pieces)
print("\n".join(wrapped.splitlines()[:4]) + "\n...")
assert max(len(line) for line in wrapped.splitlines()) <= max_print_width
assert not any(line.startswith(" ") for line in wrapped.splitlines())
assert wrapped.split() == "".join(chunks).split()  # same words, only the line breaks differ
