"""Tests for helpers.profiles: the walkthrough's settings and how a profile is chosen."""

from __future__ import annotations

import dataclasses

import pytest

from helpers import profiles
from helpers.profiles import (
    CPU_SMOLLM2,
    EMBEDDING_MODULES,
    GPU_MISTRAL7B,
    LORA_PROJECTIONS,
    PROFILE_ENV_VAR,
    PROFILES,
    Profile,
    select_profile,
)

# --- selection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cuda, expected", [(True, GPU_MISTRAL7B), (False, CPU_SMOLLM2)])
def test_select_profile_automatic(cuda, expected):
    profile, reason = select_profile(env={}, cuda=cuda)
    assert profile is expected
    assert reason.startswith("automatic")
    assert PROFILE_ENV_VAR in reason  # says how to choose another


@pytest.mark.parametrize("name", ["cpu-smollm2", "gpu-mistral7b"])
@pytest.mark.parametrize("cuda", [True, False])
def test_select_profile_env_wins_over_cuda(name, cuda):
    profile, reason = select_profile(env={PROFILE_ENV_VAR: name}, cuda=cuda)
    assert profile is PROFILES[name]
    assert reason == f"{PROFILE_ENV_VAR}={name} is set"


def test_select_profile_strips_whitespace():
    profile, _ = select_profile(env={PROFILE_ENV_VAR: "  cpu-smollm2\n"}, cuda=True)
    assert profile is CPU_SMOLLM2


@pytest.mark.parametrize("value", ["", "   "])
def test_select_profile_blank_env_means_automatic(value):
    profile, reason = select_profile(env={PROFILE_ENV_VAR: value}, cuda=False)
    assert profile is CPU_SMOLLM2
    assert reason.startswith("automatic")


def test_select_profile_unknown_name_lists_valid_names():
    with pytest.raises(KeyError) as info:
        select_profile(env={PROFILE_ENV_VAR: "gpu-llama70b"}, cuda=True)
    message = str(info.value)
    assert "gpu-llama70b" in message
    assert "cpu-smollm2, gpu-mistral7b" in message


def test_select_profile_reads_os_environ(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV_VAR, "gpu-mistral7b")
    assert select_profile(cuda=False)[0] is GPU_MISTRAL7B
    monkeypatch.delenv(PROFILE_ENV_VAR)
    assert select_profile(cuda=False)[0] is CPU_SMOLLM2


def test_select_profile_asks_torch_when_cuda_is_not_given(monkeypatch):
    monkeypatch.setattr(profiles, "cuda_available", lambda: True)
    assert select_profile(env={})[0] is GPU_MISTRAL7B
    monkeypatch.setattr(profiles, "cuda_available", lambda: False)
    assert select_profile(env={})[0] is CPU_SMOLLM2


def test_cuda_available_matches_torch():
    torch = pytest.importorskip("torch")
    assert profiles.cuda_available() is bool(torch.cuda.is_available())


def test_a_profile_added_to_the_registry_is_selectable(monkeypatch):
    custom = CPU_SMOLLM2.replace(name="cpu-custom", max_steps=3)
    monkeypatch.setitem(profiles.PROFILES, custom.name, custom)  # removed again after the test
    assert select_profile(env={PROFILE_ENV_VAR: "cpu-custom"}, cuda=False)[0] is custom
    with pytest.raises(KeyError, match="cpu-custom"):
        select_profile(env={PROFILE_ENV_VAR: "missing"}, cuda=False)


def test_registry_is_keyed_by_name():
    assert set(PROFILES) >= {"cpu-smollm2", "gpu-mistral7b"}
    assert all(name == p.name for name, p in PROFILES.items())


# --- Profile behaviour -------------------------------------------------------------------------


