"""Tests for helpers.lab.batching_speed: the padded-vs-packed training speed measurement, on a tiny model."""

from __future__ import annotations

import pytest

from helpers.data import pack_blocks, truncate_rows
from helpers.lab.batching_speed import format_comparison, measure_training_speed
from helpers.profiles import CPU_SMOLLM2

# token ids 3.. of the word tokenizer (0 = <pad>, 1 = <eos>, 2 = <unk>); documents of varied length
DOCUMENTS = [[3 + (i * 7 + j) % 40 for j in range(n)] + [1] for i, n in enumerate((5, 11, 3, 8, 14, 6, 9, 4))]
ARGS = dict(batch_size=2, steps=2, learning_rate=1e-3, embedding_learning_rate=1e-4, seed=0)


@pytest.fixture
def lora_model(torch_one_thread, tiny_llama_factory, word_tokenizer):
    from helpers.training import add_lora

    return add_lora(tiny_llama_factory(len(word_tokenizer)), CPU_SMOLLM2.replace(lora_r=4))


def settings():
    padded, _ = truncate_rows(DOCUMENTS, 8)
    packed, _ = pack_blocks(DOCUMENTS, 8)
    return {"padded rows": padded, "packed blocks": packed}


def test_counts_real_tokens_and_padding(lora_model, word_tokenizer):
    rows = settings()
    results = measure_training_speed(lora_model, word_tokenizer, rows, warmup_steps=0, **{**ARGS, "steps": 4})
    padded, packed = results["padded rows"], results["packed blocks"]
    # with no warm-up and exactly enough rows, every row is used once
    assert padded["real_tokens"] == sum(len(r) for r in rows["padded rows"])
    assert packed["real_tokens"] == packed["padded_tokens"] == sum(len(r) for r in rows["packed blocks"][:8])
    assert packed["padding_share"] == 0.0
    assert 0.0 < padded["padding_share"] < 1.0
    assert padded["padded_tokens"] > padded["real_tokens"]
    for r in results.values():
        assert r["steps"] == 4 and len(r["losses"]) == len(r["step_rates"]) == 4
        assert r["seconds"] > 0 and r["real_tokens_per_s"] > 0
        assert r["mean_loss"] == pytest.approx(sum(r["losses"]) / 4)


def test_a_setting_can_keep_its_packed_documents_apart(lora_model, word_tokenizer):
    """A setting may bring its own collator: packed blocks with every document attending only to
    itself (a 4-D mask) still count all their tokens as real, and train."""
    from helpers.data import PackedRowsCollator

    packed, _ = pack_blocks(DOCUMENTS, 8)
    rows = {"packed blocks": packed, "packed, documents apart": packed}
    apart = PackedRowsCollator(word_tokenizer.eos_token_id, isolate_documents=True)
    results = measure_training_speed(lora_model, word_tokenizer, rows, warmup_steps=0,
                                     collators={"packed, documents apart": apart}, **{**ARGS, "steps": 4})
    together, isolated = results["packed blocks"], results["packed, documents apart"]
    assert isolated["real_tokens"] == isolated["padded_tokens"] == together["real_tokens"] == 4 * 2 * 8
    assert isolated["padding_share"] == 0.0 and isolated["real_tokens_per_s"] > 0
    assert isolated["losses"] != together["losses"]  # the same rows, seen differently


def test_warmup_steps_are_trained_but_not_counted(lora_model, word_tokenizer):
    results = measure_training_speed(lora_model, word_tokenizer, settings(), warmup_steps=1, **ARGS)
    assert all(r["steps"] == 2 and len(r["losses"]) == 2 for r in results.values())
    assert results["packed blocks"]["real_tokens"] == 2 * 2 * 8


def test_weights_are_restored_and_the_model_mode_kept(torch_one_thread, lora_model, word_tokenizer):
    torch = torch_one_thread
    lora_model.eval()
    before = {n: p.detach().clone() for n, p in lora_model.named_parameters()}
    measure_training_speed(lora_model, word_tokenizer, settings(), **ARGS)
    assert not lora_model.training
    assert all(torch.equal(before[n], p) for n, p in lora_model.named_parameters())


def test_settings_train_independently(lora_model, word_tokenizer):
    """Taking turns must not mix the runs: a setting's losses are the same measured alone or together."""
    rows = settings()
    together = measure_training_speed(lora_model, word_tokenizer, rows, **{**ARGS, "steps": 3})
    alone = measure_training_speed(lora_model, word_tokenizer, {"packed blocks": rows["packed blocks"]},
                                   **{**ARGS, "steps": 3})
    assert together["packed blocks"]["losses"] == pytest.approx(alone["packed blocks"]["losses"], abs=1e-6)


def test_training_lowers_the_loss_on_repeated_data(lora_model, word_tokenizer):
    block = DOCUMENTS[4][:12]
    result = measure_training_speed(lora_model, word_tokenizer, {"same": [block] * 12}, warmup_steps=0,
                                    **{**ARGS, "steps": 6, "learning_rate": 5e-3})["same"]
    assert result["losses"][-1] < result["losses"][0]


def test_too_few_rows(lora_model, word_tokenizer):
    with pytest.raises(ValueError, match="too few"):
        measure_training_speed(lora_model, word_tokenizer, {"tiny": DOCUMENTS[:3]}, **ARGS)


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"steps": 0}, {"warmup_steps": -1}])
def test_invalid_sizes(lora_model, word_tokenizer, bad):
    with pytest.raises(ValueError):
        measure_training_speed(lora_model, word_tokenizer, settings(), **{**ARGS, **bad})


def test_no_settings_or_nothing_trainable(torch_one_thread, tiny_llama_factory, word_tokenizer, lora_model):
    with pytest.raises(ValueError, match="no settings"):
        measure_training_speed(lora_model, word_tokenizer, {}, **ARGS)
    frozen = tiny_llama_factory(len(word_tokenizer)).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        measure_training_speed(frozen, word_tokenizer, settings(), **ARGS)


def test_format_comparison():
    results = {
        "padded rows": {"real_tokens_per_s": 100.0, "padding_share": 0.25, "real_tokens": 300, "mean_loss": 2.0},
        "packed blocks": {"real_tokens_per_s": 150.0, "padding_share": 0.0, "real_tokens": 400, "mean_loss": 2.5},
    }
    lines = format_comparison(results).splitlines()
    assert "packing" in lines[0]
    assert "1.00x" in lines[1] and "25.0%" in lines[1]
    assert "1.50x" in lines[2] and "0.0%" in lines[2] and "2.500" in lines[2]
    with pytest.raises(ValueError):
        format_comparison({})
