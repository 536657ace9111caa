"""A second trainer built in the process must not silently re-point the first (issue: notebook 05 at 7B).

transformers resets accelerate's process-wide state whenever a ``TrainingArguments`` object picks its
device, which building any ``Trainer`` does. Notebook 05 built a tiny CPU-only trainer between
building the real trainer and training it; on a GPU the real trainer then trained on a CPU
accelerator, which moved the 7B model to the CPU and crashed in the embedding lookup ("Expected all
tensors to be on the same device"; replayed on an H100 by ``benchmarks/second_trainer.py``). On a CPU
the device cannot change, but the mixed precision can, which is the same fault: these tests build
the real trainer in fp32 and a second one in bf16.
"""

from __future__ import annotations

import pytest
from tiny_runs import PROFILE, tiny_dataset, tiny_peft_model


def _trainer(tokenizer, folder, bf16: bool, profile=PROFILE):
    from helpers.training import build_trainer

    model = tiny_peft_model(tokenizer, profile)
    return build_trainer(profile, model, tokenizer, tiny_dataset(tokenizer), output_dir=str(folder),
                         bf16=bf16, disable_tqdm=True)


def test_a_second_trainer_re_points_the_first_one_and_training_refuses(word_tokenizer, tmp_path):
    from helpers.checkpoints import train_resumable
    from helpers.training import TrainerStateReplaced, trainer_state_problem

    real = _trainer(word_tokenizer, tmp_path / "real", bf16=False)
    assert trainer_state_problem(real) is None
    _trainer(word_tokenizer, tmp_path / "other", bf16=True)  # e.g. a demonstration, built after the real one
    problem = trainer_state_problem(real)
    assert problem and "mixed precision 'bf16' instead of 'no'" in problem
    with pytest.raises(TrainerStateReplaced, match="Build this trainer again"):
        train_resumable(real, PROFILE)
    assert real.state.global_step == 0  # refused before any step: nothing trained under the wrong state
    rebuilt = _trainer(word_tokenizer, tmp_path / "rebuilt", bf16=False)  # what the message says to do
    assert trainer_state_problem(rebuilt) is None
    assert train_resumable(rebuilt, PROFILE).global_step == PROFILE.max_steps


def test_notebook_05s_untied_demonstration_leaves_the_trainer_as_it_was(word_tokenizer, tmp_path):
    """Notebook 05's cell on untied embeddings (groups and gradient rows of a tiny model) builds no
    trainer: the real trainer's accelerate state is the same object with the same values after it."""
    from types import SimpleNamespace

    import torch
    from accelerate.state import AcceleratorState
    from transformers import OlmoConfig, OlmoForCausalLM

    from helpers.training import (
        EMBEDDING_GROUP,
        add_lora,
        describe_param_groups,
        embedding_gradient_rows,
        embedding_param_groups,
        trainer_state_problem,
    )

    real = _trainer(word_tokenizer, tmp_path / "real", bf16=False)
    state_before = dict(AcceleratorState._shared_state)
    # the cell, as notebook 05 runs it
    tiny_profile = PROFILE.replace(backend="transformers", device="cpu", load_in_4bit=False, dtype="float32",
                                   use_gradient_checkpointing=False, lora_r=8)
    torch.manual_seed(0)
    tiny = add_lora(OlmoForCausalLM(OlmoConfig(
        vocab_size=len(word_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)), tiny_profile)
    groups = describe_param_groups(SimpleNamespace(param_groups=embedding_param_groups(
        tiny, PROFILE.learning_rate, PROFILE.embedding_learning_rate, PROFILE.weight_decay)), tiny)
    embedding_group = next(g for g in groups if g["group"] == EMBEDDING_GROUP)
    assert {"embed_tokens", "lm_head"} <= set(embedding_group["modules"])
    rows = embedding_gradient_rows(tiny, torch.tensor([[3, 4, 5, 4, 3, 6]]))
    assert rows["embed_tokens"] <= 4 and rows["lm_head"] == len(word_tokenizer)
    assert dict(AcceleratorState._shared_state) == state_before
    assert trainer_state_problem(real) is None


def test_the_gradient_probe_leaves_the_model_as_it_found_it(word_tokenizer):
    """embedding_gradient_rows: the same devices, dtypes and trainable set afterwards, no gradients
    left behind, and the model's training mode unchanged."""
    import torch

    from helpers.training import embedding_gradient_rows

    model = tiny_peft_model(word_tokenizer)
    model.eval()
    before = {n: (p.device, p.dtype, p.requires_grad) for n, p in model.named_parameters()}
    rows = embedding_gradient_rows(model, torch.tensor([[3, 4, 5, 6, 7, 3]]))
    assert rows["embed_tokens"] == 5 and rows["lm_head"] == len(word_tokenizer)
    assert {n: (p.device, p.dtype, p.requires_grad) for n, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
