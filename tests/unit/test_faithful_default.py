"""The GPU default trains the walkthrough's optimization, and its embedding updates survive.

- ``gpu-mistral7b`` packs 2 rows of 2,048 tokens per optimizer step (about the walkthrough's 16
  stories' tokens); ``CPT_PACKING=0`` gives back exactly the walkthrough's padded 2 x 8.
- The trainable embed_tokens / lm_head copies are kept in fp32 (``CPT_EMBEDDING_DTYPE=bfloat16`` gives
  back unsloth's 16-bit copies), and ``assert_embeddings_trained`` fails on copies whose updates
  rounded away.
- Gradient checkpointing ``"auto"`` follows the GPU's free memory.
- Before Ampere (a T4, a V100): no torch varlen kernel, fp16.
"""

from __future__ import annotations

import pytest
from tiny_runs import PROFILE, tiny_peft_model

from helpers.profiles import (
    GPU_MISTRAL7B,
    GPU_MISTRAL7B_LEAN,
    select_profile,
)

GIB = 2**30


def test_the_gpu_default_packs_two_rows_a_step_and_packing_off_is_the_walkthrough():
    profile, _ = select_profile(env={"CPT_PROFILE": "gpu-mistral7b"}, cuda=True)
    assert profile.packing and (profile.per_device_train_batch_size, profile.gradient_accumulation_steps) == (2, 1)
    # about the walkthrough's tokens per step: 16 stories of ~266 Mistral tokens = ~4,255; 2 rows of 2,048 = 4,096
    assert 0.9 < profile.per_device_train_batch_size * profile.max_seq_length / (16 * 266) < 1.1
    assert (profile.learning_rate, profile.embedding_learning_rate, profile.warmup_ratio) == (5e-5, 5e-6, 0.1)
    assert profile.lr_scheduler_type == "cosine" and profile.optim == "adamw_8bit" and profile.seed == 3407

    padded, reason = select_profile(env={"CPT_PROFILE": "gpu-mistral7b", "CPT_PACKING": "0"}, cuda=True)
    assert not padded.packing
    assert (padded.per_device_train_batch_size, padded.gradient_accumulation_steps) == (2, 8)
    assert "2 x 8 rows a step" in reason
    assert -(-2500 // 16) == 157  # the walkthrough's steps for 2,500 stories at 2 x 8

    again, _ = select_profile(env={"CPT_PROFILE": "gpu-mistral7b", "CPT_PACKING": "1"}, cuda=True)
    assert again == profile  # switching to what the profile already does changes nothing


def test_the_lean_profile_keeps_the_same_rows_per_step():
    lean = GPU_MISTRAL7B_LEAN
    assert lean.per_device_train_batch_size * lean.gradient_accumulation_steps == \
        GPU_MISTRAL7B.per_device_train_batch_size * GPU_MISTRAL7B.gradient_accumulation_steps
    assert lean.use_gradient_checkpointing == "unsloth" and lean.embedding_dtype == "float32"
    padded, _ = select_profile(env={"CPT_PROFILE": "gpu-mistral7b-lean", "CPT_PACKING": "0"}, cuda=True)
    assert padded.per_device_train_batch_size * padded.gradient_accumulation_steps == 16


def test_the_cpu_profile_keeps_its_batch_when_packing_is_switched_off():
    profile, _ = select_profile(env={"CPT_PACKING": "0"}, cuda=False)
    assert profile.name == "cpu-smollm2" and not profile.packing
    assert (profile.per_device_train_batch_size, profile.gradient_accumulation_steps) == (2, 2)


@pytest.mark.parametrize("value, expected", [("float32", "float32"), ("bfloat16", None), ("", "float32"),
                                             ("FLOAT32", "float32")])
def test_embedding_dtype_switch(value, expected):
    profile, reason = select_profile(env={"CPT_PROFILE": "gpu-mistral7b", "CPT_EMBEDDING_DTYPE": value}, cuda=True)
    assert profile.embedding_dtype == expected
    assert ("CPT_EMBEDDING_DTYPE" in reason) == (expected != GPU_MISTRAL7B.embedding_dtype)


@pytest.mark.parametrize("value", ["fp32", "16", "bf16", "true"])
def test_embedding_dtype_switch_refuses_other_values(value):
    with pytest.raises(ValueError, match="use float32 .* or bfloat16"):
        select_profile(env={"CPT_PROFILE": "gpu-mistral7b", "CPT_EMBEDDING_DTYPE": value}, cuda=True)


def test_a_local_model_on_the_walkthrough_recipe_trains_its_2500_rows(monkeypatch):
    """CPT_MODEL on gpu-mistral7b (the quality gate) keeps the walkthrough's data: the sample cycled to
    2,500 stories, as without CPT_MODEL; the CPU profile keeps its sample as it is."""
    from conftest import REPO_ROOT

    from helpers.data import load_raw_dataset
    from helpers.support.gguf import find_embedded_gguf

    monkeypatch.setenv("CPT_ROOT", str(REPO_ROOT))
    gguf = str(find_embedded_gguf())
    seven_b, _ = select_profile(env={"CPT_PROFILE": "gpu-mistral7b", "CPT_MODEL": gguf}, cuda=True)
    rows, source = load_raw_dataset(seven_b, "train")
    assert rows.num_rows == 2500 and "cycled" in source
    cpu, _ = select_profile(env={"CPT_MODEL": gguf}, cuda=False)
    rows, source = load_raw_dataset(cpu, "train")
    assert rows.num_rows == 188 and "cycled" not in source


# --- gradient checkpointing by free memory ------------------------------------------------------


_MISTRAL = {}


def Mistral7BShapes():  # noqa: N802  (reads like the model it stands for)
    """Mistral-7B-v0.3's architecture on the meta device (no memory): the shapes that
    choose_gradient_checkpointing and estimate_trainable_parameters read."""
    if "model" not in _MISTRAL:
        import torch
        from transformers import MistralConfig, MistralForCausalLM

        config = MistralConfig(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)
        with torch.device("meta"):
            _MISTRAL["model"] = MistralForCausalLM(config)
    return _MISTRAL["model"]


def test_trainable_parameters_are_estimated_before_lora():
    from helpers.training import estimate_trainable_parameters

    assert estimate_trainable_parameters(Mistral7BShapes(), GPU_MISTRAL7B) == 603_979_776  # unsloth's count


@pytest.mark.parametrize("free_gib, expected", [(134.0, False), (35.0, False), (10.5, "unsloth"), (20.0, "unsloth")])
def test_auto_checkpointing_follows_free_memory(free_gib, expected):
    """H200 (134 GiB free after loading) and A100-40GB: off; T4 (about 10.5 GiB free) and 24 GB cards: unsloth's."""
    from helpers.training import choose_gradient_checkpointing

    setting, reason = choose_gradient_checkpointing(GPU_MISTRAL7B, Mistral7BShapes(), free_bytes=int(free_gib * GIB))
    assert setting == expected
    assert f"{free_gib:.1f} GiB free" in reason and "activations of 4,096 tokens" in reason


def test_an_explicit_checkpointing_setting_is_kept():
    from helpers.training import choose_gradient_checkpointing

    assert choose_gradient_checkpointing(GPU_MISTRAL7B_LEAN, Mistral7BShapes(), free_bytes=200 * GIB) == \
        ("unsloth", "the profile's setting")


def test_auto_checkpointing_without_cuda_keeps_activations():
    from helpers.training import choose_gradient_checkpointing

    setting, reason = choose_gradient_checkpointing(GPU_MISTRAL7B.replace(device="cpu"), Mistral7BShapes())
    assert setting is False and "no CUDA" in reason


# --- before Ampere --------------------------------------------------------------------------------


def test_a_t4_gets_fp16_and_no_varlen_kernel(monkeypatch):
    """Simulated T4: capability (7, 5), no bf16. The profile's auto dtype is fp16 and the varlen swap is
    not installed, with its reason (unsloth's own route stays)."""
    import torch

    from helpers.modeling import resolve_dtype
    from helpers.support import varlen_attention

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))
    assert resolve_dtype(GPU_MISTRAL7B) == torch.float16
    dispatch = type(varlen_attention)("fake_dispatch")
    dispatch._TORCH_VARLEN_ATTN, dispatch.HAS_FLASH_ATTENTION = None, False
    message = varlen_attention.enable_torch_varlen_for_unsloth(dispatch=dispatch, flash_attn_installed=False,
                                                               varlen_attn=lambda *a, **k: None)
    assert message.startswith("not enabled: this GPU has compute capability 7.5, older than Ampere")
    assert dispatch._TORCH_VARLEN_ATTN is None