def test_replace_returns_a_changed_copy():
    changed = CPU_SMOLLM2.replace(max_steps=2, learning_rate=1e-3)
    assert changed is not CPU_SMOLLM2
    assert (changed.max_steps, changed.learning_rate) == (2, 1e-3)
    assert (CPU_SMOLLM2.max_steps, CPU_SMOLLM2.learning_rate) == (12, 5e-4)
    assert changed.replace(max_steps=12, learning_rate=5e-4) == CPU_SMOLLM2


def test_replace_unknown_field_raises():
    with pytest.raises(TypeError):
        CPU_SMOLLM2.replace(no_such_field=1)


def test_profiles_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CPU_SMOLLM2.learning_rate = 1.0


def test_extra_dict_is_not_shared_between_profiles():
    a = Profile(
        name="a",
        description="",
        backend="transformers",
        device="cpu",
        model_name="m",
        load_in_4bit=False,
        max_seq_length=8,
    )
    b = a.replace(name="b")
    assert a.extra == {} and b.extra == {}
    assert a.extra is not GPU_MISTRAL7B.extra


def test_as_dict_has_every_field():
    d = GPU_MISTRAL7B.as_dict()
    assert set(d) == {f.name for f in dataclasses.fields(Profile)}
    assert d["name"] == "gpu-mistral7b"
    assert d["target_modules"] == GPU_MISTRAL7B.target_modules


def test_properties():
    assert GPU_MISTRAL7B.uses_unsloth and not GPU_MISTRAL7B.is_embedded_model
    assert not CPU_SMOLLM2.uses_unsloth and CPU_SMOLLM2.is_embedded_model


# --- the recipes -------------------------------------------------------------------------------


def test_gpu_profile_matches_the_walkthrough():
    p = GPU_MISTRAL7B
    assert p.name == "gpu-mistral7b"
    assert (p.backend, p.device) == ("unsloth", "cuda")
    assert p.model_name == "unsloth/mistral-7b-v0.3"
    assert p.load_in_4bit is True
    assert p.max_seq_length == 2048
    assert p.dtype is None
    assert (p.dataset_name, p.dataset_split) == ("roneneldan/TinyStories", "train[:2500]")
    assert (p.lora_r, p.lora_alpha, p.use_rslora) == (128, 32, True)
    assert (p.lora_dropout, p.bias) == (0.0, "none")
    # the walkthrough's "unsloth"; "auto" keeps it on a small GPU and turns it off where activations fit
    assert p.use_gradient_checkpointing == "auto"
    assert p.target_modules == (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "embed_tokens",
        "lm_head",
    )
    assert p.learning_rate == 5e-5
    assert p.embedding_learning_rate == 5e-6
    # the walkthrough's tokens per optimizer step: 2 packed rows of 2,048 tokens (16 stories of ~266
    # tokens, padded, in the walkthrough); CPT_PACKING=0 gives its exact 2 x 8 padded stories
    assert (p.per_device_train_batch_size, p.gradient_accumulation_steps) == (2, 1)
    assert (p.packed_batch, p.padded_batch) == ((2, 1), (2, 8))
    assert p.packing is True and p.isolate_documents is True
    assert (p.num_train_epochs, p.max_steps) == (1.0, -1)
    assert p.lr_scheduler_type == "cosine"
    assert p.warmup_ratio == 0.1
    assert p.optim == "adamw_8bit"
    assert p.weight_decay == 0.0
    assert p.seed == 3407
    assert p.prompt == "Once upon a time, in a galaxy, far far away,"


