"""Tests for helpers.lab.merging (merged model == adapter model) and helpers.generation (the merged folder
loads and generates without peft).

A tiny random Llama with the profile's CPT LoRA (adapters on every projection, embed_tokens and
lm_head trained in full) whose adapter weights are randomised, so that the adapter really changes
the model's output.
"""

from __future__ import annotations

import pytest

from helpers.generation import generate_without_peft, greedy_text
from helpers.lab.merging import (
    MergeError,
    adapter_composition,
    adapter_parameter_count,
    is_quantized,
    merge_adapter,
    save_merged,
)
from helpers.profiles import CPU_SMOLLM2
from helpers.support.files import folder_size_bytes

PROMPT = "once upon a time there was"


def trained_peft_model(tokenizer, tied: bool, seed: int = 0):
    """Return (base_text, peft_model): a tiny Llama with CPT LoRA whose adapter weights are random."""
    import torch
    from conftest import build_tiny_llama

    from helpers.training import add_lora

    base = build_tiny_llama(len(tokenizer), tied=tied, seed=seed)
    base_text = greedy_text(base, tokenizer, PROMPT, 12)
    model = add_lora(base, CPU_SMOLLM2.replace(lora_r=4))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:  # LoRA A/B and the full embedding copies: as if trained
                param.add_(torch.randn(param.shape, generator=generator) * (0.5 if "lora_" in name else 0.2))
    model.eval()
    return base_text, model


def logits(model, tokenizer):
    import torch

    with torch.no_grad():
        return model(**tokenizer(PROMPT, return_tensors="pt")).logits