# --- embedding copies: fp32 vs bf16 ---------------------------------------------------------------


def test_bf16_rounds_away_updates_of_the_embedding_learning_rate():
    """The arithmetic behind the fp32 copies: a 5e-6 step survives on almost every fp32 weight of std
    0.02, on few bf16 ones (about 8%: those smaller than 256 x 5e-6)."""
    import torch

    from helpers.training import rounding_survival

    weight = torch.randn(512, 64, generator=torch.Generator().manual_seed(0)) * 0.02
    assert rounding_survival(weight, 5e-6, "float32") > 0.99
    assert 0.04 < rounding_survival(weight, 5e-6, "bfloat16") < 0.12


def one_adam_step(model, embedding_lr: float):
    """One AdamW step with the recipe's parameter groups and random gradients; returns the optimizer."""
    import torch

    from helpers.training import embedding_param_groups

    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(embedding_param_groups(model, 5e-5, embedding_lr, 0.0))
    for param in model.parameters():
        if param.requires_grad:
            param.grad = torch.randn_like(param)
    optimizer.step()
    return optimizer


def test_fp32_copies_train_and_bf16_copies_fail_the_check(word_tokenizer):
    from helpers.training import (
        EmbeddingsNotTrained,
        assert_embeddings_trained,
        cast_embedding_copies,
        snapshot_embeddings,
    )

    fp32 = tiny_peft_model(word_tokenizer, PROFILE)
    before = snapshot_embeddings(fp32)
    report = assert_embeddings_trained(fp32, before, one_adam_step(fp32, 5e-6), 5e-6)
    assert all(r["dtype"] == "float32" and r["changed_in_touched_rows"] > 0.99 for r in report.values())

    bf16 = tiny_peft_model(word_tokenizer, PROFILE)
    dtypes = cast_embedding_copies(bf16, "bfloat16")
    assert set(dtypes.values()) == {"float32"} and len(dtypes) == 2
    before = snapshot_embeddings(bf16)
    with pytest.raises(EmbeddingsNotTrained) as info:
        assert_embeddings_trained(bf16, before, one_adam_step(bf16, 5e-6), 5e-6)
    message = str(info.value)
    for needle in ("embed_tokens: only", "lm_head: only", "stored in bfloat16", "rounds away",
                   "CPT_EMBEDDING_DTYPE=float32"):
        assert needle in message, needle