def test_cpu_profile_keeps_the_recipe_shape():
    p = CPU_SMOLLM2
    assert p.name == "cpu-smollm2"
    assert (p.backend, p.device) == ("transformers", "cpu")
    assert p.load_in_4bit is False  # bitsandbytes 4-bit needs CUDA
    assert p.dtype == "float32"
    assert p.is_embedded_model
    # LoRA on every projection, embeddings trained in full
    assert set(LORA_PROJECTIONS) <= set(p.target_modules)
    assert {"embed_tokens", "lm_head"} <= set(p.target_modules)
    assert p.target_modules == GPU_MISTRAL7B.target_modules
    # the walkthrough's 10:1 ratio between the adapters' and the embeddings' learning rates
    assert p.embedding_learning_rate == pytest.approx(p.learning_rate / 10)
    assert p.use_rslora is True
    assert p.lr_scheduler_type == GPU_MISTRAL7B.lr_scheduler_type == "cosine"
    assert p.warmup_ratio == GPU_MISTRAL7B.warmup_ratio
    assert p.seed == GPU_MISTRAL7B.seed
    assert p.prompt == GPU_MISTRAL7B.prompt
    assert p.use_gradient_checkpointing is False
    assert p.optim == "adamw_torch_fused"  # 8-bit Adam needs bitsandbytes + CUDA
    assert p.max_steps > 0 and p.packing is True


def test_every_profile_is_consistent():
    for p in PROFILES.values():
        assert p.backend in {"unsloth", "transformers"}
        assert p.device in {"cuda", "cpu"}
        assert not (p.uses_unsloth and p.device != "cuda"), "unsloth needs a CUDA device"
        assert not (p.load_in_4bit and p.device != "cuda"), "4-bit loading needs CUDA"
        assert 0 < p.embedding_learning_rate < p.learning_rate
        assert 0 <= p.warmup_ratio < 1
        assert set(EMBEDDING_MODULES) <= set(p.target_modules)
        assert p.max_seq_length > 0 and p.lora_r > 0


# --- CPT_MODEL: your own model ------------------------------------------------------------------


EMPTY_SAFETENSORS = (2).to_bytes(8, "little") + b"{}"  # a whole safetensors file holding no tensors


