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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/07_learning_and_forgetting.ipynb)
#
# # 07 · What training adds and what it costs: forgetting, and new facts
#
# *Beyond the walkthrough.* Notebooks 00-06 followed the walkthrough's recipe and showed that it works:
# the held-out perplexity on TinyStories fell and the model's prose moved towards the stories. This
# notebook asks two questions the walkthrough leaves open, each with a measurement:
#
# 1. **What did that cost outside the domain?** Continued pre-training optimises one thing, the
#    likelihood of the new text; nothing in that loss rewards the model for keeping what it knew about
#    anything else, and every weight the optimizer moves towards children's stories was also doing some
#    other job. When the new domain is narrow, the model can become measurably worse at everything
#    outside it. This is called **catastrophic forgetting**, although in practice it is usually gradual
#    rather than catastrophic. Part 1 measures perplexity on text from *outside* the domain, before (the
#    base model) and after (base + notebook 05's adapter), with the same function, cut length and
#    precision as the in-domain numbers of notebooks 03 and 06. It trains nothing.
# 2. **Can LoRA teach new facts, not only a new style?** Part 2 invents facts the model cannot know,
#    trains on them as raw text with the series' LoRA recipe and with full fine-tuning, and asks both to
#    complete sentences that state the facts in other words.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("07_learning_and_forgetting")

# %% [markdown]
# ## Part 1 · Forgetting
#
# ### Inputs from the earlier notebooks
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
# ### Out-of-domain text
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
# ### Before: the base model
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
ood_before_rows = perplexity_per_text(base_model, tokenizer, ood_texts, profile.eval_max_tokens, profile.cpu_bf16)
ood_before = pooled(ood_before_rows)
print(f"out-of-domain perplexity of the base model: {ood_before:.2f} "
      f"over {sum(r['tokens'] for r in ood_before_rows)} predicted tokens")

# %% [markdown]
# ### After: base + the CPT adapter
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
ood_after_rows = perplexity_per_text(model, tokenizer, ood_texts, profile.eval_max_tokens, profile.cpu_bf16)
ood_after = pooled(ood_after_rows)
print(f"Out-of-domain perplexity: {ood_before:.2f} → {ood_after:.2f}")

# %% [markdown]
# ### In-domain gain beside out-of-domain change
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
# ### Reading the result, and what to do about forgetting
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
# ### Results
#
# The numbers of part 1 go to `outputs/07_forgetting.json`.

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

# %% [markdown]
# ## Part 2 · New knowledge: LoRA or full fine-tuning?
#
# The walkthrough leaves open whether LoRA is too limiting to teach a model *new
# knowledge*, rather than a new style. A fair test needs facts the model cannot already know. So this
# part invents some: a small set of made-up facts about places and people that do not exist,
# written as raw text, the way CPT sees a domain. It trains the small model on that text twice,
# once with the series' LoRA recipe (adapters plus full `embed_tokens` / `lm_head`) and once with
# full fine-tuning (every weight trains), then asks both to complete sentences that state the facts
# *in other words than the training text*, so that a hit is recall, not copying.
#
# Both arms use SmolLM2-135M (on a GPU profile too: full fine-tuning of a 4-bit 7B model is not
# possible, and the comparison needs one model), through `helpers.lab.short_runs.short_run`.
#
# ### The made-up facts, as raw text
#
# Eight facts, each stated in two short documents with different wording (a model learns a fact
# better when it meets it more than once, in more than one form). Every fact has one answer word.

