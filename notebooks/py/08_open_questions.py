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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/08_open_questions.ipynb)
#
# # 08 · The walkthrough's open questions, each answered by a measurement
#
# The walkthrough raises questions along the way and leaves them open, or answers them with a
# sentence. This notebook takes eight of them and answers each with a cell that measures, ending in
# an `assert` or a printed number:
#
# | | question | runs on |
# |---|---|---|
# | (a) | does unsloth patch transformers, and what does it replace? | GPU (CPU prints the unpatched baseline) |
# | (b) | is 4-bit (NF4) quantization deterministic? | GPU |
# | (c) | what does a `max_seq_length` beyond the trained context do to the config? | everywhere |
# | (d) | why does PyTorch report less GPU memory than `nvidia-smi`? | GPU |
# | (e) | does the embedding learning rate also apply to `lm_head`? | everywhere |
# | (f) | what does "Training embed_tokens in mixed precision" mean? | everywhere |
# | (g) | how much memory does LoRA save as the sequence grows? | GPU |
# | (h) | what does the streamer's first chunk hold? | everywhere |
#
# Cells that need a GPU say so and are skipped on the CPU, with the reason printed; the numbers they
# gave on an H200 are quoted from `runs/LOG.md` in the text before them. The notebook reuses
# notebook 05's adapter and trains nothing but a tiny random model for (e); on the CPU default it
# takes well under a minute.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("08_open_questions")

# %% [markdown]
# ## Inputs: the trained model, and notebook 03's first chunk
#
# Questions (c), (e), (f) and (h) look at the model this series trained: base + notebook 05's
# adapter, loaded as notebook 06 taught (`helpers.modeling.load_trained_model`). Question (h) compares
# with the first streamed chunk that notebook 03 recorded. Each answer is also collected in `results`,
# saved at the end.

# %%
import torch

from helpers.artifacts import require
from helpers.modeling import load_trained_model
from helpers.support.files import read_json

before = read_json(require("before"))
model, tokenizer = load_trained_model(profile, require("adapter"))
results = {"profile": profile.name}
print(type(model).__name__, "with adapter", list(model.peft_config))

# %% [markdown]
# ## (a) Does unsloth patch transformers?
#
# unsloth's speed comes from replacing parts of other libraries while your program runs: attention
# and normalisation forwards, the causal-LM forward (to fuse the cross-entropy), TRL's trainer
# classes, gradient checkpointing. That is why it insists on being imported before transformers.
# Instead of taking that on trust we can look: `helpers.lab.patch_probe` records what a dotted name such as
# `transformers.Trainer.train` points at (the object's `id`, `__module__`, `__qualname__` and the file
# and line that define its code) and compares two records.
#
# Import order is the whole point, so the measurement runs in fresh subprocesses (`python -c`), not
# in this kernel (which on the GPU branch imported unsloth in its first cell): one process imports
# the plain libraries without unsloth; the other imports unsloth first, records, loads the model with
# `FastLanguageModel.from_pretrained`, and records again. Object ids mean nothing across processes,
# so between processes the module, qualname and source location are compared; within the unsloth
# process the ids are compared too.
#
# unsloth cannot even be imported without an NVIDIA GPU, so on the CPU the probe is skipped. What the
# CPU *can* show is the unpatched baseline the GPU cell compares against (this kernel never imported
# unsloth), and whether unsloth's source is installed for reading.
#
# Measured on an H200 with unsloth 2026.10.9 (`runs/LOG.md`, "Open questions on the GPU"):
# `import unsloth` alone replaced `trl.SFTTrainer` (by `UnslothSFTTrainer`) and wrapped
# `transformers.Trainer.train`; `FastLanguageModel.from_pretrained` then replaced
# `Trainer.training_step`, `LlamaAttention.forward` (by `LlamaAttention_fast_forward`) and
# `LlamaForCausalLM.forward` (by unsloth's fused causal-LM forward). So yes: unsloth patches
# transformers and TRL in place, partly at import and partly when a model is loaded.

# %%
import importlib.metadata
import importlib.util

from helpers.lab.patch_probe import changes, fingerprint_all


def show_changes(title, changed):
    print(f"{title}: {len(changed)} of the probed names changed")
    for name, change in changed.items():
        old, new = change["before"], change["after"]
        print(f"  {name}\n      {old.get('module')}.{old.get('qualname')} ({old.get('source')})"
              f"\n   -> {new.get('module')}.{new.get('qualname')} ({new.get('source')})")