def test_cast_back_to_fp32_keeps_tied_copies_tied(word_tokenizer):
    import torch
    from conftest import build_tiny_llama

    from helpers.training import add_lora, cast_embedding_copies, embedding_copies_of

    model = add_lora(build_tiny_llama(len(word_tokenizer), tied=True, seed=0), PROFILE)
    cast_embedding_copies(model, "bfloat16")
    cast_embedding_copies(model, "float32")
    weights = [copy.weight for copy in embedding_copies_of(model).values()]
    assert weights and all(w.dtype == torch.float32 for w in weights)
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()


def test_add_lora_applies_the_profile_embedding_dtype(word_tokenizer):
    import torch
    from conftest import build_tiny_llama

    from helpers.training import add_lora, embedding_copies_of

    model = add_lora(build_tiny_llama(len(word_tokenizer), tied=False, seed=0).to(torch.bfloat16),
                     PROFILE.replace(embedding_dtype="float32"))
    copies = embedding_copies_of(model)
    assert len(copies) == 2 and all(c.weight.dtype == torch.float32 for c in copies.values())
    originals = [m.original_module.weight.dtype for m in model.modules() if hasattr(m, "original_module")]
    assert originals and all(d == torch.bfloat16 for d in originals)  # the frozen originals are untouched


def test_quality_gate_batchings_are_parsed_and_bad_ones_refused():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from quality_gate import parse_args, parse_batching, runs_of

    assert parse_batching("padded-2x8") == (False, 2, 8) and parse_batching("packed-2x1") == (True, 2, 1)
    for bad in ("packed-0x1", "2x8", "packed-2x"):
        with pytest.raises(ValueError, match="padded-RxA or packed-RxA"):
            parse_batching(bad)
    args = parse_args(["--batchings", "packed-2x1", "--seeds", "1,2"])
    runs = runs_of(args)
    assert [r["batching"] for r in runs] == ["padded-2x8"] * 2 + ["packed-2x1"] * 2  # the reference always runs
    with pytest.raises(SystemExit):
        parse_args(["--batchings", "packed-2"])


def test_the_walkthrough_switch_gives_the_walkthroughs_own_settings():
    """CPT_PROFILE=gpu-mistral7b-walkthrough: padded 2 x 8 (157 steps), unsloth's offloaded
    checkpointing, unsloth's bf16 embedding copies; the rest of the recipe as the default's."""
    from helpers.profiles import GPU_MISTRAL7B_WALKTHROUGH

    profile, reason = select_profile(env={"CPT_PROFILE": "gpu-mistral7b-walkthrough"}, cuda=True)
    assert profile is GPU_MISTRAL7B_WALKTHROUGH and "gpu-mistral7b-walkthrough" in reason
    assert not profile.packing
    assert (profile.per_device_train_batch_size, profile.gradient_accumulation_steps) == (2, 8)
    assert profile.use_gradient_checkpointing == "unsloth" and profile.embedding_dtype is None
    same = ("model_name", "load_in_4bit", "max_seq_length", "lora_r", "lora_alpha", "use_rslora", "target_modules",
            "learning_rate", "embedding_learning_rate", "lr_scheduler_type", "warmup_ratio", "optim",
            "weight_decay", "seed", "dataset_name", "dataset_split", "num_train_epochs")
    assert all(getattr(profile, f) == getattr(GPU_MISTRAL7B, f) for f in same)
    assert GPU_MISTRAL7B.packing and GPU_MISTRAL7B.embedding_dtype == "float32"  # what the default changes


@pytest.mark.parametrize("value, expected", [("0", False), ("1", True), ("", True), ("off", False)])
def test_cpu_bf16_switch(value, expected):
    profile, reason = select_profile(env={"CPT_CPU_BF16": value}, cuda=False)
    assert profile.name == "cpu-smollm2" and profile.cpu_bf16 is expected
    assert ("CPT_CPU_BF16" in reason) == (not expected)


def test_cpu_bf16_switch_refuses_other_values():
    with pytest.raises(ValueError, match="CPT_CPU_BF16='maybe'"):
        select_profile(env={"CPT_CPU_BF16": "maybe"}, cuda=False)
