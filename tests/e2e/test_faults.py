"""Bad input and faults, end to end: broken training data through ``load_raw_dataset`` /
``build_train_dataset``, interrupted and disk-full saves of the adapter and of checkpoints, CUDA out of
memory during training, and embeddings that silently did not train.
"""

from __future__ import annotations

import errno
import json

import pytest
from tiny_runs import PROFILE, interrupt_at, tiny_dataset, tiny_peft_model

from helpers.data import DataError, append_eos, build_train_dataset, load_raw_dataset
from helpers.errors import DiskFullError, TrainingOutOfMemory
from helpers.profiles import CPU_SMOLLM2

# --- training data ------------------------------------------------------------------------------

BAD_DATA = "data/bad-sample"


def sample_profile(tmp_path, train_bytes: bytes | None):
    """The CPU profile reading its local sample from ``data/bad-sample/train.jsonl`` under the test root."""
    folder = tmp_path / BAD_DATA
    folder.mkdir(parents=True)
    if train_bytes is not None:
        (folder / "train.jsonl").write_bytes(train_bytes)
    return CPU_SMOLLM2.replace(local_data_dir=BAD_DATA)


def lines(*rows) -> bytes:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows).encode("utf-8")


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, r"Data file not found: data/bad-sample/train\.jsonl"),
        (b"", r"Data file is empty: data/bad-sample/train\.jsonl"),
        (lines({"text": "one"}, {"text": "two"}, '{"text": "three'), r"line 3 is not valid JSON"),
        (lines({"text": "one"}, {"story": "two", "id": 2}), r"line 2 has no 'text' field; fields found: \['id', 'story'\]"),
        (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"not valid UTF-8 \(line 2, byte 28\).*iconv"),
        (lines({"text": "one"}, {"text": 42}), r"line 2: the 'text' field is a int, not a string"),
        (lines({"text": ""}, {"text": "  "}), r"No training text"),
    ],
    ids=["missing-file", "empty-file", "malformed-line", "no-text-column", "not-utf8", "text-not-a-string",
         "only-empty-rows"],
)
def test_bad_training_data_is_named_end_to_end(tmp_path, word_tokenizer, content, expected):
    profile = sample_profile(tmp_path, content)
    with pytest.raises(DataError, match=expected):
        dataset, _ = load_raw_dataset(profile, prefer_hub=False)
        build_train_dataset(append_eos(dataset, word_tokenizer.eos_token), word_tokenizer, profile)


def test_empty_rows_are_dropped_and_counted(tmp_path, word_tokenizer, capsys):
    profile = sample_profile(tmp_path, lines({"text": "the cat"}, {"text": ""}, {"text": None},
                                             {"text": " \n"}, {"text": "the dog"}))
    dataset, _ = load_raw_dataset(profile, prefer_hub=False)
    assert dataset.num_rows == 5
    with_eos = append_eos(dataset, word_tokenizer.eos_token)
    assert "Dropped 3 empty row(s) (empty, blank or null text) of 5." in capsys.readouterr().out
    _, stats = build_train_dataset(with_eos, word_tokenizer, profile.replace(packing=False))
    assert stats["documents"] == 2


def test_empty_documents_reaching_build_train_dataset_are_left_out_and_counted(word_tokenizer, capsys):
    from datasets import Dataset

    dataset = Dataset.from_dict({"text": ["the cat", "", "the dog"]})  # append_eos skipped
    train, stats = build_train_dataset(dataset, word_tokenizer, CPU_SMOLLM2.replace(packing=False))
    assert "Left out 1 empty document(s)" in capsys.readouterr().out
    assert stats["documents"] == stats["rows"] == 2
    assert all(len(row) > 0 for row in train["input_ids"])


LONG_STORY = "once upon a time there was a little cat and a big dog they liked to play in the sun"  # 20 words