if profile.uses_unsloth:
    from helpers.lab.patch_probe import run_probe
    from helpers.modeling import resolve_model_source

    plain = run_probe("plain")["without unsloth"]
    probed = run_probe("unsloth", resolve_model_source(profile), str(profile.max_seq_length),
                       "1" if profile.load_in_4bit else "0")
    show_changes("import unsloth (vs a process without it)", changes(plain, probed["after import unsloth"]))
    show_changes("then from_pretrained (same process, ids compared too)",
                 changes(probed["after import unsloth"], probed["after from_pretrained"],
                         fields=("id", "module", "qualname", "source")))
    patched = changes(plain, probed["after from_pretrained"])
    assert patched, "unsloth replaced none of the probed functions"
    results["patched_by_unsloth"] = sorted(patched)
else:
    print("skipped: unsloth cannot be imported without an NVIDIA GPU, so the before/after probe runs on "
          "the GPU profiles only.")
    spec = importlib.util.find_spec("unsloth")  # finds the package without importing it
    if spec is None:
        print("unsloth is not installed in this environment (the CPU path never needs it), so its source "
              "cannot be read here either.")
    else:
        print(f"unsloth {importlib.metadata.version('unsloth')} is installed but not imported: its source "
              "(e.g. unsloth/models/llama.py) can be read here, though not run.")
    baseline = fingerprint_all()
    print("\nthe unpatched baseline (this kernel never imported unsloth):")
    for name, fp in baseline.items():
        print(f"  {name:<72} {fp['source']}")
    assert all("unsloth" not in str(fp.get("module")) for fp in baseline.values())
    results["patched_by_unsloth"] = None  # not measurable here

# %% [markdown]
# ## (b) Is 4-bit quantization deterministic?
#
# NF4 quantization (notebook 01) splits a weight matrix into blocks of 64, stores one scale per block
# (its largest absolute value) and replaces each weight by the nearest of 16 fixed levels. Nothing in
# that is random, so quantizing the same weights twice should give identical bytes, and loading the
# same checkpoint in 4-bit twice should give the same model. The cell checks it with bitsandbytes'
# own `quantize_4bit` on a seeded bf16 matrix: the packed codes, the block scales, and the dequantized
# result. bitsandbytes' 4-bit kernels need CUDA, so on the CPU the cell is skipped.
#
# Measured on an H200 (`runs/LOG.md`): 16.8 M bf16 weights quantized twice gave identical packed
# codes (8.4 MB of uint8), identical block scales and identical dequantized weights; the mean absolute
# rounding error was 0.073 for weights of standard deviation 1. NF4 quantization is deterministic.

# %%
if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None:
    import bitsandbytes.functional as bnbf

    generator = torch.Generator(device="cuda").manual_seed(profile.seed)
    weight = torch.randn(4096, 4096, generator=generator, device="cuda", dtype=torch.bfloat16)
    codes_1, state_1 = bnbf.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
    codes_2, state_2 = bnbf.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
    same_codes = torch.equal(codes_1, codes_2)
    same_scales = torch.equal(state_1.absmax, state_2.absmax)
    restored_1, restored_2 = bnbf.dequantize_4bit(codes_1, state_1), bnbf.dequantize_4bit(codes_2, state_2)
    error = (restored_1.float() - weight.float()).abs().mean().item()
    print(f"{weight.numel():,} bf16 weights -> {codes_1.numel():,} bytes of packed codes, dtype {codes_1.dtype}")
    print(f"identical codes: {same_codes}; identical block scales: {same_scales}; "
          f"identical dequantized weights: {torch.equal(restored_1, restored_2)}")
    print(f"mean absolute rounding error of NF4 here: {error:.4f} (weights have standard deviation 1)")
    assert same_codes and same_scales and torch.equal(restored_1, restored_2)
    results["nf4_deterministic"] = True
    results["nf4_mean_abs_error"] = error
else:
    print("skipped: bitsandbytes' 4-bit quantization needs a CUDA GPU (and bitsandbytes installed); "
          "this machine has neither, so the CPU profile loads fp32 weights instead.")
    results["nf4_deterministic"] = None

# %% [markdown]
# ## (c) RoPE: what a `max_seq_length` beyond the trained context does to the config
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

from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

