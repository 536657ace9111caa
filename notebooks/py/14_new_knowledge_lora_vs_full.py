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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/14_new_knowledge_lora_vs_full.ipynb)
#
# # 14 · New knowledge: LoRA or full fine-tuning?
#
# A question the walkthrough raises and leaves open: is LoRA too limiting to teach a model *new
# knowledge*, rather than a new style? A fair test needs facts the model cannot already know. So this
# notebook invents some: a small set of made-up facts about places and people that do not exist,
# written as raw text, the way CPT sees a domain. It trains the small model on that text twice,
# once with the series' LoRA recipe (adapters plus full `embed_tokens` / `lm_head`) and once with
# full fine-tuning (every weight trains), then asks both to complete sentences that state the facts
# *in other words than the training text*, so that a hit is recall, not copying.
#
# Both arms use SmolLM2-135M (on a GPU profile too: full fine-tuning of a 4-bit 7B model is not
# possible, and the comparison needs one model), through `helpers.lab.short_runs.short_run`.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("14_new_knowledge_lora_vs_full")

# %% [markdown]
# ## The made-up facts, as raw text
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
# ## Tokenize: one document per row
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
# ## Before training
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
# ## Train: LoRA, then full fine-tuning
#
# Both arms see the same rows for the same number of steps (40 steps of 4 rows, 10 passes over the
# 16 documents: new facts need repetition). Each gets a learning rate usual for its method: 1e-3
# for the LoRA adapters (their embeddings at 1e-4, the recipe's ratio) and 5e-5 for full
# fine-tuning, where every weight moves and larger rates quickly damage the model. Both use the
# recipe's cosine schedule.

# %%
from helpers.lab.short_runs import short_run, sweep_profile

STEPS = 40
lora_profile = sweep_profile(small, learning_rate=1e-3, max_steps=STEPS, batch_size=4)
full_profile = sweep_profile(small, learning_rate=5e-5, max_steps=STEPS, batch_size=4)
arms = {}
lora_run, lora_model, _ = short_run(lora_profile, train_rows, label="LoRA r=16 + embeddings",
                                    model_and_tokenizer=(base_model, tokenizer))
arms["LoRA"] = (lora_run, recall(lora_model, tokenizer, FACTS))
del lora_model, base_model
full_run, full_model, _ = short_run(full_profile, train_rows, label="full fine-tuning", full_finetune=True)
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
# ## The answer
#
# The cell below states the measured result. Read it as a comparison of two *recipes*, not of two
# methods: the arms differ in learning rate (1e-3 against 5e-5) as much as in what they train, and
# a learning rate this far apart can decide the outcome by itself. A fair verdict on LoRA against
# full fine-tuning would give each method its best learning rate from a sweep at the same number of
# steps (notebook 13 shows how such a sweep goes), which this CPU run does not afford; so the cell
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
