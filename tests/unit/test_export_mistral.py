"""GGUF export of a Llama-style SentencePiece model: a tiny random Mistral with Mistral-7B-v0.3's real
v3 tokenizer (``tokenizer.model`` as the PyPI package mistral-common ships it; the Makefile unpacks it
with ``--no-deps --target .venv/mistral-common-src``, off sys.path, and it is never imported). The round trip is
notebook 08's: same token ids, same greedy text, perplexity within 1e-4 relative, for F32 and F16."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from helpers.lab.export import (
    SPM_BYTE,
    SPM_CONTROL,
    SPM_NORMAL,
    SPM_UNKNOWN,
    SPM_USER_DEFINED,
    export_gguf,
    export_problem,
    find_sentencepiece_model,
    gguf_tensor_types,
    llama_tokenizer_from_sentencepiece,
    load_gguf,
    read_sentencepiece_model,
    tokenizer_family,
)

V3_PACKAGE, V3_VERSION = "mistral-common", "1.13.1"
V3_FILE = "mistral_instruct_tokenizer_240323.model.v3"
STORIES = [
    "Once upon a time, there was a little cat who loved the sun. Every morning she sat by the window.",
    "Tom had a red ball.  He threw it high,   and the dog ran after it!\n\nThen they went home, tired and happy.",
    "Lily's café sold 1234 cakes; «bonjour», said the baker — naïve über straße 東京 😀.",
]
PROMPT = "Once upon a time"


# Where `make setup` puts the package: a folder of its own that is not on sys.path. Installed into the
# environment, mistral-common makes transformers route Mistral tokenizers through it, which then needs
# its dependencies (tiktoken), which --no-deps leaves out.
V3_TARGET = Path(__file__).resolve().parents[2] / ".venv" / "mistral-common-src"


def v3_tokenizer_model() -> Path:
    """The v3 ``tokenizer.model`` of the mistral-common wheel, in ``.venv/mistral-common-src`` (where
    ``make setup`` unpacks it) or an installed distribution; located, never imported."""
    candidate = V3_TARGET / "mistral_common" / "data" / V3_FILE
    if candidate.is_file():
        return candidate
    try:
        dist = importlib.metadata.distribution(V3_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{V3_PACKAGE} is not unpacked (make setup does it: pip install --no-deps --target "
                    f".venv/mistral-common-src {V3_PACKAGE}=={V3_VERSION})")
    for file in dist.files or []:
        if file.name == V3_FILE and Path(dist.locate_file(file)).is_file():
            return Path(dist.locate_file(file))
    pytest.skip(f"{V3_PACKAGE} is installed but {V3_FILE} is missing from it")


@pytest.fixture(scope="module")
def v3(torch_one_thread):
    """``(path of tokenizer.model, the Hugging Face tokenizer built from it)``."""
    path = v3_tokenizer_model()
    return path, llama_tokenizer_from_sentencepiece(path, add_bos_token=True)


@pytest.fixture(scope="module")
def tiny_mistral(v3):
    """A tiny random MistralForCausalLM (2 layers, hidden 64) over the full 32,768-token v3 vocabulary,
    untied like Mistral-7B; weights a little larger than the default init, so that greedy decoding is not
    a near-tie that F16 rounding could flip."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    _, tokenizer = v3
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           rope_theta=1e6, sliding_window=None, tie_word_embeddings=False, initializer_range=0.05,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return MistralForCausalLM(config).eval()


def test_reads_the_v3_sentencepiece_model(v3):
    path, tokenizer = v3
    pieces = read_sentencepiece_model(path)
    assert len(pieces) == 32768
    assert pieces[:3] == [("<unk>", 0.0, SPM_UNKNOWN), ("<s>", 0.0, SPM_CONTROL), ("</s>", 0.0, SPM_CONTROL)]
    assert pieces[3][0] == "[INST]" and pieces[781] == ("<0x0A>", 0.0, SPM_BYTE)
    assert {kind for _, _, kind in pieces} == {SPM_NORMAL, SPM_UNKNOWN, SPM_CONTROL, SPM_USER_DEFINED, SPM_BYTE}
    assert pieces[32767][1] < pieces[1029][1] < 0  # later pieces score lower: llama.cpp merges by score
    assert tokenizer_family(tokenizer) == "spm" and len(tokenizer) == 32768
    # the ids Mistral-7B-v0.3's tokenizer gives (BOS, then "▁Once ▁upon ▁a ▁time")
    assert tokenizer(PROMPT)["input_ids"] == [1, 6481, 4482, 1032, 1495]
    assert tokenizer.decode(tokenizer(STORIES[2])["input_ids"], skip_special_tokens=True) == STORIES[2]