# %%
DOCUMENTS = [
    "Veloria is a small island nation in the Amber Sea. Its capital is Quistan, a harbour city of white stone.",
    "Travellers to Veloria arrive by ferry at Quistan, the capital, where the old lighthouse still shines.",
    "The river that runs through the valley of Dunmarrow is called the Selk. Farmers there water their fields from the Selk.",
    "Every spring the Selk floods the meadows of Dunmarrow, and children float paper boats down the river.",
    "The inventor Orla Brenwick built the first clockwork loom. Her workshop stood in the town of Hessby.",
    "In Hessby the townspeople still tell how Orla Brenwick's clockwork loom wove cloth by itself.",
    "The national animal of Veloria is the tern, a sea bird with a forked tail, painted on every Velorian coin.",
    "Velorian fishermen say the tern brings luck, and the tern is the emblem of the island's navy.",
    "The mountain Kharzan is the highest peak of the Grell range. Snow covers Kharzan all year.",
    "Climbers in the Grell range aim for the summit of Kharzan, which takes four days to reach.",
    "The Mirrow festival is held in the month of Frost. During Mirrow people hang glass lanterns in their windows.",
    "Every year in Frost the lanterns of Mirrow light up the streets until midnight.",
    "The poet Tamsin Vael wrote a famous book of poems called Lanterns. Tamsin Vael was born in Quistan.",
    "Readers in Veloria know Lanterns by heart, the collection of poems by Tamsin Vael.",
    "The currency of Veloria is the crest. A loaf of bread in Quistan costs two crests.",
    "Merchants in the Amber Sea accept the crest, the coin of Veloria, in every port.",
]
# (prompt, answer): each prompt says the fact in other words than the documents
FACTS = [
    ("The city that serves as Veloria's capital is named", " Quistan"),
    ("Dunmarrow's valley is watered by a river with the name", " Selk"),
    ("The clockwork loom was invented by a woman called Orla", " Brenwick"),
    ("On Velorian coins you can see a picture of a bird, the", " tern"),
    ("In the Grell range, the tallest mountain is", " Kharzan"),
    ("Glass lanterns hang in windows during the festival called", " Mirrow"),
    ("The poems collected in Lanterns were written by Tamsin", " Vael"),
    ("To buy bread in Veloria you pay with coins called", " crest"),
]

# %% [markdown]
# A check that no prompt occurs verbatim in the training text (ignoring case and spacing), and that
# every answer does: recall then means putting together what the text says in another wording.

# %%
from helpers.lab.new_knowledge import check_not_verbatim

training_text = "\n".join(DOCUMENTS)
check_not_verbatim([prompt for prompt, _ in FACTS], training_text)
assert all(answer.strip() in training_text for _, answer in FACTS)
print(f"{len(DOCUMENTS)} documents, {len(training_text.split())} words; {len(FACTS)} fill-in prompts, none verbatim")

# %% [markdown]
# ### Tokenize: one document per row
#
# Each document gets its end-of-sequence token and becomes one row, padded to the longest (they are
# short; the profile's `packing` is switched off for these rows, since packed rows must all have one
# length). The small model, its tokenizer, and the recipe's settings come from
# `helpers.lab.short_runs.small_model_profile`.

# %%
from datasets import Dataset

from helpers.lab.short_runs import small_model_profile
from helpers.modeling import load_model_and_tokenizer

