"""Tests for helpers.training: LoRA targets, the embedding learning rate, and a 2-step training run."""

from __future__ import annotations

import math
import sys

import pytest

from helpers.profiles import CPU_SMOLLM2, EMBEDDING_MODULES, GPU_MISTRAL7B, LORA_PROJECTIONS
from helpers.training import (
    ADAPTER_GROUP,
    EMBEDDING_GROUP,
    add_lora,
    describe_param_groups,
    embedding_param_groups,
    is_embedding_parameter,
    lora_config,
    parameter_kind,
    split_target_modules,
    trainable_breakdown,
)

VOCAB = 96


# --- split_target_modules / lora_config --------------------------------------------------------


def test_split_target_modules_default_targets():
    lora, full = split_target_modules(GPU_MISTRAL7B.target_modules)
    assert lora == list(LORA_PROJECTIONS)
    assert full == ["embed_tokens", "lm_head"]


def test_split_target_modules_keeps_order_and_accepts_any_iterable():
    lora, full = split_target_modules(m for m in ("lm_head", "v_proj", "embed_tokens", "q_proj"))
    assert lora == ["v_proj", "q_proj"]
    assert full == ["lm_head", "embed_tokens"]


@pytest.mark.parametrize(
    "targets, expected",
    [
        ((), ([], [])),
        (("q_proj", "v_proj"), (["q_proj", "v_proj"], [])),
        (("embed_tokens",), ([], ["embed_tokens"])),
    ],
)
def test_split_target_modules_edge_cases(targets, expected):
    assert split_target_modules(targets) == expected


def test_lora_config_fields_cpu_profile():
    config = lora_config(CPU_SMOLLM2)
    assert config.r == 16
    assert config.lora_alpha == 32
    assert config.use_rslora is True
    assert config.lora_dropout == 0.0
    assert config.bias == "none"
    assert set(config.target_modules) == set(LORA_PROJECTIONS)
    assert list(config.modules_to_save) == ["embed_tokens", "lm_head"]
    assert config.ensure_weight_tying is False
    assert getattr(config.task_type, "value", config.task_type) == "CAUSAL_LM"


def test_lora_config_fields_gpu_profile():
    config = lora_config(GPU_MISTRAL7B)
    assert (config.r, config.lora_alpha, config.use_rslora) == (128, 32, True)
    assert set(config.target_modules) == set(LORA_PROJECTIONS)
    assert not set(EMBEDDING_MODULES) & set(config.target_modules)  # embeddings are trained in full


def test_lora_config_weight_tying():
    assert lora_config(CPU_SMOLLM2, tie_embeddings=True).ensure_weight_tying is True
    no_embeddings = CPU_SMOLLM2.replace(target_modules=LORA_PROJECTIONS)
    config = lora_config(no_embeddings, tie_embeddings=True)
    assert config.ensure_weight_tying is False  # nothing to tie when no embedding is trained
    assert not config.modules_to_save


@pytest.mark.parametrize(
    "name, expected",
    [
        ("base_model.model.model.embed_tokens.modules_to_save.default.weight", True),
        ("base_model.model.lm_head.modules_to_save.default.weight", True),
        ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", False),
        ("model.norm.weight", False),
    ],
)
def test_is_embedding_parameter(name, expected):
    assert is_embedding_parameter(name) is expected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight", "lora_A of q_proj"),
        ("base_model.model.model.layers.0.mlp.down_proj.lora_B.default.weight", "lora_B of down_proj"),
        ("base_model.model.model.embed_tokens.modules_to_save.default.weight", "embed_tokens"),
        ("base_model.model.lm_head.modules_to_save.default.weight", "lm_head"),
        ("model.norm.weight", "weight"),
    ],
)
def testparameter_kind(name, expected):
    assert parameter_kind(name) == expected


# --- parameter groups on a tiny PEFT model -----------------------------------------------------


@pytest.fixture
def peft_model(tiny_llama_factory):
    from peft import get_peft_model

    return get_peft_model(tiny_llama_factory(VOCAB, tied=False), lora_config(CPU_SMOLLM2))


def trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def test_peft_model_trains_adapters_and_full_embedding_copies_only(peft_model):
    names = list(trainable(peft_model))
    embedding = [n for n in names if is_embedding_parameter(n)]
    assert sorted(parameter_kind(n) for n in embedding) == ["embed_tokens", "lm_head"]
    assert all("modules_to_save" in n for n in embedding)
    assert all(("lora_A" in n or "lora_B" in n) for n in names if n not in embedding)
    # 7 projections x 2 layers x (A, B)
    assert len(names) - len(embedding) == len(LORA_PROJECTIONS) * 2 * 2


