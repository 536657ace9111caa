"""Tests for helpers.errors and the checks in helpers.modeling: a model that cannot be fetched (gated,
unknown, no token, offline), max_seq_length beyond the trained context (RoPE scaling), and the
out-of-memory and disk-full explanations.

The hub cases make real ``from_pretrained`` calls: offline mode, a refused connection, and a fake hub
on 127.0.0.1 that answers the way huggingface.co does for gated, unknown and unauthorised models.
"""

from __future__ import annotations

import errno
import sys
import types
import warnings

import pytest

from helpers import errors
from helpers.errors import (
    DiskFullError,
    ModelUnavailableError,
    TrainingOutOfMemory,
    classify_model_error,
    explain_disk_full,
    explain_model_error,
    explain_oom,
    is_out_of_memory,
    out_of_memory_explained,
)
from helpers.modeling import ContextLengthError, ContextLengthWarning, check_context_length
from helpers.profiles import CPU_SMOLLM2, GPU_MISTRAL7B

OFFLINE_DEFAULT = "CPT_PROFILE=cpu-smollm2"


def hub_profile(name="someone/some-model"):
    """The CPU profile, but with a hub model instead of the embedded one."""
    return CPU_SMOLLM2.replace(name="cpu-hub-test", model_name=name)


def load(profile):
    from helpers.modeling import load_model_and_tokenizer

    return load_model_and_tokenizer(profile)


# --- a fake hub ---------------------------------------------------------------------------------


@pytest.fixture
def hub_at(monkeypatch, tmp_path, torch_one_thread):
    """``hub_at(endpoint)`` points huggingface_hub at ``endpoint``, online, with an empty cache and no token."""
    from huggingface_hub import constants

    def point(endpoint):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.setattr(errors, "_hub_token_present", lambda: False)

    return point


