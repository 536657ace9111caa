"""One CPT run per architecture family, on tiny random models built from configs.

Each test saves a tiny random model of one family (Llama, Mistral, Qwen2, Gemma3, each with tied or
untied embeddings) to a temporary folder, then runs what the series runs on it: load it the way
``CPT_MODEL=<folder>`` does -> LoRA with targets read from the model -> two training steps with the
embedding learning rate -> save the adapter -> reload it on a fresh base -> generate. It asserts the
LoRA targets, the optimizer's parameter groups (the embedding learning rate on exactly the embedding
tensors) and that the embeddings changed. A few seconds each on one CPU thread.
"""

from __future__ import annotations

import pytest

from helpers.profiles import CPU_SMOLLM2, with_own_model
from helpers.training import EMBEDDING_GROUP

VOCAB = 64
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def config_for(family: str, tied: bool):
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    if family == "llama":
        return LlamaConfig(**SMALL, tie_word_embeddings=tied)
    if family == "mistral":
        return MistralConfig(**SMALL, tie_word_embeddings=tied, sliding_window=64)
    if family == "qwen2":
        return Qwen2Config(**SMALL, tie_word_embeddings=tied, use_sliding_window=False)
    if family == "gemma3":
        return Gemma3TextConfig(**SMALL, head_dim=8, tie_word_embeddings=tied, sliding_window=16,
                                layer_types=["sliding_attention", "full_attention"])
    raise ValueError(family)


CASES = [("llama", False), ("llama", True), ("mistral", False), ("qwen2", True), ("qwen2", False),
         ("gemma3", True)]


@pytest.fixture
def word_tokenizer_with_specials(torch_one_thread):
    from conftest import build_word_tokenizer

    return build_word_tokenizer(specials=("<pad>", "<bos>", "<eos>", "<unk>"), pad_token="<pad>",
                                bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")


def save_tiny_model(folder, family, tied, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_for(family, tied))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return type(model).__name__


@pytest.mark.parametrize("family, tied", CASES, ids=[f"{f}-{'tied' if t else 'untied'}" for f, t in CASES])
def test_cpt_round_trip_on_each_architecture(family, tied, tmp_path, word_tokenizer_with_specials):
    import torch
    from datasets import Dataset

    from helpers.modeling import load_model_and_tokenizer, load_trained_model
    from helpers.training import (
        add_lora,
        build_trainer,
        describe_param_groups,
        find_target_modules,
        snapshot_embeddings,
    )

    folder = tmp_path / f"tiny-{family}"
    class_name = save_tiny_model(folder, family, tied, word_tokenizer_with_specials)
    recipe = CPU_SMOLLM2.replace(lora_r=4, max_steps=2, per_device_train_batch_size=2,
                                 gradient_accumulation_steps=1, max_seq_length=32, warmup_ratio=0.0)
    profile, reason = with_own_model(recipe, "test", {"CPT_MODEL": str(folder)})
    assert profile.model_name == str(folder.resolve()) and "local folder" in reason

    # load the way CPT_MODEL does, then LoRA with the targets read from the model
    model, tokenizer = load_model_and_tokenizer(profile)
    assert type(model).__name__ == class_name
    assert model.config.tie_word_embeddings is tied
    assert find_target_modules(model) == (PROJECTIONS, ["embed_tokens", "lm_head"])  # read from the model
    model = add_lora(model, profile)
    config = model.peft_config["default"]
    assert sorted(config.target_modules) == sorted(PROJECTIONS)
    # untied: both matrices trained in full; tied: PEFT keeps one copy (and names it by its tied paths)
    assert {m.split(".")[-1] for m in config.modules_to_save} == ({"embed_tokens"} if tied else {"embed_tokens", "lm_head"})
    embedding_tensors = {n for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n}
    assert len(embedding_tensors) == (1 if tied else 2)  # tied embeddings stay one trainable matrix
    if tied:
        assert model.get_input_embeddings().weight is model.get_output_embeddings().weight

    # two training steps with the embedding learning rate
    text = "once upon a time there was a little cat and a big dog . they liked to play in the sun every day"
    ids = tokenizer(text)["input_ids"][:24]
    train = Dataset.from_dict({"input_ids": [ids, ids[::-1]] * 2})
    before = snapshot_embeddings(model)
    trainer = build_trainer(profile, model, tokenizer, train, str(tmp_path / "run"), disable_tqdm=True)
    trainer.train()
    assert trainer.state.global_step == 2

    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    embedding_group = groups[EMBEDDING_GROUP]
    assert {names[id(p)] for p in embedding_group["params"]} == embedding_tensors  # exactly the embeddings
    assert embedding_group["initial_lr"] == pytest.approx(profile.embedding_learning_rate)
    rows = {row["group"]: row for row in describe_param_groups(trainer.optimizer, model)}
    assert set(rows[EMBEDDING_GROUP]["modules"]) == ({"embed_tokens"} if tied else {"embed_tokens", "lm_head"})
    assert all(" of " in kind for kind in rows["LoRA adapters"]["modules"])  # only lora_A/B of projections
    after = snapshot_embeddings(model)
    assert before.keys() == after.keys()
    assert all((after[n] - before[n]).abs().max() > 0 for n in before), "the embeddings did not change"

    # save -> reload on a fresh base -> generate the same tokens
    model.save_pretrained(tmp_path / "adapter")
    prompt = tokenizer("once upon a time", return_tensors="pt")
    model.eval()
    with torch.no_grad():
        expected = model.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    reloaded, tokenizer2 = load_trained_model(profile, tmp_path / "adapter")
    with torch.no_grad():
        got = reloaded.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer2.pad_token_id)
    assert got.shape[1] == prompt["input_ids"].shape[1] + 5
    assert torch.equal(got, expected)