config = copy.deepcopy(model.config)
trained = config.max_position_embeddings
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
head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
theta = rope["rope_theta"]
plain_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))  # as in notebook 01
linear_freq, _ = ROPE_INIT_FUNCTIONS["linear"](linear, "cpu")
dynamic_short, _ = ROPE_INIT_FUNCTIONS["dynamic"](dynamic, "cpu", seq_len=trained)
dynamic_long, _ = ROPE_INIT_FUNCTIONS["dynamic"](dynamic, "cpu", seq_len=wanted)
print(f"slowest inverse frequency: plain {plain_freq[-1]:.3e}, linear {linear_freq[-1]:.3e}, "
      f"dynamic at {trained} tokens {dynamic_short[-1]:.3e}, at {wanted} tokens {dynamic_long[-1]:.3e}")
assert torch.allclose(linear_freq * wanted / trained, plain_freq)  # every frequency divided by the factor
assert torch.allclose(dynamic_short, plain_freq) and dynamic_long[-1] < plain_freq[-1]
results["rope_slowest_inverse_frequency"] = {"plain": plain_freq[-1].item(), "linear": linear_freq[-1].item(),
                                             "dynamic_at_trained": dynamic_short[-1].item(),
                                             "dynamic_at_wanted": dynamic_long[-1].item()}

# %% [markdown]
# Linear scaling divides every frequency by the same factor, so *all* positions are squeezed,
# including the short distances the model relies on most; that is why a model usually needs some
# training at the longer length after linear scaling. Dynamic scaling leaves short contexts exactly as
# trained (its frequencies at the trained length are the original ones) and stretches mainly the slow,
# long-range channels once a sequence gets longer. For this walkthrough none of this applies:
# Mistral-7B v0.3 was trained for 32,768 positions and the recipe asks for 2,048.
#
# ## (d) Why does PyTorch report less GPU memory than `nvidia-smi`?
#
# Notebook 01 answered this with a cell that reads every probe at the same moment: PyTorch's
# *allocated* memory counts live tensors, its *reserved* memory adds the blocks its caching allocator
# keeps for reuse, and the driver (NVML, `nvidia-smi`) additionally counts the CUDA context: the loaded
# kernels of PyTorch, cuBLAS and friends, typically several hundred MiB. The same reading for this
# notebook's process, on the GPU only:

# %%
from helpers.memory import snapshot

reading = snapshot()
if reading["torch"] and (reading["nvml"] or reading["nvidia_smi"]):
    driver = (reading["nvml"] or reading["nvidia_smi"])["used_gib"]
    t = reading["torch"]
    print(f"torch allocated {t['allocated_gib']:.2f} GiB <= reserved {t['reserved_gib']:.2f} GiB "
          f"<= driver {driver:.2f} GiB (context and other processes: {driver - t['reserved_gib']:.2f} GiB)")
    assert t["allocated_gib"] <= t["reserved_gib"] <= driver
else:
    print("skipped: no CUDA device, so there is no GPU memory to compare (see notebook 01's GPU cell); "
          f"this process's host memory (RSS) is {reading['rss_gib']:.2f} GiB.")

# %% [markdown]
# ## (e) Does the embedding learning rate also apply to `lm_head`?
#
# Notebook 05 printed the optimizer's parameter groups for this profile. SmolLM2 **ties** its input
# and output embeddings, so there `lm_head` *is* `embed_tokens`: one matrix, one trainable copy, and
# the question cannot be told apart from "does it apply to embed_tokens". Mistral-7B does not tie
# them. To answer for an untied model without downloading one, we build a tiny random Llama with
# `tie_word_embeddings=False`, add LoRA with the helpers' own configuration (this profile's targets,
# rank lowered to suit the tiny size), build the trainer with `helpers.training.build_trainer`
# (`EmbeddingLRTrainer`, the plain twin of `UnslothTrainer`) and print the groups its optimizer really
# has. The tiny model runs on the CPU on every profile; it only has to have the right *shape*.

# %%
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from helpers.support.paths import outputs_dir
from helpers.training import EMBEDDING_GROUP, add_lora, build_trainer, describe_param_groups

tiny_profile = profile.replace(backend="transformers", device="cpu", load_in_4bit=False, dtype="float32",
                               use_gradient_checkpointing=False, optim="adamw_torch", lora_r=8)
torch.manual_seed(profile.seed)
tiny = LlamaForCausalLM(LlamaConfig(
    vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
tiny = add_lora(tiny, tiny_profile)
tiny_trainer = build_trainer(tiny_profile, tiny, tokenizer, Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 4}),
                             output_dir=str(outputs_dir() / "08_tiny_trainer"))
