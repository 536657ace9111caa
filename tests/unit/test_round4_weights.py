"""Issue 40, "No silently wrong result, round 4": weights that are present but wrong. A model or adapter
file whose content is zero-filled (a copy that stopped and was padded with zeros: right size, right
header) is refused by name; LoRA B matrices, zero by design before training, are not. Each case test
fails on ebb1ba7 (``own`` marks the cases found while fixing)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import build_tiny_llama, load_train_script

from helpers.profiles import CPU_SMOLLM2


def _zero_fill(path: Path, start_share: float = 0.5) -> None:
    """Overwrite the file from ``start_share`` of its length to the end with zero bytes (same size)."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * start_share)
    data[start:] = bytes(len(data) - start)
    path.write_bytes(bytes(data))


def _own(value):
    from helpers.profiles import with_own_model

    return with_own_model(CPU_SMOLLM2, "test", {"CPT_MODEL": str(value)})[0]


def _model_folder(tmp_path, word_tokenizer, name="mine") -> Path:
    folder = tmp_path / name
    build_tiny_llama(len(word_tokenizer)).save_pretrained(folder)
    word_tokenizer.save_pretrained(folder)
    return folder


def _trained_adapter(word_tokenizer, folder: Path, trained: bool = True) -> Path:
    """A tiny LoRA + embedding-copies adapter saved with save_pretrained, as a user copies one (no
    files.sha256.json); ``trained``: its LoRA B matrices moved off their zero start, as after a step."""
    import torch
    from tiny_runs import tiny_peft_model

    model = tiny_peft_model(word_tokenizer)
    if trained:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
    model.save_pretrained(folder)
    return folder


# --- case 2: a model whose model.safetensors is zero-filled from the middle ----------------------


def test_case02_a_model_zero_filled_from_the_middle_is_refused_by_name(tmp_path, word_tokenizer, torch_one_thread):
    """A CPT_MODEL folder whose model.safetensors had its second half zero-filled loaded without a word
    (50.2% of the weights zero; it generated only EOS): its header and size are right."""
    from helpers.artifacts import model_identity
    from helpers.profiles import OwnModelError

    folder = _model_folder(tmp_path, word_tokenizer)
    profile = _own(folder)
    model_identity(profile)  # whole: fine
    _zero_fill(folder / "model.safetensors")
    profile = _own(folder)  # the structural checks still pass: header and size are right
    with pytest.raises(OwnModelError, match=r"CPT_MODEL='.*mine': its weights file model.safetensors is "
                                            r"zero-filled, not trained: \d+ of its \d+ tensors are entirely zero "
                                            r"\(e\.g\. model\.layers\..*\d+\.\d% of its weight bytes are zero-filled\. "
                                            r".*Copy or download the weights again"):
        model_identity(profile)


