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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/07_forgetting.ipynb)
#
# # 07 · Forgetting: what continued pre-training costs outside its domain
#
# Notebooks 00-06 ran the walkthrough's recipe and showed that it works: the held-out perplexity on
# TinyStories fell and the model's prose moved towards the stories. This notebook asks what that cost.
# Continued pre-training optimises one thing, the likelihood of the new text; nothing in that loss
# rewards the model for keeping what it knew about anything else, and every weight the optimizer
# moves towards children's stories was also doing some other job. When the new domain is narrow, the
# model can become measurably worse at everything outside it. This is called **catastrophic
# forgetting**, although in practice it is usually gradual rather than catastrophic.
#
# **What it measures:** perplexity on text from *outside* the domain, before (the base model) and
# after (base + notebook 05's adapter), with the same function and cut length as the in-domain
# numbers of notebooks 03 and 06, and the two changes side by side. It trains nothing; on the CPU
# default it takes well under a minute.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("07_forgetting")

# %% [markdown]
# ## Inputs from the earlier notebooks
#
# The adapter trained by notebook 05, and the in-domain (held-out) perplexities of notebook 06,
# which measured both the base model and the trained one. A missing file stops here with the name of
# the notebook to run first.

# %%
from helpers.artifacts import require
from helpers.support.files import read_json

adapter_dir = require("adapter")
after = read_json(require("after"))
print(f"in-domain (held-out) perplexity from notebook 06: "
      f"{after['perplexity_before']:.2f} → {after['perplexity_after']:.2f}")

# %% [markdown]
# ## Out-of-domain text
#
# We need text from outside the domain that ships with the repository's environment and is selected
# the same way every time. Every Python installation carries one: `pydoc_data.topics.topics`, the
# sections of the language reference that `help("assert")` prints. It is general technical English
# with some code in it, about as far from "Lily and her dog went to the park" as a small offline
# sample can get. The helper sorts the topics by name, keeps those long enough to fill the profile's
# evaluation window (`eval_max_tokens`), and takes the first 16. (The text of these topics changes
# slightly between Python versions, so compare numbers only across runs on the same version; the
# header prints it.)

# %%
import platform

from helpers.lab.forgetting import general_english_passages

passages = general_english_passages(count=16)
ood_names = [name for name, _ in passages]
ood_texts = [text for _, text in passages]
print(f"{len(passages)} help topics of Python {platform.python_version()}: {', '.join(ood_names)}")
print(f"each cut to {profile.eval_max_tokens} tokens; the first one begins: {ood_texts[0][:120]!r}")
assert len(set(ood_names)) == len(ood_names) == 16

# %% [markdown]
# ## Before: the base model
#
# The base model as notebook 03 loaded it. `perplexity_per_text` scores each passage separately
# (so that we can later ask *which* ones got worse) and `pooled` combines them into one
# token-weighted perplexity, the same number that scoring all passages in one call would give.

# %%
from helpers.lab.forgetting import perplexity_per_text, pooled
from helpers.modeling import load_model_and_tokenizer

base_model, tokenizer = load_model_and_tokenizer(profile)
if profile.uses_unsloth:
    from unsloth import FastLanguageModel

    FastLanguageModel.for_inference(base_model)
ood_before_rows = perplexity_per_text(base_model, tokenizer, ood_texts, profile.eval_max_tokens)
ood_before = pooled(ood_before_rows)
print(f"out-of-domain perplexity of the base model: {ood_before:.2f} "
      f"over {sum(r['tokens'] for r in ood_before_rows)} predicted tokens")

# %% [markdown]
# ## After: base + the CPT adapter
#
# Loaded as notebook 06 taught it, through `helpers.modeling.load_trained_model`: on the GPU branch
# unsloth's `from_pretrained` takes the adapter folder and loads the 4-bit base underneath it; on the
# plain branch `PeftModel` attaches the adapter to the base model we already have (which it modifies
# in place, so no second copy of the weights is made).

# %%
import gc

import torch

from helpers.modeling import load_trained_model

if profile.uses_unsloth:  # unsloth loads its own base under the adapter: free this one first
    base_model = None
    gc.collect()
    torch.cuda.empty_cache()
model, tokenizer = load_trained_model(profile, adapter_dir, base_model, tokenizer)
ood_after_rows = perplexity_per_text(model, tokenizer, ood_texts, profile.eval_max_tokens)
ood_after = pooled(ood_after_rows)
print(f"Out-of-domain perplexity: {ood_before:.2f} → {ood_after:.2f}")