def test_long_story_is_truncated_counted_and_reported(word_tokenizer, capsys):
    from datasets import Dataset

    profile = CPU_SMOLLM2.replace(packing=False, max_seq_length=8)
    dataset = Dataset.from_dict({"text": [LONG_STORY, "the cat"]})
    train, stats = build_train_dataset(dataset, word_tokenizer, profile)
    assert stats["rows"] == stats["documents"] == 2  # never dropped
    assert stats["longer_than_max_seq_length"] == stats["rows_truncated"] == 1
    assert stats["tokens_truncated"] == 20 - 8
    assert [len(row) for row in train["input_ids"]] == [8, 2]
    out = capsys.readouterr().out
    assert "1 of 2 stories are longer than max_seq_length=8 tokens and were truncated (12 tokens cut" in out


def test_long_story_is_chunked_by_packing_counted_and_reported(word_tokenizer, capsys):
    from datasets import Dataset

    profile = CPU_SMOLLM2.replace(packing=True, max_seq_length=8)
    dataset = Dataset.from_dict({"text": [LONG_STORY, "the cat"]})
    train, stats = build_train_dataset(dataset, word_tokenizer, profile)
    assert stats["longer_than_max_seq_length"] == 1
    assert stats["rows"] * 8 + stats["tail_tokens_dropped"] == stats["tokens"] == 22  # every token kept but the tail
    assert "packing continues each into the next block, so none is cut or dropped" in capsys.readouterr().out


# --- saving the adapter -------------------------------------------------------------------------


def adapter_weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_adapter(tokenizer, folder):
    """Load the adapter in ``folder`` onto a fresh copy of the same base model."""
    from conftest import build_tiny_llama
    from peft import PeftModel

    return PeftModel.from_pretrained(build_tiny_llama(len(tokenizer), tied=False, seed=0), str(folder))


def assert_same_weights(model, expected):
    import torch

    loaded = dict(model.named_parameters())
    for name, tensor in expected.items():
        assert torch.equal(loaded[name].detach(), tensor), name


def failing_save(model, exception, monkeypatch):
    """Make ``model.save_pretrained`` write part of an adapter, then fail with ``exception``."""

    def partial_save(folder, *args, **kwargs):
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}), encoding="utf-8")
        (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 100)  # a truncated weights file
        raise exception

    monkeypatch.setattr(model, "save_pretrained", partial_save)


@pytest.fixture
def saved_adapter(word_tokenizer, tmp_path):
    """A tiny adapter saved once to outputs/05_adapter; then its in-memory weights are changed (a later
    training step) so that a second save would write different weights."""
    import torch

    from helpers.checkpoints import save_adapter

    model = tiny_peft_model(word_tokenizer)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(0.01)
    target = save_adapter(model, word_tokenizer)
    saved = adapter_weights(model)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(1.0)
    return model, target, saved


def test_interrupted_adapter_save_keeps_the_previous_adapter(saved_adapter, word_tokenizer, monkeypatch):
    from helpers.checkpoints import save_adapter

    model, target, saved = saved_adapter
    assert target.name == "05_adapter"
    failing_save(model, KeyboardInterrupt(), monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(model, word_tokenizer)
    assert_same_weights(load_adapter(word_tokenizer, target), saved)  # the previous adapter, whole
    assert sorted(p.name for p in target.parent.iterdir() if p.name.startswith(".")) == []  # no temp folders


def test_interrupted_first_adapter_save_leaves_no_folder(word_tokenizer, tmp_path, monkeypatch):
    from helpers.checkpoints import save_adapter

    model = tiny_peft_model(word_tokenizer)
    failing_save(model, KeyboardInterrupt(), monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(model, word_tokenizer, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    assert list(tmp_path.glob(".adapter*")) == []


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.ENOSPC, "No space left on device"),
     RuntimeError("Error while serializing: IoError(No space left on device (os error 28))")],
    ids=["ENOSPC", "wrapped-by-safetensors"],
)
def test_disk_full_adapter_save_is_reported_and_the_previous_adapter_survives(saved_adapter, word_tokenizer,
                                                                              monkeypatch, failure):
    from helpers.checkpoints import save_adapter

    model, target, saved = saved_adapter
    failing_save(model, failure, monkeypatch)
    with pytest.raises(DiskFullError) as info:
        save_adapter(model, word_tokenizer)
    message = str(info.value)
    assert "Disk full while saving the adapter to outputs/05_adapter" in message
    assert "GB free" in message and "free some space" in message
    assert info.value.__cause__ is failure
    assert_same_weights(load_adapter(word_tokenizer, target), saved)