def test_case02_train_cpt_refuses_a_zero_filled_model_before_loading_it(tmp_path, word_tokenizer, monkeypatch,
                                                                        torch_one_thread):
    """The same folder given to scripts/train_cpt.py trained on it; now one line before any process starts."""
    folder = _model_folder(tmp_path, word_tokenizer)
    _zero_fill(folder / "model.safetensors")
    monkeypatch.setenv("CPT_MODEL", str(folder))
    script = load_train_script()
    with pytest.raises(SystemExit, match=r"^train_cpt.py: CPT_MODEL='.*mine': its weights file model.safetensors is "
                                         r"zero-filled"):
        script.main(["--tiny", "--output-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_case02_an_adapter_without_its_file_list_is_checked_by_content(tmp_path, word_tokenizer, capsys,
                                                                       torch_one_thread):
    """An adapter folder copied without files.sha256.json (adapter_model.safetensors and adapter_config.json
    only) loaded silently with half its weights zero."""
    from helpers.errors import AdapterError
    from helpers.modeling import load_trained_model

    folder = _trained_adapter(word_tokenizer, tmp_path / "copied_adapter")
    load_trained_model(CPU_SMOLLM2, folder, base_model=build_tiny_llama(len(word_tokenizer)), tokenizer=word_tokenizer)
    assert "has no files.sha256.json" in capsys.readouterr().out  # whole, but only its content could be checked
    _zero_fill(folder / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"The adapter in .*copied_adapter is damaged: adapter_model.safetensors: "
                                           r"\d+ of its \d+ tensors are entirely zero .* It has no files.sha256.json"):
        load_trained_model(CPU_SMOLLM2, folder, base_model=build_tiny_llama(len(word_tokenizer)),
                           tokenizer=word_tokenizer)


def test_case02_an_untrained_adapter_with_zero_lora_b_still_loads(tmp_path, word_tokenizer, torch_one_thread):
    """LoRA B matrices start at zero: an adapter saved before training is not damaged and must load."""
    from helpers.modeling import load_trained_model
    from helpers.support.files import zero_filled_tensors

    folder = _trained_adapter(word_tokenizer, tmp_path / "fresh", trained=False)
    found = zero_filled_tensors(folder / "adapter_model.safetensors")
    assert found["untrained_lora"] and not found["entirely_zero"]
    load_trained_model(CPU_SMOLLM2, folder, base_model=build_tiny_llama(len(word_tokenizer)), tokenizer=word_tokenizer)


def test_own_an_adapter_whose_embedding_copy_is_zero_is_refused(tmp_path, word_tokenizer, torch_one_thread):
    """Own case: an adapter whose trained lm_head copy (modules_to_save) came back all zeros, while its
    LoRA matrices are fine, loaded and generated only one token."""
    from safetensors.torch import load_file, save_file

    from helpers.errors import AdapterError, check_adapter_unchanged

    folder = _trained_adapter(word_tokenizer, tmp_path / "adapter")
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(weights)
    name = next(n for n in tensors if "lm_head" in n)
    tensors[name].zero_()
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(AdapterError, match=rf"1 of its \d+ tensors are entirely zero \(e\.g\. {name}"):
        check_adapter_unchanged(folder)


def test_own_a_zero_filled_shard_of_a_sharded_model_is_named(tmp_path, word_tokenizer, torch_one_thread):
    """Own case: a sharded CPT_MODEL whose second shard was zero-filled (a preallocated download that
    never got its data) passed every check: the index names it and its header is whole."""
    from helpers.artifacts import model_identity
    from helpers.profiles import OwnModelError

    folder = tmp_path / "sharded"
    build_tiny_llama(4000).save_pretrained(folder, max_shard_size="200KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (folder / "model.safetensors.index.json").is_file()
    _zero_fill(shards[1], start_share=0.05)
    with pytest.raises(OwnModelError, match=rf"its weights file {shards[1].name} is zero-filled"):
        model_identity(_own(folder))


def test_own_a_zero_filled_model_in_the_cache_is_built_again(tmp_path, word_tokenizer, capsys, torch_one_thread):
    """Own case: a converted model in outputs/cache whose weights were zero-filled after it was written (a
    copy of outputs/ padded by a sync tool) was used as it was, at every start."""
    from helpers.support.gguf import discard_damaged_cache

    target = tmp_path / "outputs" / "cache" / "gguf-mine-0123456789"
    build_tiny_llama(len(word_tokenizer)).save_pretrained(target)
    (target / "SOURCE.json").write_text(json.dumps({"converted_from": "mine.gguf"}))
    discard_damaged_cache(target)
    assert target.is_dir()  # whole: kept
    _zero_fill(target / "model.safetensors")
    discard_damaged_cache(target)
    assert not target.exists()
    assert "is damaged (model.safetensors: " in capsys.readouterr().out


def test_guard_a_real_model_with_zero_rows_at_the_end_of_its_vocabulary_is_not_refused(tmp_path, word_tokenizer,
                                                                                       torch_one_thread):
    """Guard: models whose unused vocabulary rows are zero (Llama 3's reserved tokens, padded vocabularies)
    are whole; a few zero rows at the end of an embedding are not a zero-filled file."""
    import torch

    from helpers.errors import model_weights_content_problem

    model = build_tiny_llama(len(word_tokenizer) + 8)
    with torch.no_grad():
        model.model.embed_tokens.weight[-8:] = 0
        model.lm_head.weight[-8:] = 0
    model.save_pretrained(tmp_path / "padded")
    assert model_weights_content_problem(tmp_path / "padded") is None
    shutil.rmtree(tmp_path / "padded")