def test_trainable_breakdown(peft_model):
    breakdown = trainable_breakdown(peft_model)
    expected_keys = {f"{proj} (LoRA A+B)" for proj in LORA_PROJECTIONS} | {
        "embed_tokens (full copy)",
        "lm_head (full copy)",
    }
    assert set(breakdown) == expected_keys
    assert breakdown["embed_tokens (full copy)"] == {"parameters": VOCAB * 32, "dtypes": ["torch.float32"]}
    # q_proj: 2 layers x (A: r x hidden + B: hidden x r) with r=16, hidden=32
    assert breakdown["q_proj (LoRA A+B)"]["parameters"] == 2 * (16 * 32 + 32 * 16)
    counts = [entry["parameters"] for entry in breakdown.values()]
    assert counts == sorted(counts, reverse=True)  # largest first
    assert sum(counts) == sum(p.numel() for p in trainable(peft_model).values())


def test_embedding_param_groups_split(peft_model):
    torch = pytest.importorskip("torch")
    groups = embedding_param_groups(
        peft_model, learning_rate=5e-4, embedding_learning_rate=5e-5, weight_decay=0.01
    )
    assert [g["name"] for g in groups] == [ADAPTER_GROUP, EMBEDDING_GROUP]
    adapters, embeddings = groups
    assert adapters["lr"] == 5e-4 and embeddings["lr"] == 5e-5
    assert adapters["weight_decay"] == embeddings["weight_decay"] == 0.01

    names = {id(p): n for n, p in peft_model.named_parameters()}
    assert sorted(parameter_kind(names[id(p)]) for p in embeddings["params"]) == ["embed_tokens", "lm_head"]
    assert all(p.shape == (VOCAB, 32) for p in embeddings["params"])
    assert all(("lora_A" in names[id(p)] or "lora_B" in names[id(p)]) for p in adapters["params"])
    # every trainable tensor is in exactly one group; no frozen tensor is in any
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in trainable(peft_model).values()}
    # the groups are accepted by a torch optimizer as they are
    torch.optim.AdamW(groups)


def test_describe_param_groups(peft_model):
    import torch

    groups = embedding_param_groups(peft_model, 5e-4, 5e-5, 0.0)
    optimizer = torch.optim.AdamW(groups)
    rows = describe_param_groups(optimizer, peft_model)
    assert [r["group"] for r in rows] == [ADAPTER_GROUP, EMBEDDING_GROUP]
    adapters, embeddings = rows
    assert (adapters["lr"], embeddings["lr"]) == (5e-4, 5e-5)
    assert embeddings["modules"] == ["embed_tokens", "lm_head"]
    assert embeddings["tensors"] == 2
    assert embeddings["parameters"] == 2 * VOCAB * 32
    expected_adapter_modules = sorted(
        f"{ab} of {proj}" for ab in ("lora_A", "lora_B") for proj in LORA_PROJECTIONS
    )
    assert adapters["modules"] == expected_adapter_modules
    total = sum(p.numel() for p in trainable(peft_model).values())
    assert adapters["parameters"] + embeddings["parameters"] == total


def test_describe_param_groups_prefers_initial_lr_and_names_unnamed_groups(peft_model):
    import torch

    params = list(trainable(peft_model).values())
    optimizer = torch.optim.SGD(params, lr=0.1)
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)  # sets initial_lr, scales lr
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    rows = describe_param_groups(optimizer, peft_model)
    assert rows[0]["group"] == "group 0"
    assert rows[0]["lr"] == 0.1
    assert rows[0]["tensors"] == len(params)


def test_no_embedding_group_without_trainable_embeddings(tiny_llama_factory):
    from peft import get_peft_model

    profile = CPU_SMOLLM2.replace(target_modules=LORA_PROJECTIONS)
    model = get_peft_model(tiny_llama_factory(VOCAB), lora_config(profile))
    groups = embedding_param_groups(model, 5e-4, 5e-5, 0.0)
    assert [g["name"] for g in groups] == [ADAPTER_GROUP]


