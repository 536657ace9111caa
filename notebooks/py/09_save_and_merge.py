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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/09_save_and_merge.ipynb)
#
# # 09 · Save and merge: from an adapter to a model anyone can load
#
# Notebook 05 saved the result as a **PEFT adapter**: only what was trained, plus a config that names
# the base model. That is compact to share and lets one base serve several adapters, but using it
# needs the base model *and* the `peft` library. For serving, for export (notebook 10 turns the
# merged model into GGUF), or for tools that know nothing of PEFT, one **merges**: every LoRA pair is
# folded into the weight it adapts (`W ← W + (α/√r) · B A` with rsLoRA), the trained embedding copies
# replace the originals, and what remains is an ordinary model.
#
# **What it measures:** that the adapter, reloaded from disk, reproduces notebook 06's greedy text;
# that the merged model gives the same text; that the merged folder loads and generates in a process
# where `peft` cannot even be imported; and what the adapter file holds, with the adapter size of the
# walkthrough's Mistral-7B computed from its shapes. It trains nothing; on the CPU default it takes
# well under a minute.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("09_save_and_merge")

# %% [markdown]
# ## Inputs: the adapter, and notebook 06's text
#
# The adapter folder of notebook 05, loaded as notebook 06 taught (`helpers.modeling.load_trained_model`),
# and the greedy text notebook 06 generated with it.

# %%
from helpers.artifacts import require
from helpers.modeling import load_trained_model
from helpers.support.files import read_json

adapter_dir = require("adapter")
after = read_json(require("after"))
model, tokenizer = load_trained_model(profile, adapter_dir)
base_config, lora_r = model.get_base_model().config, model.peft_config["default"].r  # kept for the size check
print(type(model).__name__, "with adapter", list(model.peft_config), f"(r={lora_r})")

# %% [markdown]
# ## The adapter reloads and reproduces its text
#
# This kernel is a fresh process: it loaded the adapter from disk, exactly as anyone receiving the
# folder would. Greedy decoding has no randomness, so the same prompt must give notebook 06's text,
# token for token. Notebook 06 let the story run on until EOS (or its longer limit), so this shorter
# generation must be the beginning of that text.

# %%
import textwrap

from helpers.generation import greedy_text

adapter_text = greedy_text(model, tokenizer, profile.prompt, profile.max_new_tokens)
print(textwrap.fill(profile.prompt + adapter_text, width=100))
same = after["text_after"].startswith(adapter_text)
print(f"\nthe beginning of notebook 06's text ({len(adapter_text)} of {len(after['text_after'])} characters): {same}")
assert same, "the reloaded adapter should reproduce notebook 06's greedy text"

# %% [markdown]
# ## Merging, in which precision
#
# The sum `W + scale · B A` has to be computed and stored in a floating-point format. In bf16, with its
# 8 significant bits, an update smaller than about 0.4% of a weight is rounded away, so merges are best
# computed in fp32 and then stored in the model's dtype (which is what unsloth's merge does). On the
# CPU the model *is* fp32, so merging is exact up to fp32 rounding and we save fp32:
# `helpers.lab.merging.merge_adapter` (PEFT's `merge_and_unload`, refusing a quantized base) and
# `save_merged` (written atomically to `outputs/09_merged`).
#
# A 4-bit base cannot be merged into: the sum is not an NF4 value, and re-quantizing it would add new
# rounding error. The walkthrough itself neither saves nor merges; on the GPU branch the cell uses
# unsloth's API for it, `model.save_pretrained_merged(folder, tokenizer, save_method="merged_16bit")`,
# which in the pinned unsloth fetches the base model's original 16-bit weights and adds the LoRA products to them. One
# subtlety: the adapter was trained on top of the NF4-*rounded* weights, so the 16-bit merged model is
# slightly different from the one that was trained, and its greedy text may part from the 4-bit run's
# after a while. The GPU branch therefore reports that comparison instead of asserting it.
#
# Offline (`HF_HUB_OFFLINE=1`), unsloth's merge first asks the hub about the base model and stops,
# even when its 16-bit weights sit in the local cache. `helpers.lab.merging.offline_merge_base` points
# the merge at that cached folder for the duration of the call (and says how to get the weights when
# they are not there); with a network it changes nothing.

# %%
from helpers.artifacts import save_outputs
from helpers.lab.merging import merge_adapter, offline_merge_base, save_merged
from helpers.modeling import resolve_model_source
from helpers.support.paths import artifact_path, relative