tiny_trainer.create_optimizer()
tiny_groups = describe_param_groups(tiny_trainer.optimizer, tiny)
for group in tiny_groups:
    print(f"{group['group']:<36} lr={group['lr']:.1e}  tensors={group['tensors']:3d}  modules: "
          f"{', '.join(group['modules'][:4])}{' ...' if len(group['modules']) > 4 else ''}")
embedding_group = next(g for g in tiny_groups if g["group"] == EMBEDDING_GROUP)
assert {"embed_tokens", "lm_head"} <= set(embedding_group["modules"])
assert embedding_group["lr"] == tiny_profile.embedding_learning_rate
tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
print(f"\nuntied model: lm_head is in the embedding group at lr={embedding_group['lr']:.0e}, beside embed_tokens.")
print(f"this profile's model ties them: lm_head is embed_tokens -> {tied}")
results["untied_embedding_group"] = {"lr": embedding_group["lr"], "modules": embedding_group["modules"]}

# %% [markdown]
# So yes: the separate, smaller learning rate applies to both matrices, which is what `UnslothTrainer`
# does as well (notebook 05 asserted its groups on the GPU branch).
#
# ## (f) What does "Training embed_tokens in mixed precision" mean?
#
# unsloth prints `Unsloth: Training embed_tokens in mixed precision to save VRAM` when the embeddings
# are trained. Reading the pinned source (`_offload_frozen_module_for_training` in
# `unsloth/models/llama.py`) tells what happens: PEFT keeps two copies of each embedding module, the
# frozen original and the trainable copy (`modules_to_save`). unsloth keeps the trainable copy on the GPU
# in the **model's dtype** (bf16, or fp32 where the model is fp16, because fp16 weights cannot be
# trained with a gradient scaler), and moves the frozen original to **CPU memory**, since it is never
# used again while the copy exists. "Mixed precision" therefore means: the embedding copies are
# stored and updated in 16 bits (bf16), not in fp32 like the LoRA matrices, next to a 4-bit frozen
# body; that halves their weight memory. The price, measured in notebook 05: an update of the
# embedding learning rate (5e-6) is smaller than half a bf16 step for almost every weight, so it
# rounds away (1.1% of the trained rows' entries changed over the epoch on the real SmolLM2, 100%
# with fp32 copies). This project's GPU profile therefore casts the copies back to fp32 after
# `get_peft_model`; `CPT_EMBEDDING_DTYPE=bfloat16` keeps unsloth's. The cell prints what this run holds.

# %%
wrappers = [(name, m) for name, m in model.named_modules()
            if hasattr(m, "original_module") and hasattr(m, "modules_to_save")]
for name, wrapper in wrappers:
    original, copy_ = wrapper.original_module.weight, wrapper.modules_to_save["default"].weight
    print(f"{name.split('.')[-1]:<13} frozen original: {original.dtype} on {original.device}; "
          f"trained copy: {copy_.dtype} on {copy_.device}")
frozen_projection = next(p for n, p in model.named_parameters() if "q_proj.base_layer.weight" in n)
lora_matrix = next(p for n, p in model.named_parameters() if "lora_A" in n)
print(f"frozen q_proj weight: {frozen_projection.dtype}; LoRA A matrix: {lora_matrix.dtype}")
assert wrappers and all(w.modules_to_save["default"].weight.dtype.is_floating_point for _, w in wrappers)
results["embedding_copy_dtypes"] = {name.split(".")[-1]: str(w.modules_to_save["default"].weight.dtype)
                                    for name, w in wrappers}

