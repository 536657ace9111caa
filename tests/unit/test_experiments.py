"""helpers.lab.short_runs: short runs, recall scoring, long-context perplexity and RoPE surgery."""

from __future__ import annotations

import math

import pytest
from conftest import build_tiny_llama
from tiny_runs import PROFILE, tiny_dataset

from helpers.lab.long_context import long_sequences, position_perplexity, rope_base, set_rope
from helpers.lab.new_knowledge import check_not_verbatim, recall
from helpers.lab.short_runs import short_run, small_model_profile, sweep_profile
from helpers.profiles import CPU_SMOLLM2, GPU_MISTRAL7B, GPU_SMOKE, weights_are_random


def test_sweep_profile_keeps_the_embedding_ratio_and_checks_input():
    p = sweep_profile(CPU_SMOLLM2, learning_rate=1e-3, lora_r=8, max_steps=3)
    assert (p.learning_rate, p.lora_r, p.max_steps) == (1e-3, 8, 3)
    assert math.isclose(p.embedding_learning_rate, 1e-4)
    assert p.lora_alpha == CPU_SMOLLM2.lora_alpha
    for bad in (dict(learning_rate=0), dict(learning_rate=-1e-4), dict(lora_r=0), dict(max_steps=0)):
        with pytest.raises(ValueError):
            sweep_profile(CPU_SMOLLM2, **bad)


def test_small_model_profile_uses_smollm2_for_hub_models_and_keeps_local_ones():
    small = small_model_profile(GPU_MISTRAL7B)
    assert small.model_name == CPU_SMOLLM2.model_name and small.device == "cuda" and not small.uses_unsloth
    assert not small.load_in_4bit
    assert small_model_profile(GPU_SMOKE).model_name == GPU_SMOKE.model_name


def test_weights_are_random_from_the_smoke_profile_or_the_env_var():
    assert weights_are_random(GPU_SMOKE, env={})
    assert not weights_are_random(GPU_MISTRAL7B, env={})
    assert weights_are_random(GPU_MISTRAL7B, env={"CPT_RANDOM_WEIGHTS": "1"})
    assert not weights_are_random(GPU_MISTRAL7B, env={"CPT_RANDOM_WEIGHTS": "0"})


def test_check_not_verbatim_ignores_case_and_whitespace():
    text = "The capital of Veloria is Quistan.\nIts river is the Amber."
    check_not_verbatim(["Veloria's capital city is called"], text)
    with pytest.raises(ValueError, match="rephrase"):
        check_not_verbatim(["ITS  river\nis"], text)


def test_short_run_lora_and_full_measure_what_they_say(tokenizer, torch_one_thread):
    data = tiny_dataset(tokenizer, rows=8, length=12)
    texts = ["Once upon a time there was a cat.", "The dog ran to the park and played."]
    profile = sweep_profile(PROFILE, max_steps=2)
    lora, model, _ = short_run(profile, data, texts, eval_max_tokens=16,
                               model_and_tokenizer=(build_tiny_llama(len(tokenizer)), tokenizer))
    assert lora.steps == 2 and len(lora.losses) == 2 and math.isfinite(lora.perplexity)
    assert lora.trainable_parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # Adam keeps two fp32 moments per trainable parameter
    assert math.isclose(lora.optimizer_state_gib * 1024**3, 8 * lora.trainable_parameters, rel_tol=0.01)
    assert lora.peak_reserved_gib is None and lora.training_gib is None  # CPU: no CUDA allocator
    full, model, _ = short_run(profile, data, None, full_finetune=True,
                               model_and_tokenizer=(build_tiny_llama(len(tokenizer)), tokenizer))
    assert full.trainable_parameters == sum(p.numel() for p in model.parameters())
    assert full.lora_r is None and full.perplexity is None