def _weights_folder(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    (folder / "model.safetensors").write_bytes(EMPTY_SAFETENSORS)
    return folder


def test_own_model_hub_id_keeps_the_recipe():
    p, reason = profiles.select_profile(env={"CPT_MODEL": " Qwen/Qwen2.5-0.5B "}, cuda=False)
    assert (p.name, p.model_name, p.own_model) == ("cpu-smollm2", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B")
    assert "CPT_MODEL=Qwen/Qwen2.5-0.5B (hub id)" in reason
    assert not p.is_local_model and not p.is_default_model
    changed = ("model_name", "own_model", "description")
    same = {k: v for k, v in p.as_dict().items() if k not in changed}
    assert same == {k: v for k, v in CPU_SMOLLM2.as_dict().items() if k not in changed}
    assert p.description.startswith("The cpu-smollm2 recipe") and "embedded:smollm2" in p.description


def test_own_model_local_folder_is_resolved_from_the_project_root(isolated_root):
    folder = _weights_folder(isolated_root / "models" / "mine")
    p, reason = profiles.select_profile(env={"CPT_MODEL": "models/mine", "CPT_PROFILE": "cpu-smollm2"}, cuda=True)
    assert p.model_name == str(folder.resolve()) and p.is_local_path_model and p.is_local_model
    assert not p.is_gguf_model and p.model_label == "models/mine"  # printed without the absolute path
    assert reason.endswith("model: CPT_MODEL=models/mine (local folder)")


def test_own_model_gguf_file(isolated_root):
    (isolated_root / "m.Q8_0.gguf").write_bytes(b"GGUF")
    p, reason = profiles.select_profile(env={"CPT_MODEL": "m.Q8_0.gguf"}, cuda=False)
    assert p.is_gguf_model and p.model_label == "m.Q8_0.gguf" and "(GGUF file)" in reason


def test_own_model_combines_with_own_text(isolated_root):
    _weights_folder(isolated_root / "mine")
    (isolated_root / "texts").mkdir()
    p, reason = profiles.select_profile(env={"CPT_MODEL": "mine", "CPT_TEXT_DIR": "texts"}, cuda=False)
    assert p.text_dir and p.own_model == "mine" and "CPT_TEXT_DIR" in reason and "CPT_MODEL" in reason


@pytest.mark.parametrize("value", ["", "   "])
def test_blank_own_model_changes_nothing(value):
    assert profiles.select_profile(env={"CPT_MODEL": value}, cuda=False)[0] is CPU_SMOLLM2


@pytest.mark.parametrize("value", ["./missing", "missing.gguf", "/no/such/folder", "a/b/c"])
def test_own_model_missing_path_says_so(value):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        profiles.select_profile(env={"CPT_MODEL": value}, cuda=False)


def test_own_model_file_that_is_not_gguf(isolated_root):
    (isolated_root / "model.bin").write_bytes(b"")
    with pytest.raises(profiles.OwnModelError, match="not a .gguf file"):
        profiles.select_profile(env={"CPT_MODEL": "model.bin"}, cuda=False)


def test_own_model_folder_without_weights_says_what_to_copy(isolated_root):
    folder = isolated_root / "empty-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}", encoding="utf-8")
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")
    with pytest.raises(profiles.OwnModelError, match="no weights.*git lfs pull"):
        profiles.select_profile(env={"CPT_MODEL": "empty-model"}, cuda=False)


def test_own_model_folder_with_only_a_gguf_points_at_the_file(isolated_root):
    folder = isolated_root / "downloads"
    folder.mkdir()
    (folder / "model-q4_k_m.gguf").write_bytes(b"GGUF")
    with pytest.raises(profiles.OwnModelError, match="model-q4_k_m.gguf: point CPT_MODEL at that file"):
        profiles.select_profile(env={"CPT_MODEL": "downloads"}, cuda=False)


def test_sharded_weights_count_as_weights(isolated_root):
    folder = isolated_root / "sharded"
    folder.mkdir()
    (folder / "config.json").write_text("{}", encoding="utf-8")
    (folder / "model-00001-of-00002.safetensors").write_bytes(EMPTY_SAFETENSORS)
    profiles.check_model_folder(folder)  # no error


def test_first_cell_prints_the_own_model_like_the_profile(isolated_root, monkeypatch, capsys):
    from helpers.session import start

    _weights_folder(isolated_root / "models" / "mine")
    monkeypatch.setenv("CPT_MODEL", "models/mine")
    monkeypatch.setenv("CPT_PROFILE", "cpu-smollm2")
    profile = start("00_test")
    header = capsys.readouterr().out
    assert profile.own_model == "models/mine"
    assert "profile  : cpu-smollm2 (CPT_PROFILE=cpu-smollm2 is set; model: CPT_MODEL=models/mine (local folder))" in header
    assert "model    : models/mine (backend: transformers, 4-bit: False, replaces cpu-smollm2's model (CPT_MODEL))" in header
    assert str(isolated_root) not in header  # no absolute local path


def test_cpt_packing_overrides_the_profile_and_says_so():
    from helpers.profiles import select_profile

    profile, reason = select_profile({"CPT_PROFILE": "gpu-mistral7b", "CPT_PACKING": "0"}, cuda=True)
    assert profile.packing is False and "CPT_PACKING=0" in reason
    profile, reason = select_profile({"CPT_PROFILE": "cpu-smollm2", "CPT_PACKING": "0"}, cuda=False)
    assert profile.packing is False and "one padded document per row" in reason
    profile, reason = select_profile({"CPT_PROFILE": "cpu-smollm2", "CPT_PACKING": "1"}, cuda=False)
    assert profile.packing is True and "CPT_PACKING" not in reason  # already the profile's choice


def test_cpt_packing_refuses_a_value_that_is_not_yes_or_no():
    import pytest

    from helpers.profiles import select_profile

    with pytest.raises(ValueError, match="CPT_PACKING='maybe'"):
        select_profile({"CPT_PROFILE": "cpu-smollm2", "CPT_PACKING": "maybe"}, cuda=False)