if profile.uses_unsloth:
    with offline_merge_base(model, resolve_model_source(profile)):
        merged_dir = save_outputs(profile, {"merged": lambda folder: model.save_pretrained_merged(
            str(folder), tokenizer, save_method="merged_16bit")})["merged"]
    merged_text = None  # no merged model in this kernel: the check below loads the folder
else:
    merged = merge_adapter(model)
    merged_text = greedy_text(merged, tokenizer, profile.prompt, profile.max_new_tokens)
    print(f"{type(merged).__name__} ({merged.dtype}); any PEFT layers left: "
          f"{any('lora_' in n or 'modules_to_save' in n for n, _ in merged.named_parameters())}")
    print(f"merged model, same greedy text as the adapter: {merged_text == adapter_text}")
    assert merged_text == adapter_text
    merged_dir = save_outputs(profile, {"merged": lambda folder: save_merged(merged, tokenizer, folder)})["merged"]
print(f"merged model saved to {relative(merged_dir)}")

# %% [markdown]
# ## The merged folder loads with transformers alone
#
# The proof that the folder needs nothing else is a fresh Python process in which `peft` is made
# unimportable *before* transformers is imported (`sys.modules["peft"] = None`): it loads the folder
# with `AutoModelForCausalLM.from_pretrained` in the dtype it was saved in, and generates greedily from
# the same prompt.

# %%
from helpers.generation import generate_without_peft

fresh = generate_without_peft(merged_dir, profile.prompt, profile.max_new_tokens,
                              device="cuda:0" if profile.device == "cuda" else "cpu")
print(f"{relative(merged_dir)}: loaded as {fresh['class']} ({fresh['dtype']}) in a process without peft "
      f"(peft imported there: {fresh['peft_imported']})")
assert not fresh["peft_imported"] and fresh["text"].strip()
if merged_text is not None:
    print(f"same greedy text as the merged model in this kernel: {fresh['text'] == merged_text}")
    assert fresh["text"] == merged_text == adapter_text
else:
    same = fresh["text"] == adapter_text
    print(f"same greedy text as the 4-bit adapter run: {same}"
          + ("" if same else " (expected to differ a little: the adapter was trained on NF4-rounded weights)"))
    print(textwrap.fill(profile.prompt + fresh["text"], width=100))

# %% [markdown]
# ## Why a CPT adapter is nearly as large as the model
#
# An SFT adapter of LoRA matrices alone is a few megabytes. A CPT adapter also carries **full copies**
# of `embed_tokens` and `lm_head` (notebook 04), each `vocabulary × hidden` numbers. PEFT stores both
# even when they are tied (one matrix saved under two names), and for a small model with a large
# vocabulary those matrices are a big share of all weights: SmolLM2-135M's 49,152 × 576 embedding is a
# fifth of its parameters. The cell reads what this run's adapter file holds from its header.

# %%
from helpers.lab.merging import adapter_composition
from helpers.support.files import folder_size_bytes

composition = adapter_composition(adapter_dir)
adapter_bytes = folder_size_bytes(adapter_dir, "*.safetensors")
model_bytes = folder_size_bytes(merged_dir, "*.safetensors")
for kind, entry in composition.items():
    print(f"  {kind:<36} {entry['tensors']:4d} tensors {entry['parameters'] / 1e6:8.2f} M parameters "
          f"{entry['bytes'] / 1e6:8.1f} MB ({entry['bytes'] / entry['parameters']:.0f} bytes each)")
print(f"adapter {adapter_bytes / 1e6:.0f} MB vs merged model {model_bytes / 1e6:.0f} MB "
      f"({adapter_bytes / model_bytes:.0%} of it)")
assert adapter_bytes > 0.1 * model_bytes, "the full embedding copies should make the adapter a sizeable share"

# %% [markdown]
# ### And for the walkthrough's Mistral-7B?
#
# The counts follow from the shapes: a LoRA pair on an `in × out` projection holds `r · (in + out)`
# numbers in every layer, and each embedding copy `vocabulary × hidden`.
# `helpers.lab.merging.adapter_parameter_count` does that arithmetic; the cell first checks it against
# this run's adapter file, then applies it to Mistral-7B v0.3 (hidden 4,096, MLP 14,336, 32 layers,
# 32 query and 8 key/value heads of 128, vocabulary 32,768) at the walkthrough's r = 128.
#
# How many bytes that is depends on the dtype each part is kept in. PEFT keeps LoRA matrices in
# **fp32** even on a bf16 or 4-bit base (its `autocast_adapter_dtype=True` default), and saves them so;
# unsloth keeps the trained embedding copies in **bf16** (question (f) of notebook 08, and
# `runs/LOG.md`). The merged bf16 model, for comparison, has about 7.25 B parameters: 14.5 GB.