def test_short_run_hands_the_text_to_the_trainer(tokenizer, torch_one_thread, monkeypatch):
    """Notebook 10 passes the stories as text so that unsloth packs them itself, each attending only
    to itself, as notebook 05 does; short_run must hand them to build_trainer."""
    from datasets import Dataset

    import helpers.lab.short_runs

    seen = {}
    real_build_trainer = helpers.lab.short_runs.build_trainer

    def recording_build_trainer(*args, text_dataset=None, **kwargs):
        seen["text_dataset"] = text_dataset
        return real_build_trainer(*args, text_dataset=text_dataset, **kwargs)

    monkeypatch.setattr(helpers.lab.short_runs, "build_trainer", recording_build_trainer)
    text = Dataset.from_dict({"text": ["Once upon a time.</s>"]})
    short_run(sweep_profile(PROFILE, max_steps=1), tiny_dataset(tokenizer, rows=4, length=12), None,
              model_and_tokenizer=(build_tiny_llama(len(tokenizer)), tokenizer), text_dataset=text)
    assert seen["text_dataset"] is text  # (the plain branch trains the rows; unsloth would pack the text)


def test_short_run_refuses_an_empty_dataset(tokenizer, torch_one_thread):
    with pytest.raises(ValueError, match="empty"):
        short_run(PROFILE, tiny_dataset(tokenizer, rows=0), None,
                  model_and_tokenizer=(build_tiny_llama(len(tokenizer)), tokenizer))


def test_recall_scores_a_memorised_answer(tokenizer, torch_one_thread):
    model = build_tiny_llama(len(tokenizer))
    result = recall(model, tokenizer, [("The capital of Veloria is", " Quistan")], max_new_tokens=3)
    assert result["total"] == 1 and result["hits"] in (0, 1)
    assert result["mean_logprob"] < 0 and result["rows"][0]["answer"] == "Quistan"
    with pytest.raises(ValueError):
        recall(model, tokenizer, [])


def test_long_sequences_cut_exact_blocks_and_say_when_text_is_short(tokenizer):
    texts = ["one two three four five six seven eight nine ten"] * 10
    seqs = long_sequences(texts, tokenizer, length=20, count=3)
    assert [len(s) for s in seqs] == [20, 20, 20]
    assert tokenizer.eos_token_id in seqs[0]
    with pytest.raises(ValueError, match="need"):
        long_sequences(texts[:1], tokenizer, length=100, count=2)


def test_position_perplexity_splits_at_the_boundary(tokenizer, torch_one_thread):
    model = build_tiny_llama(len(tokenizer))
    seqs = [list(range(10, 42)), list(range(50, 82))]
    split = position_perplexity(model, seqs, boundary=16)
    assert min(split["inside"], split["beyond"]) <= split["all"] <= max(split["inside"], split["beyond"])
    with pytest.raises(ValueError, match="boundary"):
        position_perplexity(model, seqs, boundary=32)


def test_set_rope_changes_the_frequencies_and_the_logits(tokenizer, torch_one_thread):
    torch = torch_one_thread
    model = build_tiny_llama(len(tokenizer))
    x = torch.arange(10, 40).unsqueeze(0)
    with torch.no_grad():
        before = model(input_ids=x).logits
    rotary = model.model.rotary_emb
    theta = model.config.rope_parameters["rope_theta"]
    original = rotary.inv_freq.clone()
    set_rope(model, theta, linear_factor=4.0)
    assert torch.allclose(rotary.inv_freq, original / 4)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=x).logits, before)
    set_rope(model, theta)
    assert torch.allclose(rotary.inv_freq, original)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=x).logits, before, atol=1e-5)
    with pytest.raises(ValueError):
        set_rope(model, theta, linear_factor=0)
    with pytest.raises(ValueError, match="rotary"):
        set_rope(torch.nn.Linear(2, 2), theta)