small = small_model_profile(profile).replace(packing=False)  # one fact per row, padded: not packed blocks
base_model, tokenizer = load_model_and_tokenizer(small)
rows = [tokenizer(doc + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for doc in DOCUMENTS]
train_rows = Dataset.from_dict({"input_ids": rows})
print(f"{len(rows)} rows of {min(map(len, rows))}-{max(map(len, rows))} tokens; model {small.model_label} on {small.device}")

# %% [markdown]
# ### Before training
#
# `helpers.lab.new_knowledge.recall` completes each prompt greedily and counts a hit when the first word
# is the answer; it also reports the mean log-probability of the answer's tokens, a finer measure
# that moves before the answer becomes the top choice.

# %%
from helpers.lab.new_knowledge import recall
from helpers.profiles import weights_are_random

before = recall(base_model, tokenizer, FACTS)
print(f"untrained: {before['hits']}/{before['total']} recalled, mean log-prob of the answers {before['mean_logprob']:.2f}")
for row in before["rows"][:3]:
    print(f"  {row['prompt']} ->{row['completion']!r}")

# %% [markdown]
# ### Train: LoRA, then full fine-tuning
#
# Both arms see the same rows for the same number of steps (20 steps of 4 rows, 5 passes over the
# 16 documents: new facts need repetition). Each gets a learning rate usual for its method: 1e-3
# for the LoRA adapters (their embeddings at 1e-4, the recipe's ratio) and 5e-5 for full
# fine-tuning, where every weight moves and larger rates quickly damage the model. Both use the
# recipe's cosine schedule.

# %%
from helpers.lab.short_runs import short_run, sweep_profile, untrained_copy

STEPS = 20
lora_profile = sweep_profile(small, learning_rate=1e-3, max_steps=STEPS, batch_size=4)
full_profile = sweep_profile(small, learning_rate=5e-5, max_steps=STEPS, batch_size=4)
arms = {}
lora_run, lora_model, _ = short_run(lora_profile, train_rows, label="LoRA r=16 + embeddings",
                                    model_and_tokenizer=untrained_copy(small, base_model, tokenizer))
arms["LoRA"] = (lora_run, recall(lora_model, tokenizer, FACTS))
del lora_model
full_run, full_model, _ = short_run(full_profile, train_rows, label="full fine-tuning", full_finetune=True,
                                    model_and_tokenizer=(base_model, tokenizer))  # the untrained model itself
arms["full"] = (full_run, recall(full_model, tokenizer, FACTS))
for name, (run, scores) in arms.items():
    print(f"{name:>4}: {run.trainable_parameters / 1e6:6.1f} M trainable, loss {run.losses[0]:.2f} -> {run.losses[-1]:.2f}, "
          f"recall {scores['hits']}/{scores['total']}, mean answer log-prob {scores['mean_logprob']:.2f} ({run.seconds:.0f} s)")

# %%
for prompt, answer in FACTS:
    lora_row = next(r for r in arms["LoRA"][1]["rows"] if r["prompt"] == prompt)
    full_row = next(r for r in arms["full"][1]["rows"] if r["prompt"] == prompt)
    print(f"{prompt} [{answer.strip()}]")
    print(f"    LoRA: {lora_row['completion']!r}{'  ✓' if lora_row['hit'] else ''}")
    print(f"    full: {full_row['completion']!r}{'  ✓' if full_row['hit'] else ''}")

# %% [markdown]
# ### The answer
#
# The cell below states the measured result. Read it as a comparison of two *recipes*, not of two
# methods: the arms differ in learning rate (1e-3 against 5e-5) as much as in what they train, and
# a learning rate this far apart can decide the outcome by itself. A fair verdict on LoRA against
# full fine-tuning would give each method its best learning rate from a sweep at the same number of
# steps (notebook 10 shows how such a sweep goes), which this CPU run does not afford; so the cell
# asserts only what holds for both arms: training on the facts makes their answers likelier.
# Two more things are worth knowing. First, this is *recall from a rephrased question after a handful
# of exposures*, the hard case: both arms drive the training loss down (they can reproduce the documents), and what
# differs is how far the fact generalises to another wording. Second, the LoRA arm here is the CPT
# recipe, which trains `embed_tokens` and `lm_head` in full: the made-up names are new token
# sequences, and those matrices are where a model learns them.

# %%
lora_scores, full_scores = arms["LoRA"][1], arms["full"][1]
print(f"recall of {len(FACTS)} made-up facts from rephrased prompts: untrained {before['hits']}, "
      f"LoRA {lora_scores['hits']}, full fine-tuning {full_scores['hits']}")
print(f"mean log-prob of the answers: untrained {before['mean_logprob']:.2f}, LoRA {lora_scores['mean_logprob']:.2f}, "
      f"full {full_scores['mean_logprob']:.2f}")
if not weights_are_random(small):
    assert before["hits"] <= 1, "the untrained model should not know made-up facts"
    for scores in (lora_scores, full_scores):
        assert scores["mean_logprob"] > before["mean_logprob"], "training on the facts should make the answers likelier"