@pytest.mark.parametrize("tied", [False, True])
def test_merge_gives_the_adapter_model(torch_one_thread, word_tokenizer, tied):
    torch = torch_one_thread
    base_text, model = trained_peft_model(word_tokenizer, tied)
    adapter_logits, adapter_text = logits(model, word_tokenizer), greedy_text(model, word_tokenizer, PROMPT, 12)
    merged = merge_adapter(model)
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not any("lora_" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    assert torch.allclose(logits(merged, word_tokenizer), adapter_logits, atol=1e-5)
    assert greedy_text(merged, word_tokenizer, PROMPT, 12) == adapter_text
    if tied:  # the trained embedding stays shared by input and output
        assert merged.get_output_embeddings().weight is merged.get_input_embeddings().weight


def test_merge_saved_folder_loads_without_peft_and_generates_the_same_text(torch_one_thread, word_tokenizer, tmp_path):
    base_text, model = trained_peft_model(word_tokenizer, tied=False)
    adapter_text = greedy_text(model, word_tokenizer, PROMPT, 12)
    merged = merge_adapter(model)
    folder = save_merged(merged, word_tokenizer, tmp_path / "merged")
    assert (folder / "config.json").is_file() and not (folder / "adapter_config.json").exists()
    fresh = generate_without_peft(folder, PROMPT, 12)
    assert fresh["peft_imported"] is False
    assert fresh["class"] == "LlamaForCausalLM" and fresh["dtype"] == "torch.float32"
    assert fresh["text"] == adapter_text
    assert adapter_text != base_text or not adapter_text  # the adapter changed what the model says


def test_merge_rejects_a_model_without_adapter(torch_one_thread, tiny_llama_factory, word_tokenizer):
    with pytest.raises(MergeError, match="not a PEFT model"):
        merge_adapter(tiny_llama_factory(len(word_tokenizer)))


def test_merge_rejects_a_quantized_base(torch_one_thread, word_tokenizer, monkeypatch):
    _, model = trained_peft_model(word_tokenizer, tied=False)
    monkeypatch.setattr(model.get_base_model(), "is_loaded_in_4bit", True, raising=False)
    assert is_quantized(model)
    with pytest.raises(MergeError, match="save_pretrained_merged"):
        merge_adapter(model)


def test_is_quantized_sees_integer_weights_and_quantization_config(torch_one_thread, tiny_llama_factory,
                                                                   word_tokenizer):
    torch = torch_one_thread
    model = tiny_llama_factory(len(word_tokenizer))
    assert not is_quantized(model)
    model.config.quantization_config = {"quant_method": "bitsandbytes"}
    assert is_quantized(model)
    del model.config.quantization_config
    model.model.norm.weight = torch.nn.Parameter(torch.zeros(32, dtype=torch.uint8), requires_grad=False)
    assert is_quantized(model)


def test_save_merged_refuses_an_unmerged_model(torch_one_thread, word_tokenizer, tmp_path):
    _, model = trained_peft_model(word_tokenizer, tied=False)
    with pytest.raises(MergeError, match="merge_adapter"):
        save_merged(model, word_tokenizer, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_adapter_composition_and_sizes(torch_one_thread, word_tokenizer, tmp_path):
    _, model = trained_peft_model(word_tokenizer, tied=False)
    model.save_pretrained(tmp_path / "adapter")
    groups = adapter_composition(tmp_path / "adapter")
    full, lora = groups["full copies (embed_tokens, lm_head)"], groups["LoRA A/B"]
    vocab = len(word_tokenizer)
    assert full["tensors"] == 2 and full["parameters"] == 2 * vocab * 32
    assert lora["tensors"] == 2 * 7 * 2  # A and B, seven projections, two layers
    assert full["bytes"] == 4 * full["parameters"]
    weights = folder_size_bytes(tmp_path / "adapter", "*.safetensors")
    assert full["bytes"] + lora["bytes"] <= weights <= folder_size_bytes(tmp_path / "adapter")


@pytest.mark.parametrize("tied", [False, True])
def test_adapter_parameter_count_matches_the_saved_adapter(torch_one_thread, word_tokenizer, tmp_path, tied):
    """The shape arithmetic gives exactly the numbers PEFT writes, tied embeddings included (saved twice)."""
    _, model = trained_peft_model(word_tokenizer, tied=tied)
    model.save_pretrained(tmp_path / "adapter")
    saved = {kind: entry["parameters"] for kind, entry in adapter_composition(tmp_path / "adapter").items()}
    config = model.get_base_model().config
    r = model.peft_config["default"].r
    assert adapter_parameter_count(config, r, CPU_SMOLLM2.target_modules) == saved


def test_adapter_parameter_count_of_mistral_7b_at_rank_128():
    """The walkthrough's adapter: 335.5 M LoRA numbers and two 32,768 x 4,096 embedding copies."""
    from transformers import MistralConfig

    from helpers.profiles import GPU_MISTRAL7B

    config = MistralConfig(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=8)
    counts = adapter_parameter_count(config, GPU_MISTRAL7B.lora_r, GPU_MISTRAL7B.target_modules)
    assert counts == {"LoRA A/B": 335_544_320, "full copies (embed_tokens, lm_head)": 2 * 32768 * 4096}


def test_adapter_parameter_count_rejects_unknown_targets_and_ranks():
    from types import SimpleNamespace

    config = SimpleNamespace(hidden_size=8, num_attention_heads=2, num_key_value_heads=1, intermediate_size=16,
                             num_hidden_layers=1, vocab_size=10)
    with pytest.raises(ValueError, match="unknown target module.*qkv_proj"):
        adapter_parameter_count(config, 4, ["q_proj", "qkv_proj"])
    with pytest.raises(ValueError, match="at least 1"):
        adapter_parameter_count(config, 0, ["q_proj"])


def test_adapter_composition_without_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        adapter_composition(tmp_path)


def test_folder_size_of_an_empty_or_missing_folder(tmp_path):
    assert folder_size_bytes(tmp_path) == 0
    assert folder_size_bytes(tmp_path / "missing") == 0


def test_generate_without_peft_reports_a_failed_load(tmp_path):
    with pytest.raises(RuntimeError, match="plain transformers failed"):
        generate_without_peft(tmp_path / "nothing-here", PROMPT, 4, timeout=120)


def _fake_cache(tmp_path, repo_id: str, weights: bool = True):
    """A Hugging Face cache folder holding one snapshot of ``repo_id`` (the layout the hub writes)."""
    revision = "0" * 40
    repo = tmp_path / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    (snapshot / "config.json").write_text("{}")
    if weights:
        (snapshot / "model.safetensors").write_bytes(b"weights")
    return tmp_path / "hub", snapshot


class _Model:
    def __init__(self, name):
        self.config = type("Config", (), {"_name_or_path": name})()


def test_offline_merge_points_the_base_name_at_the_cached_snapshot_and_puts_it_back(tmp_path, monkeypatch):
    """The H200 run of 2026-11-28: unsloth's 16-bit merge of the gpu-mistral7b notebook asked the hub
    about `unsloth/mistral-7b-v0.3` with HF_HUB_OFFLINE=1 and stopped, although the weights were cached."""
    from huggingface_hub import constants

    from helpers.lab.merging import offline_merge_base

    cache, snapshot = _fake_cache(tmp_path, "org/base-7b")
    model = _Model("org/base-7b-bnb-4bit")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with offline_merge_base(model, "org/base-7b", cache_dir=cache) as folder:
        assert folder == snapshot and model.config._name_or_path == str(snapshot)
    assert model.config._name_or_path == "org/base-7b-bnb-4bit"
    with pytest.raises(RuntimeError, match="disk full"), offline_merge_base(model, "org/base-7b", cache_dir=cache):
        raise RuntimeError("disk full")
    assert model.config._name_or_path == "org/base-7b-bnb-4bit"  # put back after an error too


def test_offline_merge_changes_nothing_online_or_for_a_local_folder(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from helpers.lab.merging import offline_merge_base

    model = _Model("org/base-7b")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with offline_merge_base(model, "org/base-7b", cache_dir=tmp_path) as folder:
        assert folder is None and model.config._name_or_path == "org/base-7b"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with offline_merge_base(model, str(tmp_path), cache_dir=tmp_path) as folder:
        assert folder is None and model.config._name_or_path == "org/base-7b"


@pytest.mark.parametrize("weights", [False, None])  # a snapshot without safetensors, no snapshot at all
def test_offline_merge_without_cached_weights_says_how_to_get_them(tmp_path, monkeypatch, weights):
    from huggingface_hub import constants

    from helpers.lab.merging import MergeError, offline_merge_base

    cache = tmp_path / "hub"
    if weights is not None:
        cache, _ = _fake_cache(tmp_path, "org/base-7b", weights=weights)
    model = _Model("org/base-7b")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MergeError, match=r"huggingface-cli download org/base-7b.*adapter folder is unchanged"):
        with offline_merge_base(model, "org/base-7b", cache_dir=cache):
            pytest.fail("the block must not run without the base weights")
    assert model.config._name_or_path == "org/base-7b"