@pytest.fixture
def fake_hub(hub_at):
    """A local HTTP server answering every request with ``reply["status"]`` and ``reply["headers"]``."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    reply = {"status": 404, "headers": {}}

    class Handler(BaseHTTPRequestHandler):
        def answer(self):
            self.send_response(reply["status"])
            for key, value in reply["headers"].items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET = answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    hub_at(f"http://127.0.0.1:{server.server_port}")
    yield reply
    server.shutdown()
    server.server_close()


def assert_actionable(message, *needles):
    assert "Cannot load model" in message
    assert "What to do:" in message
    assert OFFLINE_DEFAULT in message
    for needle in needles:
        assert needle in message, f"{needle!r} missing from: {message}"


# --- real calls ---------------------------------------------------------------------------------


def test_unknown_model_in_offline_mode_says_offline(monkeypatch, torch_one_thread):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError) as info:
        load(hub_profile("nobody-cpt/no-such-model"))
    assert info.value.reason == "offline"
    assert_actionable(str(info.value), "'nobody-cpt/no-such-model'", "offline mode is on", "HF_HUB_OFFLINE")
    assert type(info.value.__cause__).__name__ == "OSError"  # transformers' error stays chained


def test_hub_unreachable_says_no_network(hub_at, monkeypatch):
    import socket
    import time

    with socket.socket() as probe:  # a port nothing listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hub_at(f"http://127.0.0.1:{port}")
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # skip huggingface_hub's retry back-off
    with pytest.raises(ModelUnavailableError) as info:
        load(hub_profile())
    assert info.value.reason == "no_network"
    assert_actionable(str(info.value), "could not be reached", "cache")


def test_gated_model_names_the_license_and_the_token(fake_hub):
    fake_hub.update(status=403, headers={"X-Error-Code": "GatedRepo", "X-Error-Message": "Access restricted"})
    with pytest.raises(ModelUnavailableError) as info:
        load(hub_profile("meta-llama/Some-Gated-Model"))
    assert info.value.reason == "gated"
    assert_actionable(str(info.value), "gated", "license", "https://huggingface.co/meta-llama/Some-Gated-Model",
                      "No Hugging Face token", "hf auth login", "HF_TOKEN")


def test_unknown_model_online_says_check_the_name(fake_hub):
    fake_hub.update(status=404, headers={"X-Error-Code": "RepoNotFound"})
    with pytest.raises(ModelUnavailableError) as info:
        load(hub_profile("someone/misspelt-model"))
    assert info.value.reason == "not_found"
    assert_actionable(str(info.value), "no public model of that name", "spelling", "private or gated")


def test_unauthorized_says_no_token(fake_hub):
    fake_hub.update(status=401, headers={})
    with pytest.raises(ModelUnavailableError) as info:
        load(hub_profile())
    assert info.value.reason == "unauthorized"
    assert_actionable(str(info.value), "401", "No Hugging Face token", "hf auth login")


def test_unsloth_branch_is_wrapped_too(fake_hub, monkeypatch):
    fake_hub.update(status=403, headers={"X-Error-Code": "GatedRepo"})
    from transformers import AutoConfig

    def unsloth_from_pretrained(model_name, **kwargs):  # unsloth starts by reading the config from the hub
        AutoConfig.from_pretrained(model_name)
        pytest.fail("not reached")

    fake_unsloth = types.ModuleType("unsloth")
    fake_unsloth.FastLanguageModel = types.SimpleNamespace(from_pretrained=unsloth_from_pretrained)
    monkeypatch.setitem(sys.modules, "unsloth", fake_unsloth)
    with pytest.raises(ModelUnavailableError, match="gated") as info:
        load(GPU_MISTRAL7B.replace(model_name="mistralai/Gated-7B"))
    assert OFFLINE_DEFAULT in str(info.value)


def test_unsloth_own_error_text_is_classified(tmp_path, tiny_llama_factory, monkeypatch):
    folder = tmp_path / "local-model"
    tiny_llama_factory(50).save_pretrained(folder)

    def refuse(**kwargs):
        raise RuntimeError("Unsloth: 401 Client Error: Unauthorized for url: https://huggingface.co/x/y")

    fake_unsloth = types.ModuleType("unsloth")
    fake_unsloth.FastLanguageModel = types.SimpleNamespace(from_pretrained=refuse)
    monkeypatch.setitem(sys.modules, "unsloth", fake_unsloth)
    monkeypatch.setattr(errors, "_hub_token_present", lambda: True)
    with pytest.raises(ModelUnavailableError) as info:
        load(GPU_MISTRAL7B.replace(model_name=str(folder), max_seq_length=128))
    assert info.value.reason == "unauthorized"
    assert "A Hugging Face token is configured" in str(info.value)


def test_a_broken_local_model_is_not_disguised_as_a_hub_problem(tmp_path, torch_one_thread):
    folder = tmp_path / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(Exception) as info:
        load(hub_profile(str(folder)))
    assert not isinstance(info.value, ModelUnavailableError)


# --- constructed exceptions ----------------------------------------------------------------------


def hub_error(cls_name, status, message="error"):
    import httpx
    from huggingface_hub import errors as hub_errors

    request = httpx.Request("GET", "https://huggingface.co/x/y/resolve/main/config.json")
    response = httpx.Response(status, request=request)
    return getattr(hub_errors, cls_name)(message, response=response)


def wrapped(inner, outer_message="We couldn't load the model"):
    """``inner`` re-raised as the plain OSError transformers raises."""
    try:
        try:
            raise inner
        except Exception as err:
            raise OSError(outer_message) from err
    except OSError as outer:
        return outer


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: hub_error("GatedRepoError", 403, "Cannot access gated repo"), "gated"),
        (lambda: hub_error("RepositoryNotFoundError", 404, "Repository Not Found"), "not_found"),
        (lambda: hub_error("RepositoryNotFoundError", 401, "Repository Not Found"), "not_found"),
        (lambda: hub_error("HfHubHTTPError", 401, "Client error '401 Unauthorized'"), "unauthorized"),
        (lambda: hub_error("HfHubHTTPError", 403, "Forbidden"), "forbidden"),
        (lambda: OSError("x is not a local folder and is not a valid model identifier listed on hf.co"), "not_found"),
        (lambda: ConnectionError("Connection refused"), "no_network"),
    ],
)
def test_classify_constructed_hub_errors(make, reason, torch_one_thread, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert classify_model_error(make()) == reason
    assert classify_model_error(wrapped(make())) == reason  # also when re-raised by transformers


def test_classify_local_entry_not_found_by_offline_mode(torch_one_thread, monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    err = wrapped(LocalEntryNotFoundError("Cannot find the requested files in the disk cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert classify_model_error(err) == "offline"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert classify_model_error(err) == "no_network"


@pytest.mark.parametrize("err", [ValueError("bad config"), OSError("Error no file named model.safetensors"),
                                 KeyError("llama4")])
def test_unrelated_errors_are_left_alone(err):
    assert classify_model_error(err) is None
    assert explain_model_error(err, "x/y") is None


def test_explain_with_a_token_that_lacks_access(torch_one_thread):
    explained = explain_model_error(hub_error("GatedRepoError", 403), "org/model", token_present=True)
    assert "A Hugging Face token is configured, so it lacks access" in str(explained)
    assert isinstance(explained, OSError)  # callers catching from_pretrained's OSError still catch it
    assert (explained.model_name, explained.reason) == ("org/model", "gated")


def test_explain_missing_local_folder():
    explained = explain_model_error(OSError("./my-model is not a valid model identifier"), "./my-model",
                                    token_present=False)
    assert "no local folder './my-model'" in str(explained)


def test_chain_loops_do_not_hang():
    a, b = OSError("a"), OSError("b")
    a.__context__, b.__context__ = b, a
    assert classify_model_error(a) is None


# --- max_seq_length beyond the trained context ----------------------------------------------------


def tiny_config(max_positions=64, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions, **extra)


def test_context_within_the_trained_length_is_silent(torch_one_thread):
    config = tiny_config(64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_context_length(config, 64) is None
        assert check_context_length(config, 16, apply=True) is None
    assert config.rope_parameters["rope_type"] == "default"


def test_context_beyond_trained_length_warns_and_applies_linear_rope(torch_one_thread):
    import torch
    from transformers import LlamaForCausalLM

    config = tiny_config(64)
    with pytest.warns(ContextLengthWarning) as record:
        result = check_context_length(config, 256, apply=True)
    message = str(record[0].message)
    for needle in ("max_seq_length=256", "max_position_embeddings=64", "RoPE", "Linear RoPE scaling",
                   "position interpolation", "256/64 = 4", "'rope_type': 'linear'", "Applied", "unsloth"):
        assert needle in message, needle
    assert result == {"trained_context": 64, "max_seq_length": 256, "factor": 4.0, "applied": True,
                      "rope_parameters": {"rope_theta": 10000.0, "rope_type": "linear", "factor": 4.0}}
    assert config.rope_parameters == {"rope_theta": 10000.0, "rope_type": "linear", "factor": 4.0}
    assert config.max_position_embeddings == 256
    scaled, plain = LlamaForCausalLM(config), LlamaForCausalLM(tiny_config(64))
    assert torch.allclose(scaled.model.rotary_emb.inv_freq, plain.model.rotary_emb.inv_freq / 4)


def test_context_factor_is_unsloths_ratio_and_not_applied_on_request(torch_one_thread):
    config = tiny_config(64)
    with pytest.warns(ContextLengthWarning, match="unsloth's loader applies this"):
        result = check_context_length(config, 100, apply=False)
    assert result["factor"] == 100 / 64 and result["applied"] is False
    assert config.rope_parameters["rope_type"] == "default" and config.max_position_embeddings == 64


def test_context_scaling_is_not_stacked_on_an_existing_one(torch_one_thread):
    config = tiny_config(64, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.warns(ContextLengthWarning, match="already has RoPE scaling"):
        result = check_context_length(config, 256, apply=True)
    assert result["applied"] is False
    assert config.rope_parameters["factor"] == 2.0


def test_context_beyond_learned_positions_is_an_error(torch_one_thread):
    from transformers import GPT2Config

    with pytest.raises(ContextLengthError, match="learned absolute position embeddings"):
        check_context_length(GPT2Config(n_positions=32), 64, apply=True)


def test_load_applies_rope_scaling_on_the_transformers_branch(tmp_path, tiny_llama_factory, word_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "short-context-model"
    config = LlamaConfig(**{**tiny_llama_factory(len(word_tokenizer)).config.to_dict(), "max_position_embeddings": 64})
    LlamaForCausalLM(config).save_pretrained(folder)
    word_tokenizer.save_pretrained(folder)
    with pytest.warns(ContextLengthWarning, match="Applied to the model's config"):
        model, _ = load(hub_profile(str(folder)).replace(max_seq_length=256))
    assert model.config.rope_parameters["rope_type"] == "linear"
    assert model.config.rope_parameters["factor"] == 4.0
    with torch.no_grad():
        model(torch.ones(1, 200, dtype=torch.long))  # longer than the trained 64 positions


def test_load_explains_rope_scaling_on_the_unsloth_branch(tmp_path, tiny_llama_factory, word_tokenizer, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "short-context-model"
    config = LlamaConfig(**{**tiny_llama_factory(len(word_tokenizer)).config.to_dict(), "max_position_embeddings": 64})
    LlamaForCausalLM(config).save_pretrained(folder)
    calls = []

    def unsloth_from_pretrained(**kwargs):  # unsloth scales RoPE itself; it gets the plain request
        calls.append(kwargs)
        return LlamaForCausalLM(config), word_tokenizer

    fake_unsloth = types.ModuleType("unsloth")
    fake_unsloth.FastLanguageModel = types.SimpleNamespace(from_pretrained=unsloth_from_pretrained)
    monkeypatch.setitem(sys.modules, "unsloth", fake_unsloth)
    with pytest.warns(ContextLengthWarning, match=r"256/64 = 4.*unsloth's loader applies this"):
        load(GPU_MISTRAL7B.replace(model_name=str(folder), max_seq_length=256))
    assert calls[0]["max_seq_length"] == 256


# --- out of memory, disk full: the messages -------------------------------------------------------


def test_explain_oom_lists_the_knobs_with_the_profile_values():
    message = explain_oom(GPU_MISTRAL7B)
    for needle in ("per_device_train_batch_size (now 2)", "effective batch of 2", "max_seq_length (now 2048)",
                   "use_gradient_checkpointing (now 'auto')", "embed_tokens and lm_head",
                   "this profile trains them", "load_in_4bit (now True)", "adamw_8bit", "resumes"):
        assert needle in message, needle
    assert "per_device_train_batch_size" in explain_oom()  # also without a profile


@pytest.mark.parametrize(
    "err, expected",
    [
        ("cuda_oom", True),
        (RuntimeError("CUDA error: out of memory"), True),
        (RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"), True),
        (RuntimeError("expected scalar type Half"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_is_out_of_memory(err, expected, torch_one_thread):
    if err == "cuda_oom":
        err = torch_one_thread.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert is_out_of_memory(err) is expected


def test_out_of_memory_explained_chains_the_original(torch_one_thread):
    original = torch_one_thread.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(TrainingOutOfMemory, match="batch_size") as info:
        with out_of_memory_explained(CPU_SMOLLM2):
            raise original
    assert info.value.__cause__ is original
    with pytest.raises(KeyError):  # anything else passes through
        with out_of_memory_explained():
            raise KeyError("x")


def test_explain_disk_full_names_folder_and_free_space(tmp_path):
    err = explain_disk_full(tmp_path / "outputs" / "05_adapter", "the adapter")
    assert isinstance(err, DiskFullError) and isinstance(err, OSError)
    assert err.errno == errno.ENOSPC
    message = str(err)
    assert "Disk full while saving the adapter to outputs/05_adapter" in message
    assert "GB free" in message
    assert "previous version" in message


# --- adapters that cannot load (issue 12) ------------------------------------------------------------


@pytest.fixture
def tiny_adapter(word_tokenizer, tiny_llama_factory, tmp_path):
    """A tiny LoRA + embedding-copies adapter saved with save_pretrained; returns its folder."""
    from helpers.profiles import CPU_SMOLLM2
    from helpers.training import add_lora

    model = add_lora(tiny_llama_factory(len(word_tokenizer)), CPU_SMOLLM2)
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    return folder


def load_with_peft(base, folder):
    from peft import PeftModel

    from helpers.errors import adapter_errors_explained

    with adapter_errors_explained(folder):
        return PeftModel.from_pretrained(base, str(folder))


def test_half_cut_adapter_file_is_named(tiny_adapter, word_tokenizer, tiny_llama_factory):
    """Used to be a raw SafetensorError."""
    from helpers.errors import AdapterError, check_adapter_folder

    weights = tiny_adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(AdapterError, match=r"cannot be read .* cut off or damaged.*05_training") as info:
        load_with_peft(tiny_llama_factory(len(word_tokenizer)), tiny_adapter)
    assert type(info.value.__cause__).__name__ == "SafetensorError"
    with pytest.raises(AdapterError, match=r"adapter_model.safetensors is damaged: .* cut off"):
        check_adapter_folder(tiny_adapter)


def test_deleted_adapter_weights_are_named(tiny_adapter, word_tokenizer, tiny_llama_factory):
    """Used to be HFValidationError: Repo id must be in the form..."""
    from helpers.errors import AdapterError, check_adapter_folder

    (tiny_adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match=r"holds no adapter weights \(adapter_model.safetensors is missing\)"):
        load_with_peft(tiny_llama_factory(len(word_tokenizer)), tiny_adapter)
    with pytest.raises(AdapterError, match=r"has no adapter weights"):
        check_adapter_folder(tiny_adapter)


def test_adapter_of_another_model_is_one_message_not_a_page_of_size_mismatches(tiny_adapter, word_tokenizer,
                                                                              tiny_llama_factory):
    """Used to be RuntimeError: Error(s) in loading state_dict, then one size-mismatch line per tensor."""
    from helpers.errors import AdapterError

    other = tiny_llama_factory(len(word_tokenizer) + 7)  # another vocabulary: the embedding copies differ
    with pytest.raises(AdapterError) as info:
        load_with_peft(other, tiny_adapter)
    message = str(info.value)
    assert "does not fit this model" in message and "tensor(s) have other shapes" in message
    assert message.count("\n") == 0 and "size mismatch" not in message


def test_adapter_of_another_rank_is_named(tiny_adapter):
    from helpers.errors import AdapterError, check_adapter_folder
    from helpers.profiles import CPU_SMOLLM2

    check_adapter_folder(tiny_adapter, CPU_SMOLLM2)
    with pytest.raises(AdapterError, match=r"LoRA rank r=16, but profile 'cpu-smollm2' uses r=64"):
        check_adapter_folder(tiny_adapter, CPU_SMOLLM2.replace(lora_r=64))


def test_other_loading_errors_pass_through(tmp_path):
    from helpers.errors import adapter_errors_explained

    with pytest.raises(KeyError):
        with adapter_errors_explained(tmp_path):
            raise KeyError("unrelated")


def test_empty_prompt_in_stream_generate_is_explained(word_tokenizer, tiny_llama_factory):
    """Used to be RuntimeError: cannot reshape tensor of 0 elements."""
    from helpers.errors import SettingsError
    from helpers.streaming import stream_generate

    with pytest.raises(SettingsError, match=r"The prompt is empty .* profile.prompt"):
        stream_generate(tiny_llama_factory(len(word_tokenizer)), word_tokenizer, "", max_new_tokens=2)


def test_load_trained_model_names_a_missing_adapter_file(tiny_adapter, word_tokenizer, tiny_llama_factory):
    """The loader the notebooks call explains a bad adapter the same way (no raw HFValidationError)."""
    from helpers.errors import AdapterError
    from helpers.modeling import load_trained_model
    from helpers.profiles import CPU_SMOLLM2

    (tiny_adapter / "adapter_model.safetensors").unlink()
    base = tiny_llama_factory(len(word_tokenizer))
    with pytest.raises(AdapterError, match="holds no adapter weights"):
        load_trained_model(CPU_SMOLLM2, tiny_adapter, base_model=base, tokenizer=word_tokenizer)