def test_tied_embeddings_give_exactly_one_embedding_tensor(tiny_llama_factory):
    model = tiny_llama_factory(VOCAB, tied=True)
    assert model.config.tie_word_embeddings
    peft_model = add_lora(model, CPU_SMOLLM2)  # reads tie_word_embeddings from the config
    groups = embedding_param_groups(peft_model, 5e-4, 5e-5, 0.0)
    embeddings = next(g for g in groups if g["name"] == EMBEDDING_GROUP)
    assert len(embeddings["params"]) == 1
    assert embeddings["params"][0].shape == (VOCAB, 32)
    # the trainable copies of embed_tokens and lm_head are one and the same tensor
    copies = [p for n, p in peft_model.named_parameters(remove_duplicate=False) if "modules_to_save" in n]
    assert len(copies) == 2
    assert copies[0] is copies[1] or copies[0].data_ptr() == copies[1].data_ptr()


def test_untied_model_gets_two_embedding_tensors_through_add_lora(tiny_llama_factory):
    peft_model = add_lora(tiny_llama_factory(VOCAB, tied=False), CPU_SMOLLM2)
    groups = embedding_param_groups(peft_model, 5e-4, 5e-5, 0.0)
    assert len(next(g for g in groups if g["name"] == EMBEDDING_GROUP)["params"]) == 2


# --- training arguments and a 2-step run -------------------------------------------------------


def test_training_arguments_follow_the_profile(tmp_path):
    from helpers.training import cpu_computes_bf16, training_arguments

    args = training_arguments(CPU_SMOLLM2, str(tmp_path / "out"), logging_steps=5)
    assert args.learning_rate == CPU_SMOLLM2.learning_rate
    assert args.per_device_train_batch_size == CPU_SMOLLM2.per_device_train_batch_size
    assert args.gradient_accumulation_steps == CPU_SMOLLM2.gradient_accumulation_steps
    assert args.max_steps == CPU_SMOLLM2.max_steps
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "cosine"
    assert args.warmup_steps == CPU_SMOLLM2.warmup_ratio
    assert args.get_warmup_steps(100) == 10  # a float below 1 is a ratio
    assert getattr(args.optim, "value", args.optim) == "adamw_torch_fused"
    assert args.seed == CPU_SMOLLM2.seed and args.data_seed is None  # the data order follows seed (as in the walkthrough)
    assert args.use_cpu is True
    assert args.fp16 is False
    assert args.bf16 is cpu_computes_bf16()  # bf16 autocast where the CPU computes bf16 in hardware
    assert training_arguments(CPU_SMOLLM2.replace(cpu_bf16=False), str(tmp_path / "out")).bf16 is False
    assert args.logging_steps == 5  # overrides win
    assert args.report_to in ([], "none", ["none"])  # no wandb / tensorboard
    assert args.save_strategy == "no" or getattr(args.save_strategy, "value", None) == "no"


def test_build_trainer_two_steps_trains_both_groups(tiny_llama_factory, word_tokenizer, tmp_path):
    """A few seconds: two optimizer steps on a tiny model."""
    import torch
    from datasets import Dataset

    from helpers.training import build_trainer

    tokenizer = word_tokenizer
    profile = CPU_SMOLLM2.replace(
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        optim="adamw_torch",
        logging_steps=1,
    )
    model = add_lora(tiny_llama_factory(len(tokenizer), tied=False), profile)
    named = dict(model.named_parameters())
    embed_name = next(n for n in named if "embed_tokens.modules_to_save" in n)
    head_name = next(n for n in named if "lm_head.modules_to_save" in n)
    frozen_name = next(n for n in named if "embed_tokens.original_module" in n)
    lora_b_name = next(n for n in named if "lora_B" in n)
    before = {n: named[n].detach().clone() for n in (embed_name, head_name, frozen_name, lora_b_name)}

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tokenizer), (8, 16), generator=generator).tolist()
    dataset = Dataset.from_dict({"input_ids": ids})

    trainer = build_trainer(profile, model, tokenizer, dataset, output_dir=str(tmp_path / "run"))
    result = trainer.train()

    assert trainer.state.global_step == 2
    assert math.isfinite(result.training_loss)
    rows = describe_param_groups(trainer.optimizer, model)
    assert {r["group"]: r["lr"] for r in rows} == {
        ADAPTER_GROUP: profile.learning_rate,
        EMBEDDING_GROUP: profile.embedding_learning_rate,
    }
    lrs = {g["name"]: g["initial_lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {ADAPTER_GROUP: 5e-4, EMBEDDING_GROUP: 5e-5}
    assert next(r for r in rows if r["group"] == EMBEDDING_GROUP)["modules"] == ["embed_tokens", "lm_head"]

    after = dict(model.named_parameters())
    assert not torch.equal(before[embed_name], after[embed_name].detach()), "embed_tokens did not train"
    assert not torch.equal(before[head_name], after[head_name].detach()), "lm_head did not train"
    assert not torch.equal(before[lora_b_name], after[lora_b_name].detach()), "LoRA adapters did not train"
    assert torch.equal(before[frozen_name], after[frozen_name].detach()), "the frozen base embedding changed"
    assert not any(
        p.name.startswith("checkpoint") for p in (tmp_path / "run").glob("*")
    )  # save_strategy="no"


def test_build_trainer_keeps_a_given_optimizer(tiny_llama_factory, word_tokenizer, tmp_path):
    import torch
    from datasets import Dataset

    from helpers.training import build_trainer

    profile = CPU_SMOLLM2.replace(max_steps=1, per_device_train_batch_size=1, gradient_accumulation_steps=1)
    model = add_lora(tiny_llama_factory(len(word_tokenizer)), profile)
    dataset = Dataset.from_dict({"input_ids": [[3, 4, 5, 6]] * 2})
    trainer = build_trainer(profile, model, word_tokenizer, dataset, output_dir=str(tmp_path / "run"))
    custom = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    trainer.optimizer = custom
    assert trainer.create_optimizer() is custom


def test_find_target_modules_reads_gpt2_names(torch_one_thread):
    from transformers import GPT2Config, GPT2LMHeadModel

    from helpers.training import find_target_modules

    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=16))
    assert find_target_modules(model) == (["c_attn", "c_proj", "c_fc"], ["wte", "lm_head"])


