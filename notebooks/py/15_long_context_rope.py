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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/15_long_context_rope.ipynb)
#
# # 15 · Past the trained context: is RoPE scaling usable without extra training?
#
# The walkthrough notes that unsloth "supports RoPE scaling internally", so `max_seq_length` may
# exceed the context the model was trained for; notebook 01 showed the mechanism (linear scaling
# divides every position by a factor, so the longest sequence is rotated like the last trained
# position was). Whether the model can *use* such positions without further training stayed prose.
# This notebook measures it: perplexity on text past the trained context, without scaling, with
# linear scaling, and with linear scaling after a few training steps at the longer length.
#
# ## The honest caveat: a stand-in for a short context
#
# SmolLM2-135M was trained on 8,192 positions. Measuring past that means sequences of 10,000 tokens
# or more, and on two CPU cores one forward pass over such a sequence takes minutes (attention grows
# with the square of the length), training on them far longer. So this notebook **shrinks the
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
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("15_long_context_rope")

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
# ## Perplexity inside and beyond the trained context
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
    results[label] = position_perplexity(model, eval_sequences, boundary=context)
    r = results[label]
    print(f"{label:<34} inside {r['inside']:8.2f}   beyond {r['beyond']:8.2f}")

# %% [markdown]
# ## A few training steps at the longer length, with linear scaling
#
# The usual remedy (position interpolation, Chen et al. 2023) is linear scaling *plus* a short
# training run at the new length, so that the model adapts to positions that are now closer
# together than it learned. Here: the series' LoRA recipe (`helpers.lab.short_runs.short_run`: adapters
# plus full embeddings) on the stand-in with linear scaling, for 6 steps of one 1,024-token sequence
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
long_profile = sweep_profile(small, learning_rate=5e-4, max_steps=6, batch_size=1).replace(isolate_documents=False)
run, tuned, _ = short_run(long_profile, train_rows, model_and_tokenizer=(model, tokenizer))
label = f"stand-in, linear x{factor:.2f} + {run.steps} steps"
results[label] = position_perplexity(tuned, eval_sequences, boundary=context)
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
# ## The answer
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
# (a first run of this notebook, at 512 tokens with a factor of 4, measured a perplexity of about 39
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
