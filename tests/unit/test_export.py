"""GGUF export: a tiny random Llama / Qwen2 with the shipped SmolLM2 tokenizer, written with the
``gguf`` package and read back with transformers' ``gguf_file=``."""

from __future__ import annotations

import pytest

from helpers.lab.export import (
    BLOCK_BYTES,
    EXPORT_TYPES,
    ExportError,
    as_stored,
    export_gguf,
    export_problem,
    gguf_tensor_bytes,
    gguf_tensor_types,
    interleave_rotary_halves,
    load_gguf,
)

TEXT = "Once upon a time, there was a little cat who loved the sun."


@pytest.fixture(scope="module")
def small_bpe(torch_one_thread):
    """A byte-level BPE tokenizer like SmolLM2's, trained in memory to 300 entries (fast to write and read)."""
    from conftest import WORDS
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([" ".join(WORDS), TEXT] * 5, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")


def logits(model, tokenizer):
    import torch

    with torch.no_grad():
        return model(**tokenizer(TEXT, return_tensors="pt")).logits


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_f32_export_reads_back_identical(tmp_path, small_bpe, tiny_llama_factory, tied):
    tokenizer = small_bpe
    model = tiny_llama_factory(len(tokenizer), tied=tied)
    path = export_gguf(model, tokenizer, tmp_path / "tiny.gguf", "F32", tokenizer_pre="smollm")
    assert gguf_tensor_types(path) == {"F32": 20 if tied else 21}  # untied: output.weight as well
    back, back_tokenizer = load_gguf(path)
    assert type(back).__name__ == "LlamaForCausalLM" and back.config.tie_word_embeddings is tied
    assert back_tokenizer(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]  # same vocabulary and merges
    assert (logits(back, tokenizer) - logits(model, tokenizer)).abs().max().item() == 0.0  # lossless
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_smollm2_tokenizer_survives_the_round_trip(tmp_path, tokenizer, tiny_llama_factory):
    """The real 49,152-entry SmolLM2 tokenizer: same ids after GGUF and back, special ids written as given."""
    from gguf import GGUFReader

    path = export_gguf(tiny_llama_factory(len(tokenizer), tied=True), tokenizer, tmp_path / "s.gguf", "F32",
                       tokenizer_pre="smollm")
    _, back_tokenizer = load_gguf(path)
    sample = TEXT + " <|im_end|> café 1234 \n\n  spaces"
    assert back_tokenizer(sample)["input_ids"] == tokenizer(sample)["input_ids"]
    fields = GGUFReader(str(path)).fields
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"


def test_quantized_types_are_close_and_smaller(tmp_path, small_bpe, tiny_llama_factory):
    tokenizer = small_bpe
    model = tiny_llama_factory(len(tokenizer))
    reference = logits(model, tokenizer)
    sizes, errors = {}, {}
    for qtype in EXPORT_TYPES:
        path = export_gguf(model, tokenizer, tmp_path / f"tiny-{qtype}.gguf", qtype)
        sizes[qtype] = path.stat().st_size
        assert qtype in gguf_tensor_types(path)
        errors[qtype] = (logits(load_gguf(path)[0], tokenizer) - reference).abs().max().item()
    assert errors["F32"] == 0.0
    assert 0 < errors["F16"] < errors["Q8_0"] < errors["Q4_0"] < 0.5
    assert sizes["F32"] > sizes["F16"] > sizes["Q8_0"] > sizes["Q4_0"]
    # the computed tensor bytes explain every difference between the files (the rest is the same header)
    headers = {qtype: sizes[qtype] - gguf_tensor_bytes(model, qtype) for qtype in EXPORT_TYPES}
    assert max(headers.values()) - min(headers.values()) <= 32 * len(model.state_dict())  # alignment padding
    assert all(header > 0 for header in headers.values())
    with pytest.raises(ExportError, match="choose one of"):
        gguf_tensor_bytes(model, "Q5_K")


def test_block_sizes_are_ggufs():
    import gguf

    for qtype in EXPORT_TYPES:
        assert BLOCK_BYTES[qtype] == tuple(gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, qtype)])


def test_qwen2_with_biases_round_trips(tmp_path, small_bpe):
    tokenizer = small_bpe
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         tie_word_embeddings=True)).eval()
    back, _ = load_gguf(export_gguf(model, tokenizer, tmp_path / "qwen.gguf", "F32"))
    assert type(back).__name__ == "Qwen2ForCausalLM"
    assert torch.allclose(logits(back, tokenizer), logits(model, tokenizer), atol=1e-6)