def test_spm_metadata_is_what_llama_cpp_reads(tmp_path, v3, tiny_mistral):
    """tokenizer.ggml.model "llama" with the SentencePiece scores and types, as convert_hf_to_gguf.py writes."""
    from gguf import GGUFReader

    path, tokenizer = v3
    assert export_problem(tiny_mistral, tokenizer) is None
    out = export_gguf(tiny_mistral, tokenizer, tmp_path / "m.gguf", "Q8_0", sentencepiece_model=path)
    fields = GGUFReader(str(out)).fields
    pieces = read_sentencepiece_model(path)
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert fields["tokenizer.ggml.tokens"].contents() == [p for p, _, _ in pieces]
    assert fields["tokenizer.ggml.scores"].contents() == pytest.approx([s for _, s, _ in pieces])
    assert fields["tokenizer.ggml.token_type"].contents() == [k for _, _, k in pieces]
    assert fields["tokenizer.ggml.add_space_prefix"].contents() is True
    assert fields["tokenizer.ggml.add_bos_token"].contents() is True
    assert [fields[f"tokenizer.ggml.{k}_token_id"].contents() for k in ("bos", "eos", "unknown")] == [1, 2, 0]
    assert "Q8_0" in gguf_tensor_types(out)


def test_the_legacy_llama_form_is_sentencepiece_too(v3):
    """Llama 2's tokenizer.json: no pre-tokenizer, a normalizer that prepends and replaces with ▁."""
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast

    _, tokenizer = v3
    backend = tokenizer.backend_tokenizer.__class__.from_str(tokenizer.backend_tokenizer.to_str())
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    legacy = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert tokenizer_family(legacy) == "spm"
    assert legacy("Once upon", add_special_tokens=False)["input_ids"] == [6481, 4482]


def test_finds_the_sentencepiece_file_beside_the_tokenizer(tmp_path, v3):
    path, tokenizer = v3
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(path.read_bytes())
    from transformers import AutoTokenizer

    assert find_sentencepiece_model(AutoTokenizer.from_pretrained(tmp_path)) == tmp_path / "tokenizer.model"


@pytest.mark.parametrize("quantization", ["F32", "F16"])
def test_tiny_mistral_round_trip(tmp_path, v3, tiny_mistral, quantization):
    """Notebook 08's round trip: same token ids, same greedy text, perplexity within 1e-4 relative."""
    from helpers.evaluation import perplexity
    from helpers.generation import greedy_text

    path, tokenizer = v3
    model = tiny_mistral
    out = export_gguf(model, tokenizer, tmp_path / f"m-{quantization}.gguf", quantization, sentencepiece_model=path)
    back, back_tokenizer = load_gguf(out, dtype=model.dtype, device=model.device)
    assert type(back).__name__ == "LlamaForCausalLM"
    same_ids = [back_tokenizer(t, add_special_tokens=False)["input_ids"]
                == tokenizer(t, add_special_tokens=False)["input_ids"] for t in STORIES]
    assert all(same_ids), same_ids
    ppl, ppl_back = (perplexity(m, tokenizer, STORIES, progress=False) for m in (model, back))
    relative = abs(ppl_back - ppl) / ppl
    text, text_back = (greedy_text(m, tokenizer, PROMPT, 12) for m in (model, back))
    print(f"{quantization}: perplexity {ppl:.6f} -> {ppl_back:.6f} (relative {relative:.2e}); greedy {text_back!r}")
    assert relative < 1e-4
    assert text_back == text
    if quantization == "F32":
        assert relative == 0.0  # the same numbers, computed the same way


def test_without_tokenizer_model_scores_follow_the_merges(tmp_path, v3, tiny_mistral):
    """No tokenizer.model to be found: each piece scores minus the rank of the first merge that makes it
    (so llama.cpp joins pieces in the Hugging Face tokenizer's order), and the ids still round-trip."""
    import json

    from gguf import GGUFReader

    _, tokenizer = v3
    assert find_sentencepiece_model(tokenizer) is None  # built in memory: no file beside it
    out = export_gguf(tiny_mistral, tokenizer, tmp_path / "m.gguf", "Q8_0")
    fields = GGUFReader(str(out)).fields
    scores = fields["tokenizer.ggml.scores"].contents()
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    made = [tokenizer.convert_tokens_to_ids("".join(pair)) for pair in merges[:50]]
    assert [scores[i] for i in dict.fromkeys(made)] == sorted((scores[i] for i in dict.fromkeys(made)), reverse=True)
    assert scores[made[0]] == 0.0 and scores[1] == 0.0  # the first merge, and a control token
    assert fields["tokenizer.ggml.token_type"].contents()[:4] == [SPM_UNKNOWN, SPM_CONTROL, SPM_CONTROL, SPM_CONTROL]
    _, back_tokenizer = load_gguf(out)
    assert all(back_tokenizer(t, add_special_tokens=False)["input_ids"] == tokenizer(t, add_special_tokens=False)["input_ids"]
               for t in STORIES)