# %%
from transformers import MistralConfig

from helpers.lab.merging import adapter_parameter_count
from helpers.profiles import GPU_MISTRAL7B

LORA, FULL = "LoRA A/B", "full copies (embed_tokens, lm_head)"
this_run = adapter_parameter_count(base_config, lora_r, profile.target_modules)
copies = composition[FULL]["parameters"] / (base_config.vocab_size * base_config.hidden_size)
print(f"this run: {this_run[LORA] / 1e6:.2f} M LoRA numbers computed, {composition[LORA]['parameters'] / 1e6:.2f} M "
      f"in the file; {copies:g} full vocabulary × hidden copies saved (tied: {base_config.tie_word_embeddings})")
assert this_run[LORA] == composition[LORA]["parameters"], "the arithmetic should match the adapter file"
if not profile.uses_unsloth:  # PEFT's own save: both copies, LoRA in fp32
    assert this_run[FULL] == composition[FULL]["parameters"] and copies == 2
    assert composition[LORA]["bytes"] == 4 * composition[LORA]["parameters"]
mistral = MistralConfig(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8)
counts = adapter_parameter_count(mistral, GPU_MISTRAL7B.lora_r, GPU_MISTRAL7B.target_modules)
lora_gb = {"bf16": counts[LORA] * 2 / 1e9, "fp32": counts[LORA] * 4 / 1e9}
full_gb = {"bf16": counts[FULL] * 2 / 1e9, "fp32": counts[FULL] * 4 / 1e9}
print(f"Mistral-7B v0.3, r={GPU_MISTRAL7B.lora_r}:")
print(f"  LoRA matrices    {counts[LORA] / 1e6:7.1f} M numbers: {lora_gb['bf16']:.2f} GB in bf16, "
      f"{lora_gb['fp32']:.2f} GB in fp32 (what PEFT keeps)")
print(f"  embedding copies {counts[FULL] / 1e6:7.1f} M numbers: {full_gb['bf16']:.2f} GB in bf16 (unsloth), "
      f"{full_gb['fp32']:.2f} GB in fp32")
walkthrough_adapter_gb = lora_gb["fp32"] + full_gb["bf16"]
print(f"  the adapter as unsloth saves it: about {walkthrough_adapter_gb:.2f} GB "
      f"(all fp32: {lora_gb['fp32'] + full_gb['fp32']:.2f} GB), against 14.5 GB for the merged bf16 model")
assert lora_gb["fp32"] > 1.0 and walkthrough_adapter_gb > 1.5, "a rank-128 CPT adapter of a 7B model is not under a GB"

# %% [markdown]
# So the walkthrough's adapter is nearly 2 GB: far smaller than the 14.5 GB model, but hundreds of
# times an SFT adapter, and most of it is LoRA matrices kept in fp32, not the embeddings.
#
# ## Results
#
# The numbers of this notebook go to `outputs/09_save_and_merge.json`; the merged model stays in
# `outputs/09_merged` for notebook 10.

# %%
save_outputs(profile, {"save_and_merge": {
    "profile": profile.name,
    "adapter_text_matches_notebook_06": adapter_text == after["text_after"],
    "merged_text_matches_adapter": fresh["text"] == adapter_text,
    "merged_dtype": fresh["dtype"],
    "adapter_mb": adapter_bytes / 1e6,
    "merged_model_mb": model_bytes / 1e6,
    "adapter_composition": composition,
    "mistral_7b_r128_adapter": {"lora_parameters": counts[LORA], "embedding_copy_parameters": counts[FULL],
                                "gb_lora_fp32_embeddings_bf16": walkthrough_adapter_gb},
}})
print(f"saved {relative(artifact_path('save_and_merge'))}: adapter {adapter_bytes / 1e6:.0f} MB vs merged "
      f"model {model_bytes / 1e6:.0f} MB; Mistral-7B r=128 adapter about {walkthrough_adapter_gb:.2f} GB")
