"""Tests for "your own text": CPT_TEXT_DIR / CPT_SPLIT_ON_BLANK_LINES in profile selection, and the
shipped example folder tests/data/own_text run through helpers.data."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.profiles import (
    CPU_SMOLLM2,
    GPU_MISTRAL7B,
    PROFILE_ENV_VAR,
    SPLIT_ENV_VAR,
    TEXT_DIR_ENV_VAR,
    select_profile,
    with_own_text,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "own_text"


@pytest.fixture(autouse=True)
def no_own_text_in_environment(monkeypatch):
    monkeypatch.delenv(TEXT_DIR_ENV_VAR, raising=False)
    monkeypatch.delenv(SPLIT_ENV_VAR, raising=False)


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "my texts"
    path.mkdir()
    (path / "a.txt").write_text("First document.\n\nSecond paragraph.\n", encoding="utf-8")
    return path


# --- selection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("env", [{}, {TEXT_DIR_ENV_VAR: ""}, {TEXT_DIR_ENV_VAR: "   "}, {SPLIT_ENV_VAR: "1"}])
def test_without_a_folder_the_profile_is_returned_unchanged(env):
    profile, reason = select_profile(env=env, cuda=False)
    assert profile is CPU_SMOLLM2  # the very same object: nothing replaced
    assert profile.text_dir is None
    assert TEXT_DIR_ENV_VAR not in reason


def test_relative_folder_is_resolved_from_the_project_root(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(folder)  # the kernel's working directory (notebooks/) must not matter
    profile, reason = select_profile(env={TEXT_DIR_ENV_VAR: "my texts"}, cuda=False)
    assert Path(profile.text_dir) == folder.resolve()
    assert Path(profile.text_dir).is_absolute()
    assert profile.split_on_blank_lines is False
    assert reason.startswith("automatic: no CUDA device")
    assert f"{TEXT_DIR_ENV_VAR}=my texts" in reason and "one document per file" in reason


def test_only_the_text_fields_change(folder):
    profile, _ = select_profile(env={TEXT_DIR_ENV_VAR: str(folder)}, cuda=False)
    assert profile.replace(text_dir=None, split_on_blank_lines=False) == CPU_SMOLLM2
    assert profile.name == CPU_SMOLLM2.name  # same recipe, same profile-specific checks


def test_absolute_folder_and_explicit_profile(folder):
    profile, reason = select_profile(env={PROFILE_ENV_VAR: "gpu-mistral7b", TEXT_DIR_ENV_VAR: str(folder)}, cuda=False)
    assert profile.name == GPU_MISTRAL7B.name and profile.packing is GPU_MISTRAL7B.packing
    assert profile.text_dir == str(folder.resolve())
    assert reason.startswith(f"{PROFILE_ENV_VAR}=gpu-mistral7b is set")


def test_automatic_gpu_profile_gets_the_folder_too(folder):
    profile, _ = select_profile(env={TEXT_DIR_ENV_VAR: str(folder)}, cuda=True)
    assert profile.name == GPU_MISTRAL7B.name and profile.text_dir == str(folder.resolve())


@pytest.mark.parametrize("value, expected", [
    ("1", True), ("true", True), (" YES ", True), ("on", True),
    ("0", False), ("", False), ("false", False), ("No", False), ("off", False),
])
def test_split_on_blank_lines_values(folder, value, expected):
    profile, reason = select_profile(env={TEXT_DIR_ENV_VAR: str(folder), SPLIT_ENV_VAR: value}, cuda=False)
    assert profile.split_on_blank_lines is expected
    assert ("paragraph" in reason) is expected


def test_split_value_that_is_not_yes_or_no_is_rejected(folder):
    with pytest.raises(ValueError, match=SPLIT_ENV_VAR):
        select_profile(env={TEXT_DIR_ENV_VAR: str(folder), SPLIT_ENV_VAR: "maybe"}, cuda=False)


@pytest.mark.parametrize("make", ["missing", "file"])
def test_folder_that_does_not_exist_or_is_a_file_is_rejected(tmp_path, make):
    target = tmp_path / "texts.txt"
    if make == "file":
        target.write_text("not a folder", encoding="utf-8")
    with pytest.raises(FileNotFoundError) as info:
        select_profile(env={TEXT_DIR_ENV_VAR: str(target)}, cuda=False)
    assert TEXT_DIR_ENV_VAR in str(info.value) and "project root" in str(info.value)


def test_unknown_profile_is_still_reported_first(folder):
    with pytest.raises(KeyError):
        select_profile(env={PROFILE_ENV_VAR: "nope", TEXT_DIR_ENV_VAR: str(folder)}, cuda=False)


def test_select_profile_reads_the_process_environment(folder, monkeypatch):
    monkeypatch.setenv(TEXT_DIR_ENV_VAR, str(folder))
    monkeypatch.setenv(SPLIT_ENV_VAR, "1")
    profile, _ = select_profile(cuda=False)
    assert profile.text_dir == str(folder.resolve()) and profile.split_on_blank_lines


def test_with_own_text_keeps_the_given_reason(folder):
    profile, reason = with_own_text(CPU_SMOLLM2, "because", {TEXT_DIR_ENV_VAR: str(folder)})
    assert reason.startswith("because; training text:")
    assert with_own_text(CPU_SMOLLM2, "because", {}) == (CPU_SMOLLM2, "because")


def test_home_directory_is_expanded(folder, monkeypatch):
    monkeypatch.setenv("HOME", str(folder.parent))
    profile, _ = select_profile(env={TEXT_DIR_ENV_VAR: "~/my texts"}, cuda=False)
    assert profile.text_dir == str(folder.resolve())


# --- the shipped example folder -----------------------------------------------------------------


def test_example_folder_is_small_plain_utf8_text():
    files = sorted(EXAMPLE.glob("*.txt"))
    assert 2 <= len(files) <= 3
    for file in files:
        text = file.read_bytes().decode("utf-8")  # raises if not UTF-8
        assert 200 < len(text) < 3000
        assert "\n\n" in text, f"{file.name} should have paragraphs separated by blank lines"


@pytest.mark.parametrize("split, documents", [(False, 3), (True, 11)])
def test_example_folder_loads_through_the_profile(torch_one_thread, split, documents):
    from helpers.data import held_out_indices, load_raw_dataset

    profile, _ = select_profile(env={TEXT_DIR_ENV_VAR: str(EXAMPLE), SPLIT_ENV_VAR: "1" if split else ""}, cuda=False)
    dataset, source = load_raw_dataset(profile)
    validation, _ = load_raw_dataset(profile, split="validation")
    assert validation.num_rows == len(held_out_indices(documents)) >= 1
    assert dataset.num_rows + validation.num_rows == documents
    assert all(text.strip() == text and text for text in dataset["text"])
    assert "text folder" in source


@pytest.mark.parametrize("packing", [True, False])
def test_example_folder_counts_add_up(tokenizer, packing):
    from helpers.data import append_eos, build_train_dataset, load_raw_dataset

    profile, _ = select_profile(env={TEXT_DIR_ENV_VAR: str(EXAMPLE)}, cuda=False)
    profile = profile.replace(packing=packing, max_seq_length=128)
    dataset, _ = load_raw_dataset(profile)
    rows, stats = build_train_dataset(append_eos(dataset, tokenizer.eos_token), tokenizer, profile)
    stream = [token for row in rows["input_ids"] for token in row]
    assert stats["documents"] == 2  # 3 documents, one held out for validation
    if packing:
        assert all(len(row) == 128 for row in rows["input_ids"])
        assert stats["rows"] * 128 + stats["tail_tokens_dropped"] == stats["tokens"]
    else:
        assert stats["rows"] == 2 and stats["rows_truncated"] == 2  # each training file is longer than 128 tokens
        assert all(row[-1] != tokenizer.eos_token_id for row in rows["input_ids"])  # truncation cut the EOS
    assert stream.count(tokenizer.eos_token_id) <= 3


def test_example_folder_smaller_than_one_block_is_refused_with_the_minimum(tokenizer):
    """Packing a corpus smaller than one block gives 0 rows; it used to be saved as an empty training
    set (replacing a good one), and notebook 05 then failed with IndexError."""
    from helpers.data import DataError, append_eos, build_train_dataset, load_raw_dataset, tokenize

    profile, _ = select_profile(env={TEXT_DIR_ENV_VAR: str(EXAMPLE)}, cuda=False)
    profile = profile.replace(max_seq_length=2048)  # the GPU profile's block size
    dataset = append_eos(load_raw_dataset(profile)[0], tokenizer.eos_token)
    tokens = sum(len(ids) for ids in tokenize(dataset, tokenizer)["input_ids"])
    with pytest.raises(DataError, match=rf"{tokens} tokens .* fewer than one packed row of max_seq_length=2048.*"
                                        rf"lower max_seq_length to at most {tokens}"):
        build_train_dataset(dataset, tokenizer, profile)


def test_own_text_holds_out_every_tenth_document_for_validation(tmp_path):
    from helpers.data import held_out_indices, load_raw_dataset
    from helpers.profiles import CPU_SMOLLM2

    assert held_out_indices(1) == [] and held_out_indices(3) == [2] and held_out_indices(25) == [9, 19]
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(12):
        (folder / f"doc{i:02d}.txt").write_text(f"Document number {i}.", encoding="utf-8")
    profile = CPU_SMOLLM2.replace(text_dir=str(folder))
    train, _ = load_raw_dataset(profile, split="train")
    validation, source = load_raw_dataset(profile, split="validation")
    assert validation["text"] == ["Document number 9."]
    assert len(train) == 11 and "Document number 9." not in train["text"]
    assert "validation: 1 of 12" in source