# %% [markdown]
# On the CPU everything is fp32: there is no 4-bit and nothing to save by mixing precisions. On the
# GPU branch the frozen projections show up as packed `uint8` (4-bit), the LoRA matrices in fp32, and
# the embedding copies in fp32 with the GPU profile's default (bf16 with unsloth's own).
#
# ## (g) How much memory does LoRA save as the sequence grows?
#
# A training step holds three things: the weights; for every *trainable* parameter a gradient and
# AdamW's two statistics; and the activations kept for the backward pass, which grow with batch ×
# sequence length no matter what is trained. LoRA removes almost all of the second item and none of
# the third, so its relative saving is largest for short sequences and shrinks as they grow
# (gradient checkpointing, notebook 04, is the tool for activations). The cell measures one step of a
# small random Llama (about 150 M parameters, bf16) at three lengths: full fine-tuning, this profile's
# CPT LoRA (embeddings trained in full), and LoRA on the projections only. PyTorch's CUDA allocator
# reports the peak; there is no equivalent on the CPU, so the cell is skipped there. The measurement
# runs in a fresh process without unsloth: this kernel's unsloth has patched the Llama classes for
# its own loader, and the question is about plain LoRA, not about unsloth's kernels.
#
# What it measured on an H200 (`runs/LOG.md`, "Open questions on the GPU"): peak GiB of one step
# at 512 / 2,048 / 8,192 tokens were 1.61 / 1.78 / 6.18 for full fine-tuning and 0.77 / 2.12 / 7.53 for
# LoRA on the projections. LoRA saved 52% at 512 tokens and then used *more* memory than full
# fine-tuning (-19%, -22%). For a model this small the weights, gradients and optimizer state that
# LoRA saves are about 1 GiB, while activations grow with the sequence, and PEFT's LoRA adds
# activations of its own: by default it keeps the adapter weights in fp32, so each of the seven
# adapted projections per layer casts its bf16 input to an fp32 copy for the adapter path, and that
# copy is saved for the backward pass. (That explanation fits the numbers but was not profiled.) For
# a 7B model the saved part is tens of GiB and dominates; for long sequences the activation side is
# what gradient checkpointing (and unsloth's fused LoRA kernels) are for. The asserts below hold what
# was measured: LoRA saves at the shortest length, its relative saving shrinks as sequences grow, and
# training the embeddings in full costs more than LoRA alone.

# %%
if torch.cuda.is_available():
    from helpers.lab.lora_memory import compare_in_fresh_process

    memory_rows = compare_in_fresh_process([512, 2048, 8192], lora_r=16)
    print(f"{'tokens':>7}{'full FT':>10}{'CPT LoRA':>10}{'LoRA':>9}   peak GiB of one step, batch 1")
    for row in memory_rows:
        print(f"{row['tokens']:>7}{row['full']:>10.2f}{row['CPT LoRA']:>10.2f}{row['LoRA']:>9.2f}   "
              f"LoRA saves {1 - row['LoRA'] / row['full']:.0%}")
    assert memory_rows[0]["LoRA"] < memory_rows[0]["full"], "LoRA should save memory on short sequences"
    assert all(row["LoRA"] < row["CPT LoRA"] for row in memory_rows), "full embedding copies cost memory"
    assert 1 - memory_rows[-1]["LoRA"] / memory_rows[-1]["full"] < 1 - memory_rows[0]["LoRA"] / memory_rows[0]["full"]
else:
    memory_rows = None
    print("skipped: peak memory of a training step is read from PyTorch's CUDA allocator, which needs a "
          "GPU; on the CPU there is no comparable per-step peak to read.")
results["lora_vs_full_peak_gib"] = memory_rows

# %% [markdown]
# ## (h) What does the streamer's first chunk hold?
#
# Notebook 03 measured it with `skip_prompt=False`: the first chunk is the prompt minus its last word,
# because the streamer only releases text up to the last space it has seen (the next token might
# still extend the current word). With `skip_prompt=True`, which `helpers.streaming.stream_generate`
# uses, the prompt is never emitted, and the first chunk is what the first generated token releases:
# at most the space in front of a word that may not be finished yet, and with tokenizers that do not
# put the space into the token, nothing at all. A short re-check on this model, through the same
# helper (which prints the eight generated tokens and returns the chunks as the streamer yielded them):

# %%
from helpers.streaming import stream_generate

first_chunks = stream_generate(model, tokenizer, profile.prompt, max_new_tokens=8, echo_prompt=False).chunks
print(f"\nnotebook 03, skip_prompt=False: first chunk {before['first_chunk']!r}")
print(f"here, skip_prompt=True: first chunks {first_chunks[:4]}")
assert first_chunks[0].strip() == "", "with skip_prompt=True the first chunk holds no word yet"
results["first_chunks_skip_prompt"] = first_chunks[:4]

# %% [markdown]
# ## Results
#
# Every answer above, measured or `None` where the cell was skipped on this machine, goes to
# `outputs/08_open_questions.json`.

# %%
from helpers.artifacts import save_outputs
from helpers.support.paths import artifact_path, relative

save_outputs(profile, {"open_questions": results})
print(f"saved {relative(artifact_path('open_questions'))}:")
for key, value in results.items():
    print(f"  {key}: {value}")