def test_find_target_modules_without_blocks_says_what_to_do(torch_one_thread):
    import torch

    from helpers.training import TargetModulesNotFound, find_target_modules

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.proj = torch.nn.Linear(4, 10)

        def get_input_embeddings(self):
            return self.embed

        def get_output_embeddings(self):
            return None

    with pytest.raises(TargetModulesNotFound, match="target_modules by hand"):
        find_target_modules(Flat())


def test_hand_made_target_list_is_kept(tiny_llama_factory):
    from helpers.training import target_modules_for

    model = tiny_llama_factory(50)
    attention_only = CPU_SMOLLM2.replace(target_modules=("q_proj", "v_proj", "embed_tokens"))
    assert target_modules_for(attention_only, model) == (["q_proj", "v_proj"], ["embed_tokens"])
    assert target_modules_for(CPU_SMOLLM2, model) == (list(LORA_PROJECTIONS), list(EMBEDDING_MODULES))


def test_unsloth_offload_dir_is_unsloths_own_for_one_process_and_per_rank_under_a_launcher():
    from helpers.training import UNSLOTH_OFFLOAD_DIR, unsloth_offload_dir

    assert unsloth_offload_dir({}) == UNSLOTH_OFFLOAD_DIR
    assert unsloth_offload_dir({"LOCAL_RANK": "0", "WORLD_SIZE": "1"}) == UNSLOTH_OFFLOAD_DIR
    ranks = [unsloth_offload_dir({"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2"}) for r in (0, 1)]
    assert ranks == [f"{UNSLOTH_OFFLOAD_DIR}/rank0", f"{UNSLOTH_OFFLOAD_DIR}/rank1"]
    assert unsloth_offload_dir({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}) == f"{UNSLOTH_OFFLOAD_DIR}/rank1"


def test_cast_lora_weights_stores_only_the_adapters_in_16_bits(peft_model):
    """Issue 17's LoRA-dtype lever: the adapters go to bf16, the embedding copies and the frozen
    base stay as they were, and the model still runs forward and backward."""
    import torch

    from helpers.training import cast_lora_weights

    before = {n: p.dtype for n, p in peft_model.named_parameters()}
    cast = cast_lora_weights(peft_model, "bfloat16")
    after = {n: p.dtype for n, p in peft_model.named_parameters()}
    lora = [n for n in after if "lora_A" in n or "lora_B" in n]
    assert cast == len(lora) > 0 and all(after[n] == torch.bfloat16 for n in lora)
    assert all(after[n] == before[n] for n in after if n not in lora)
    loss = peft_model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for n, p in peft_model.named_parameters() if n in lora)
    assert cast_lora_weights(peft_model, "bfloat16") == cast  # again: nothing left to change, same count