# --- checkpoints, out of memory -------------------------------------------------------------------


def resumable_trainer(tokenizer, output_dir, *callbacks):
    from helpers.checkpoints import build_resumable_trainer

    trainer = build_resumable_trainer(PROFILE, tiny_peft_model(tokenizer), tokenizer, tiny_dataset(tokenizer),
                                      output_dir=output_dir, save_steps=2, disable_tqdm=True)
    for callback in callbacks:
        trainer.add_callback(callback)
    return trainer


def test_disk_full_while_checkpointing_is_reported_and_the_run_resumes(word_tokenizer, tmp_path, monkeypatch):
    from helpers.checkpoints import train_resumable

    output_dir = tmp_path / "outputs" / "05_trainer"
    trainer = resumable_trainer(word_tokenizer, output_dir)
    real_save = trainer._save_optimizer_and_scheduler

    def save_until_full(folder):
        if folder.endswith("checkpoint-4"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(folder)

    monkeypatch.setattr(trainer, "_save_optimizer_and_scheduler", save_until_full)
    with pytest.raises(DiskFullError, match=r"Disk full while saving a checkpoint to outputs/05_trainer \(.* GB free"):
        train_resumable(trainer)
    # the half-written checkpoint-4 is removed (issue 31, case 11: it would only fill the full disk)
    assert not (output_dir / "checkpoint-4").exists()

    resumed = resumable_trainer(word_tokenizer, output_dir)  # space freed: run the cell again
    train_resumable(resumed)
    assert resumed.state.global_step == PROFILE.max_steps
    assert not (output_dir / "incomplete" / "checkpoint-4").exists()  # removed at the error, never set aside


@pytest.mark.parametrize(
    "error",
    ["torch.cuda.OutOfMemoryError", "RuntimeError"],
)
def test_cuda_out_of_memory_during_training_lists_the_knobs(word_tokenizer, tmp_path, monkeypatch, error):
    import torch

    from helpers.checkpoints import train_resumable

    trainer = resumable_trainer(word_tokenizer, tmp_path / "run")
    original = (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB.")
                if error != "RuntimeError" else RuntimeError("CUDA error: out of memory"))

    def training_step(*args, **kwargs):
        raise original

    monkeypatch.setattr(trainer, "training_step", training_step)
    with pytest.raises(TrainingOutOfMemory) as info:
        train_resumable(trainer, PROFILE)
    message = str(info.value)
    for knob in ("per_device_train_batch_size (now 2)", "max_seq_length (now 256)", "use_gradient_checkpointing",
                 "embed_tokens and lm_head", "target_modules"):
        assert knob in message, knob
    assert info.value.__cause__ is original


def test_other_training_errors_pass_through_unchanged(word_tokenizer, tmp_path, monkeypatch):
    from helpers.checkpoints import train_resumable

    trainer = resumable_trainer(word_tokenizer, tmp_path / "run")
    monkeypatch.setattr(trainer, "training_step", lambda *a, **k: (_ for _ in ()).throw(ValueError("shape mismatch")))
    with pytest.raises(ValueError, match="shape mismatch"):
        train_resumable(trainer)


def test_interrupted_training_message_is_a_keyboard_interrupt(word_tokenizer, tmp_path):
    from helpers.checkpoints import TrainingInterrupted, train_resumable

    trainer = resumable_trainer(word_tokenizer, tmp_path / "outputs" / "05_trainer", interrupt_at(3))
    with pytest.raises(KeyboardInterrupt) as info:
        train_resumable(trainer)
    assert isinstance(info.value, TrainingInterrupted)
    assert "outputs/05_trainer/checkpoint-2" in str(info.value)


# --- did the embeddings really train? -------------------------------------------------------------


def two_step_run(tokenizer, tmp_path, freeze=False, **profile_changes):
    from helpers.training import build_trainer, snapshot_embeddings

    profile = PROFILE.replace(max_steps=2, **profile_changes)
    model = tiny_peft_model(tokenizer, profile, freeze_embedding_copies=freeze)
    before = snapshot_embeddings(model)
    trainer = build_trainer(profile, model, tokenizer, tiny_dataset(tokenizer), output_dir=str(tmp_path / "run"),
                            disable_tqdm=True)
    trainer.train()
    return model, before, trainer


def test_assert_embeddings_trained_passes_on_a_real_run(word_tokenizer, tmp_path):
    from helpers.training import assert_embeddings_trained

    model, before, trainer = two_step_run(word_tokenizer, tmp_path)
    report = assert_embeddings_trained(model, before, trainer.optimizer, PROFILE.embedding_learning_rate)
    assert sorted(name.split(".modules_to_save")[0].rsplit(".", 1)[-1] for name in report) == ["embed_tokens", "lm_head"]
    assert all(r["lr"] == PROFILE.embedding_learning_rate and r["max_change"] > 0 for r in report.values())


def test_assert_embeddings_trained_catches_frozen_embeddings(word_tokenizer, tmp_path):
    from helpers.training import EmbeddingsNotTrained, assert_embeddings_trained

    model, before, trainer = two_step_run(word_tokenizer, tmp_path, freeze=True)  # unsloth #9326
    with pytest.raises(EmbeddingsNotTrained) as info:
        assert_embeddings_trained(model, before, trainer.optimizer, PROFILE.embedding_learning_rate)
    message = str(info.value)
    for needle in ("embed_tokens: frozen", "lm_head: frozen", "not in any optimizer group", "unchanged", "#9326"):
        assert needle in message, needle


def test_assert_embeddings_trained_catches_the_wrong_learning_rate(word_tokenizer, tmp_path):
    from helpers.training import EmbeddingsNotTrained, assert_embeddings_trained

    # the embedding learning rate silently ignored: the embeddings train at the adapters' rate (unsloth #4492)
    model, before, trainer = two_step_run(word_tokenizer, tmp_path, embedding_learning_rate=PROFILE.learning_rate)
    with pytest.raises(EmbeddingsNotTrained, match=r"embed_tokens: trained at lr 0\.005, not the embedding "
                                                   r"learning rate 0\.0005 \(cf\. unsloth #4492\)"):
        assert_embeddings_trained(model, before, trainer.optimizer, PROFILE.embedding_learning_rate)


def test_assert_embeddings_trained_catches_unchanged_and_untrained_modules(word_tokenizer):
    import torch

    from helpers.profiles import LORA_PROJECTIONS
    from helpers.training import (
        EmbeddingsNotTrained,
        assert_embeddings_trained,
        embedding_param_groups,
        snapshot_embeddings,
    )

    model = tiny_peft_model(word_tokenizer)
    optimizer = torch.optim.AdamW(embedding_param_groups(model, 5e-3, 5e-4, 0.0))
    with pytest.raises(EmbeddingsNotTrained, match="embed_tokens: unchanged after training"):
        assert_embeddings_trained(model, snapshot_embeddings(model), optimizer, 5e-4)  # no step was taken

    lora_only = tiny_peft_model(word_tokenizer, PROFILE.replace(target_modules=LORA_PROJECTIONS))
    optimizer = torch.optim.AdamW(embedding_param_groups(lora_only, 5e-3, 5e-4, 0.0))
    with pytest.raises(EmbeddingsNotTrained, match="frozen"):
        assert_embeddings_trained(lora_only, snapshot_embeddings(lora_only), optimizer, 5e-4)