def test_interleave_rotary_halves_pairs_the_halves():
    import numpy as np

    rows = np.arange(8).reshape(8, 1)  # one head of dimension 8: halves [0..3] and [4..7]
    assert interleave_rotary_halves(rows, n_head=1).ravel().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_refuses_what_it_cannot_write(tmp_path, small_bpe, tiny_llama_factory):
    tokenizer = small_bpe
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    model = tiny_llama_factory(len(tokenizer))
    with pytest.raises(ExportError, match="choose one of"):
        export_gguf(model, tokenizer, tmp_path / "x.gguf", "Q4_K_M")
    peft = get_peft_model(tiny_llama_factory(len(tokenizer)), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ExportError, match="merge them first"):
        export_gguf(peft, tokenizer, tmp_path / "x.gguf")
    gemma = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                               head_dim=16))
    with pytest.raises(ExportError, match="convert_hf_to_gguf.py"):
        export_gguf(gemma, tokenizer, tmp_path / "x.gguf")
    from conftest import build_word_tokenizer

    with pytest.raises(ExportError, match="byte-level BPE"):
        export_gguf(model, build_word_tokenizer(eos_token="<eos>"), tmp_path / "x.gguf")
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".gguf"]  # nothing half-written


def test_reads_back_in_the_dtype_and_on_the_device_asked_for(tmp_path, small_bpe, tiny_llama_factory):
    """A bf16 model (the GPU's merged model) exported as F32 reads back bit-identical in bf16: F32 holds
    bf16 values exactly, so comparing in the model's own dtype leaves nothing but the file to blame."""
    import torch

    model = tiny_llama_factory(len(small_bpe), tied=True).to(torch.bfloat16)
    path = export_gguf(model, small_bpe, tmp_path / "bf16.gguf", "F32", tokenizer_pre="smollm")
    back, _ = load_gguf(path, dtype=model.dtype, device="cpu")
    assert {p.dtype for p in back.parameters()} == {torch.bfloat16}
    original, read = model.state_dict(), back.state_dict()
    assert all(torch.equal(original[name], read[name]) for name in original)


def test_export_problem_names_what_the_exporter_cannot_write(small_bpe, tiny_llama_factory):
    from conftest import build_word_tokenizer
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = small_bpe
    assert export_problem(tiny_llama_factory(len(tokenizer)), tokenizer) is None  # what notebook 08 exports
    gemma = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                               head_dim=16))
    problem = export_problem(gemma, tokenizer)
    assert "Gemma3ForCausalLM" in problem and "convert_hf_to_gguf.py" in problem
    assert "byte-level BPE" in export_problem(tiny_llama_factory(len(tokenizer)), build_word_tokenizer(eos_token="<eos>"))


def test_gguf_parsed_once_parses_the_file_once_and_loads_the_same(tmp_path, small_bpe, tiny_llama_factory,
                                                                   monkeypatch):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = tiny_llama_factory(len(small_bpe))
    path = export_gguf(model, small_bpe, tmp_path / "tiny.gguf", "F32", tokenizer_pre="smollm")
    parsed = []

    class CountingReader(gguf.GGUFReader):
        def __init__(self, *args, **kwargs):
            parsed.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    once, once_tokenizer = load_gguf(path)  # tokenizer, config and weights inside gguf_parsed_once
    assert len(parsed) == 1
    assert gguf.GGUFReader is CountingReader  # put back on leaving the block
    parsed.clear()
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name)  # outside: parses again
    plain_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert len(parsed) >= 3
    assert once_tokenizer(TEXT)["input_ids"] == plain_tokenizer(TEXT)["input_ids"]
    plain_state = plain.state_dict()
    assert all((tensor == plain_state[name]).all() for name, tensor in once.state_dict().items())


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_0"])
def test_as_stored_computes_what_the_file_read_back_computes(tmp_path, small_bpe, tiny_llama_factory, qtype):
    model = tiny_llama_factory(len(small_bpe))
    reference = logits(model, small_bpe)
    back, _ = load_gguf(export_gguf(model, small_bpe, tmp_path / f"tiny-{qtype}.gguf", qtype, tokenizer_pre="smollm"))
    stored = as_stored(model, qtype)
    assert (logits(stored, small_bpe) - logits(back, small_bpe)).abs().max().item() < 1e-6
    assert (logits(model, small_bpe) - reference).abs().max().item() == 0.0  # the original is untouched
    if qtype != "F16":  # a quantized type really rounds
        assert (logits(stored, small_bpe) - reference).abs().max().item() > 0


def test_room_problem_refuses_a_write_the_disk_cannot_hold_before_it_starts(tmp_path, monkeypatch):
    """Notebook 08 at 7B wrote a 14.5 GB merge and GGUF files until a 64 GB disk was full (H100,
    2026-12-07): now each write is checked first, with both sizes and what to do."""
    import shutil
    from collections import namedtuple

    from helpers.lab.export import room_problem

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(64e9, 55e9, 9e9))
    message = room_problem(tmp_path / "08_gguf", int(14.5e9), "the F16 GGUF file")
    assert "the F16 GGUF file needs about 14.5 GB" in message and "9.0 GB free" in message
    assert "CPT_OUTPUTS" in message
    assert room_problem(tmp_path, int(7.7e9), "Q8_0") is None  # 9.0 - 7.7 leaves more than 1 GB
    assert room_problem(tmp_path, int(8.5e9), "Q8_0") is not None  # 0.5 GB would be left: refused