# %% [markdown]
# ## In-domain gain beside out-of-domain change
#
# The in-domain numbers are notebook 06's (held-out text, never trained on). The relative change is
# `after / before - 1`: negative means the model got better at that text.

# %%
from helpers.lab.forgetting import relative_change

in_before, in_after = after["perplexity_before"], after["perplexity_after"]
in_change, ood_change = relative_change(in_before, in_after), relative_change(ood_before, ood_after)
print(f"{'text':<34}{'before':>8}{'after':>8}{'change':>9}")
domain = "held-out own text" if profile.text_dir else "held-out TinyStories"
print(f"{'in-domain: ' + domain:<34}{in_before:>8.2f}{in_after:>8.2f}{in_change:>+9.1%}")
print(f"{'out-of-domain: Python help topics':<34}{ood_before:>8.2f}{ood_after:>8.2f}{ood_change:>+9.1%}")
worse = [name for name, b, a in zip(ood_names, ood_before_rows, ood_after_rows, strict=True)
         if a["perplexity"] > b["perplexity"]]
print(f"{len(worse)} of {len(ood_names)} help topics got worse" + (f": {', '.join(worse)}" if worse else ""))
if not profile.text_dir:  # with your own (possibly tiny) folder these are reported, not asserted
    assert in_after < in_before, "CPT should have lowered the in-domain perplexity (notebook 06)"
    assert in_change < ood_change, "training should help its own domain more than unrelated text"

# %%
import matplotlib.pyplot as plt

from helpers.lab.forgetting import plot_before_after

plot_before_after({f"in-domain\n({domain})": (in_before, in_after),
                   "out-of-domain\n(Python help topics)": (ood_before, ood_after)},
                  title=f"Perplexity before and after CPT ({profile.name})")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Reading the result, and what to do about forgetting
#
# The two numbers answer different questions. The in-domain drop says how much the model learned
# about the new domain; the out-of-domain change says what that cost elsewhere. What matters is the
# trade: a large in-domain gain for a small out-of-domain loss is usually a good deal, and the reverse
# is a sign that training went too far.
#
# How large the cost is depends on how hard the model was pushed and how far the new domain is from
# what it knew. The offline default trains for only 12 small steps, and there the out-of-domain
# change is small next to the in-domain gain; it may even fall a little. Forgetting is not automatic.
# One plausible reason for an improvement: SmolLM2-135M-*Instruct* has been tuned to answer chat
# turns, and a few steps of plain-text continuation (on any plain English) partly restore its skill at
# continuing plain text, which also helps on the help topics, while the story-specific habits have
# not yet had time to crowd anything out. The cell below prints which way this run went. Longer runs,
# higher learning rates and narrower domains push the out-of-domain number up; the walkthrough's full
# epoch on Mistral-7B is the place to watch for it.
#
# The usual remedies, roughly from most to least effective:
#
# * **Mix general text into the training data** ("replay"): a share of text like the original
#   pre-training data reminds the model of everything else while it learns the new domain.
# * **Train less hard**: a lower learning rate (and a lower *embedding* learning rate: the embedding
#   matrices are shared by every domain), a lower LoRA rank, or fewer steps. LoRA itself already
#   limits forgetting compared with full fine-tuning, because the update has low rank.
# * **Measure it during training**: evaluate an out-of-domain set like this one at checkpoints and
#   stop, or choose the checkpoint, where the trade is best.

# %%
if ood_change > 0.02:
    verdict = f"rose by {ood_change:.1%}: measurable forgetting"
elif ood_change < -0.02:
    verdict = f"fell by {-ood_change:.1%}: no forgetting at this training length"
else:
    verdict = f"barely moved ({ood_change:+.1%})"
print(f"In-domain perplexity fell by {-in_change:.1%}; out-of-domain perplexity {verdict}.")

# %% [markdown]
# ## Results
#
# The numbers of this notebook go to `outputs/07_forgetting.json`.

# %%
from helpers.artifacts import save_outputs
from helpers.support.paths import artifact_path, relative

save_outputs(profile, {"forgetting": {
    "profile": profile.name,
    "python": platform.python_version(),
    "in_domain_perplexity": [in_before, in_after],
    "out_of_domain_perplexity": [ood_before, ood_after],
    "out_of_domain_topics": ood_names,
    "out_of_domain_per_topic": [[name, b["perplexity"], a["perplexity"]]
                                for name, b, a in zip(ood_names, ood_before_rows, ood_after_rows, strict=True)],
    "topics_worse": worse,
}})
print(f"saved {relative(artifact_path('forgetting'))}: in-domain {in_before:.2f} → {in_after:.2f}, "
      f"out-of-domain {ood_before:.2f} → {ood_after:.2f}")