def test_set_rope_on_a_model_with_one_rope_per_layer_type_changes_the_full_attention_layers(tokenizer, torch_one_thread):
    torch = torch_one_thread
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=8, layer_types=["sliding_attention", "full_attention"]))
    assert rope_base(model.config) == model.config.rope_parameters["full_attention"]["rope_theta"]
    assert rope_base(model.config, "sliding_attention") == model.config.rope_parameters["sliding_attention"]["rope_theta"]
    rotary = model.model.rotary_emb
    full, local = rotary.full_attention_inv_freq.clone(), rotary.sliding_attention_inv_freq.clone()
    x = torch.arange(10, 40).unsqueeze(0)
    with torch.no_grad():
        before = model(input_ids=x).logits
    set_rope(model, rope_base(model.config), linear_factor=4.0)
    assert torch.allclose(rotary.full_attention_inv_freq, full / 4)
    assert torch.allclose(rotary.full_attention_original_inv_freq, full / 4)
    assert torch.equal(rotary.sliding_attention_inv_freq, local)  # the sliding-window layers keep theirs
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=x).logits, before)
    set_rope(model, rope_base(model.config))
    with torch.no_grad():
        assert torch.allclose(model(input_ids=x).logits, before, atol=1e-5)
    with pytest.raises(ValueError, match="sliding_attention, full_attention|full_attention, sliding_attention"):
        set_rope(model, 10000.0, layer_type="chunked_attention")


def test_rope_base_of_a_plain_config_and_of_one_without_rope(tokenizer):
    model = build_tiny_llama(len(tokenizer))
    assert rope_base(model.config) == model.config.rope_parameters["rope_theta"]
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="no RoPE base"):
        rope_base(GPT2Config())


@pytest.mark.parametrize("tied", [False, True])
def test_embedding_gradient_rows_input_side_only_seen_tokens_output_side_all(tokenizer, torch_one_thread, tied):
    from conftest import build_tiny_llama

    from helpers.training import add_lora, embedding_gradient_rows

    torch = torch_one_thread
    model = add_lora(build_tiny_llama(len(tokenizer), tied=tied), PROFILE)
    ids = torch.tensor([[10, 11, 12, 10, 13, 14, 10, 15]])
    rows = embedding_gradient_rows(model, ids)
    assert rows["tied"] == tied and rows["vocabulary"] == len(tokenizer)
    # a row of embed_tokens gets a gradient only when its token is an input: 6 distinct ids, of which
    # the last (15) only feeds its own prediction, which has no label (causal attention), so 5 rows
    assert rows["distinct_input_tokens"] == 6
    assert rows["embed_tokens"] == 5
    assert rows["lm_head"] == len(tokenizer)  # every row of the output matrix, through the softmax
    assert all(p.grad is None for p in model.parameters())


def test_recall_batches_prompts_of_different_lengths_as_one_by_one(tokenizer, torch_one_thread):
    model = build_tiny_llama(len(tokenizer))
    items = [("The capital of Veloria is", " Quistan"), ("Snow covers", " Kharzan"),
             ("In Hessby the townspeople still tell how the loom", " Orla")]
    side = tokenizer.padding_side
    together = recall(model, tokenizer, items, max_new_tokens=4)
    alone = [recall(model, tokenizer, [item], max_new_tokens=4)["rows"][0] for item in items]
    assert [r["completion"] for r in together["rows"]] == [r["completion"] for r in alone]
    assert tokenizer.padding_side == side  # left padding only for the batch


def test_the_small_model_of_the_experiments_keeps_the_cpu_bf16_switch():
    """CPT_CPU_BF16=0 (fp32 on the CPU, as on one without bf16 hardware) holds for notebooks 07-10's
    experiments too: they had taken CPU_SMOLLM2's bf16 setting whatever the switch said."""
    from helpers.lab.short_runs import small_model_profile
    from helpers.profiles import select_profile

    profile, _ = select_profile(env={"CPT_CPU_BF16": "0"}, cuda=False)
    assert small_model_profile(profile).cpu_bf16 is False
    assert small_model_profile(select_profile(env={}, cuda=False)[0]).cpu_bf16 is True