def test_cast_lora_weights_refuses_what_it_cannot_do(peft_model, tiny_llama_factory):
    from helpers.training import cast_lora_weights

    with pytest.raises(ValueError, match="choose one of float32, bfloat16, float16"):
        cast_lora_weights(peft_model, "int8")
    with pytest.raises(ValueError, match="no trainable LoRA matrices"):
        cast_lora_weights(tiny_llama_factory(VOCAB), "bfloat16")


def test_plain_branch_keeps_packed_documents_apart_unless_told(tiny_llama_factory, word_tokenizer, tmp_path):
    """Packed rows (the profiles' default) go through PackedRowsCollator: with isolate_documents a
    token of the second document sees only its own document; without it, the row is one causal
    sequence; padded rows keep transformers' causal-LM collator."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling

    from helpers.data import PackedRowsCollator
    from helpers.training import build_trainer

    eos = word_tokenizer.eos_token_id
    profile = CPU_SMOLLM2.replace(max_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=1)
    model = add_lora(tiny_llama_factory(len(word_tokenizer)), profile)
    rows = Dataset.from_dict({"input_ids": [[3, 4, eos, 5, 6, 7], [8, eos, 9, 10, 11, eos]]})

    isolated = build_trainer(profile, model, word_tokenizer, rows, output_dir=str(tmp_path / "a"))
    assert isinstance(isolated.data_collator, PackedRowsCollator) and isolated.data_collator.isolate_documents
    assert "only to itself" in isolated.cpt_attention_route
    batch = isolated.data_collator([rows[0], rows[1]])
    assert batch["attention_mask"].shape == (2, 1, 6, 6)
    assert not batch["attention_mask"][0, 0, 3, :3].any()  # the second story cannot see the first
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 2]
    assert isolated.train().training_loss > 0  # and the model trains on it

    across = build_trainer(profile.replace(isolate_documents=False), model, word_tokenizer, rows,
                           output_dir=str(tmp_path / "b"))
    assert not across.data_collator.isolate_documents and "across" in across.cpt_attention_route
    assert "attention_mask" not in across.data_collator([rows[0], rows[1]])

    padded = build_trainer(profile.replace(packing=False), model, word_tokenizer, rows, output_dir=str(tmp_path / "c"))
    assert isinstance(padded.data_collator, DataCollatorForLanguageModeling)


def test_packed_rows_of_different_lengths_say_how_to_train_them(word_tokenizer):
    from helpers.data import PackedRowsCollator

    collator = PackedRowsCollator(word_tokenizer.eos_token_id, isolate_documents=True)
    with pytest.raises(ValueError, match=r"packing=False"):
        collator([{"input_ids": [3, 4, 5]}, {"input_ids": [3, 4]}])


def test_use_torch_varlen_without_unsloth_says_why_nothing_changed(monkeypatch):
    """On the CPU (no unsloth imported) the swap does nothing, and the route says why."""
    from helpers.training import use_torch_varlen

    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    monkeypatch.delitem(sys.modules, "unsloth.utils.attention_dispatch", raising=False)
    route = use_torch_varlen()
    assert "not enabled" in route and "unsloth" in route


def test_cpu_computes_bf16_reads_false_when_torch_cannot_tell(monkeypatch):
    import torch

    from helpers.training import cpu_computes_bf16

    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert cpu_computes_bf16() is False


def test_after_bf16_training_the_model_computes_in_fp32_again(tiny_llama_factory, word_tokenizer, tmp_path):
    """accelerate wraps model.forward in autocast for mixed precision and leaves it wrapped; the
    trainer puts the model's own forward back, so a perplexity measured afterwards is fp32."""
    import torch
    from datasets import Dataset

    from helpers.training import build_trainer

    profile = CPU_SMOLLM2.replace(max_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=1)
    model = add_lora(tiny_llama_factory(len(word_tokenizer)), profile)
    ids = torch.randint(3, len(word_tokenizer), (4, 16), generator=torch.Generator().manual_seed(0)).tolist()
    trainer = build_trainer(profile, model, word_tokenizer, Dataset.from_dict({"input_ids": ids}),
                            output_dir=str(tmp_path / "run"), bf16=True)
    assert trainer.args.bf16 is True
    trainer.train()
    assert "_original_forward" not in model.__dict__
    captured = []
    layer = next(m for n, m in model.named_modules() if n.endswith("q_proj.base_layer"))
    handle = layer.register_forward_hook(lambda _, __, out: captured.append(out.dtype))
    with torch.no_grad():
        model(input_ids=torch.tensor(ids[:1]))
    handle.remove()
    assert captured == [torch.float32]
