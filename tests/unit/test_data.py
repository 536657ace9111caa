"""Tests for helpers.data: JSONL validation, packing, truncation, EOS, .txt folders."""

from __future__ import annotations

import json

import pytest

from helpers.data import (
    DataError,
    append_eos,
    length_summary,
    load_text_folder,
    local_sample_files,
    pack_blocks,
    truncate_rows,
    validate_jsonl,
)
from helpers.profiles import CPU_SMOLLM2


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --- validate_jsonl ----------------------------------------------------------------------------


def test_validate_jsonl_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found") as info:
        validate_jsonl(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(info.value)
    assert str(tmp_path) not in str(info.value)  # printed relative to the project root


def test_validate_jsonl_directory_is_not_a_file(tmp_path):
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(DataError, match="not found"):
        validate_jsonl(tmp_path / "folder.jsonl")


@pytest.mark.parametrize("content", [b"", b"\n\n", b"   \n\t\n"])
def test_validate_jsonl_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match="empty"):
        validate_jsonl(path)


def test_validate_jsonl_malformed_line_names_the_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ['{"text": "one"}', '{"text": "two"}', '{"text": "three"'])
    with pytest.raises(DataError, match=r"line 3 is not valid JSON"):
        validate_jsonl(path)


def test_validate_jsonl_line_numbers_count_blank_lines(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ['{"text": "one"}', "", "", "not json"])
    with pytest.raises(DataError, match=r"line 4 "):
        validate_jsonl(path)


def test_validate_jsonl_missing_column_lists_fields_found(tmp_path):
    path = write_lines(tmp_path / "cols.jsonl", ['{"text": "ok"}', '{"story": "x", "id": 7}'])
    with pytest.raises(DataError) as info:
        validate_jsonl(path)
    message = str(info.value)
    assert "line 2" in message
    assert "'text'" in message
    assert "['id', 'story']" in message


def test_validate_jsonl_custom_column(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", ['{"story": "a"}', '{"story": "b"}'])
    assert validate_jsonl(path, column="story") == 2
    with pytest.raises(DataError, match="'story'"):
        validate_jsonl(write_lines(tmp_path / "d.jsonl", ['{"text": "a"}']), column="story")


@pytest.mark.parametrize("line, kind", [('["a list"]', "list"), ('"a string"', "str"), ("42", "int")])
def test_validate_jsonl_row_that_is_not_an_object(tmp_path, line, kind):
    path = write_lines(tmp_path / "rows.jsonl", [line])
    with pytest.raises(DataError, match=rf"line 1 has no 'text' field; fields found: {kind}"):
        validate_jsonl(path)


def test_validate_jsonl_non_utf8_names_line_and_byte(tmp_path):
    path = tmp_path / "latin1.jsonl"
    raw = b'{"text": "ok"}\n{"text": "caf\xe9"}\n'
    path.write_bytes(raw)
    with pytest.raises(DataError, match="not valid UTF-8") as info:
        validate_jsonl(path)
    assert "line 2" in str(info.value)
    bad_byte = raw.index(b"\xe9")
    assert f"byte {bad_byte}" in str(info.value)
    assert "iconv" in str(info.value)


def test_validate_jsonl_valid_file_returns_row_count(tmp_path):
    rows = [{"text": f"story {i}", "extra": i} for i in range(5)]
    path = write_lines(tmp_path / "ok.jsonl", [json.dumps(r) for r in rows])
    assert validate_jsonl(path) == 5


def test_validate_jsonl_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('\n{"text": "a"}\n\n   \n{"text": "b"}\n\n', encoding="utf-8")
    assert validate_jsonl(path) == 2


def test_validate_jsonl_accepts_windows_line_endings_and_no_final_newline(tmp_path):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b'{"text": "a"}\r\n{"text": "b"}')
    assert validate_jsonl(path) == 2


def test_validate_jsonl_accepts_unicode_text(tmp_path):
    path = write_lines(tmp_path / "u.jsonl", [json.dumps({"text": "Zoë 🚀 naïve"}, ensure_ascii=False)])
    assert validate_jsonl(path) == 1


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_validate_jsonl_accepts_unicode_line_separators_inside_strings(tmp_path, separator):
    line = json.dumps({"text": f"first{separator}second"}, ensure_ascii=False)
    assert separator in line  # json.dumps leaves it unescaped
    path = write_lines(tmp_path / "sep.jsonl", [line])
    assert validate_jsonl(path) == 1


def test_shipped_sample_is_valid():
    from conftest import REPO_ROOT

    folder = REPO_ROOT / CPU_SMOLLM2.local_data_dir
    if not folder.is_dir():
        pytest.skip("shipped sample missing")
    assert validate_jsonl(folder / "train.jsonl") > 0
    assert validate_jsonl(folder / "validation.jsonl") > 0


def test_local_sample_files_live_under_the_project_root(tmp_path):
    files = local_sample_files(CPU_SMOLLM2)
    assert set(files) == {"train", "validation"}
    assert files["train"] == tmp_path / "data" / "tinystories-sample" / "train.jsonl"
    assert files["validation"].name == "validation.jsonl"


# --- pack_blocks -------------------------------------------------------------------------------


def test_pack_blocks_exact_fit():
    blocks, dropped = pack_blocks([[1, 2, 3], [4, 5, 6, 7, 8], [9]], block_size=3)
    assert blocks == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert dropped == 0


def test_pack_blocks_drops_only_the_tail():
    blocks, dropped = pack_blocks([[1, 2], [3, 4, 5], [6, 7]], block_size=3)
    assert blocks == [[1, 2, 3], [4, 5, 6]]
    assert dropped == 1
    assert sum(map(len, blocks)) + dropped == 7


def test_pack_blocks_long_document_spans_blocks():
    long_doc = list(range(100, 111))  # 11 tokens, block size 4
    blocks, dropped = pack_blocks([[1], long_doc, [2, 3]], block_size=4)
    assert all(len(b) == 4 for b in blocks)
    flat = [t for b in blocks for t in b]
    assert flat == [1, *long_doc, 2, 3][: len(flat)]
    assert set(long_doc) <= set(flat)  # the long story is not dropped
    assert dropped == 14 - 12


def test_pack_blocks_everything_shorter_than_one_block():
    assert pack_blocks([[1, 2], [3]], block_size=8) == ([], 3)


def test_pack_blocks_empty_input():
    assert pack_blocks([], block_size=4) == ([], 0)
    assert pack_blocks([[], []], block_size=4) == ([], 0)


def test_pack_blocks_block_size_one():
    assert pack_blocks([[5, 6], [7]], block_size=1) == ([[5], [6], [7]], 0)


@pytest.mark.parametrize("block_size", [0, -1])
def test_pack_blocks_rejects_non_positive_block_size(block_size):
    with pytest.raises(ValueError, match="positive"):
        pack_blocks([[1, 2, 3]], block_size=block_size)


def test_pack_blocks_does_not_modify_input():
    lists = [[1, 2, 3], [4]]
    pack_blocks(lists, block_size=2)
    assert lists == [[1, 2, 3], [4]]


# --- truncate_rows -----------------------------------------------------------------------------


def test_truncate_rows_counts_truncated_rows():
    rows, truncated = truncate_rows([[1, 2, 3, 4], [1, 2], [1, 2, 3], []], max_length=3)
    assert rows == [[1, 2, 3], [1, 2], [1, 2, 3], []]
    assert truncated == 1  # a row of exactly max_length loses nothing


def test_truncate_rows_nothing_to_truncate():
    rows, truncated = truncate_rows([[1], [2, 3]], max_length=10)
    assert rows == [[1], [2, 3]]
    assert truncated == 0


def test_truncate_rows_keeps_row_count():
    lists = [[i] * (i + 1) for i in range(10)]
    rows, truncated = truncate_rows(lists, max_length=4)
    assert len(rows) == 10
    assert max(map(len, rows)) == 4
    assert truncated == 6


# --- length_summary ----------------------------------------------------------------------------


def test_length_summary_values():
    summary = length_summary([5, 1, 3, 2, 4])
    assert summary == {"count": 5, "min": 1, "median": 3, "mean": 3.0, "p95": 5, "max": 5}


def test_length_summary_even_count_median_and_rounded_mean():
    summary = length_summary([1, 2, 4, 10])
    assert summary["median"] == 3
    assert summary["mean"] == 4.2  # 4.25 rounded to one decimal (banker's rounding of the float)
    assert summary["max"] == 10


def test_length_summary_single_value():
    assert length_summary([7]) == {"count": 1, "min": 7, "median": 7, "mean": 7.0, "p95": 7, "max": 7}


def test_length_summary_p95_is_a_high_value_from_the_data():
    lengths = list(range(1, 101))
    summary = length_summary(lengths[::-1])  # input order does not matter
    assert summary["p95"] in lengths
    assert 95 <= summary["p95"] <= 96
    assert summary["min"] <= summary["median"] <= summary["p95"] <= summary["max"]


def test_length_summary_empty_raises():
    with pytest.raises(DataError, match="No documents"):
        length_summary([])


# --- append_eos --------------------------------------------------------------------------------


def test_append_eos_adds_eos_and_drops_empty_rows():
    from datasets import Dataset

    dataset = Dataset.from_dict({"text": ["One story.", "", "   \n\t", "Two", None, "Three\n"]})
    result = append_eos(dataset, "<|im_end|>")
    assert result["text"] == ["One story.<|im_end|>", "Two<|im_end|>", "Three\n<|im_end|>"]
    assert all(t.endswith("<|im_end|>") for t in result["text"])
    assert dataset.num_rows == 6  # the input is not modified


def test_append_eos_keeps_other_columns():
    from datasets import Dataset

    dataset = Dataset.from_dict({"text": ["a", "", "b"], "id": [1, 2, 3]})
    result = append_eos(dataset, "</s>")
    assert result["id"] == [1, 3]
    assert result["text"] == ["a</s>", "b</s>"]


def test_append_eos_all_rows_empty_gives_empty_dataset():
    from datasets import Dataset

    result = append_eos(Dataset.from_dict({"text": ["", " "]}), "</s>")
    assert result.num_rows == 0


# --- load_text_folder --------------------------------------------------------------------------


def test_load_text_folder_one_document_per_file(tmp_path, capsys):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "b.txt").write_text("Second file.\n\nStill second.", encoding="utf-8")
    (folder / "a.txt").write_text("  First file.  \n", encoding="utf-8")
    (folder / "notes.md").write_text("not a .txt file", encoding="utf-8")
    dataset = load_text_folder(folder)
    assert dataset.column_names == ["text"]
    assert dataset["text"] == ["First file.", "Second file.\n\nStill second."]  # sorted, stripped
    assert "Loaded 2 documents from 2 .txt files (0 empty skipped)" in capsys.readouterr().out


def test_load_text_folder_split_on_blank_lines(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("Para one\nline two.\n\nPara two.\n\n\nPara three.\n", encoding="utf-8")
    dataset = load_text_folder(folder, split_on_blank_lines=True)
    assert dataset["text"] == ["Para one\nline two.", "Para two.", "Para three."]


def test_load_text_folder_split_handles_windows_line_endings(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"One.\r\n\r\nTwo.\r\n")
    assert load_text_folder(folder, split_on_blank_lines=True)["text"] == ["One.", "Two."]


def test_load_text_folder_blank_line_with_spaces_separates_paragraphs(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("Para one.\n   \nPara two.\n", encoding="utf-8")
    assert load_text_folder(folder, split_on_blank_lines=True)["text"] == ["Para one.", "Para two."]


def test_load_text_folder_empty_files_are_counted_and_skipped(tmp_path, capsys):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("Real text.", encoding="utf-8")
    (folder / "b.txt").write_text("", encoding="utf-8")
    (folder / "c.txt").write_text(" \n\n  \n", encoding="utf-8")
    dataset = load_text_folder(folder)
    assert dataset["text"] == ["Real text."]
    assert "Loaded 1 documents from 3 .txt files (2 empty skipped)" in capsys.readouterr().out


def test_load_text_folder_reads_subfolders(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "top.txt").write_text("top", encoding="utf-8")
    (folder / "sub" / "deep.txt").write_text("deep", encoding="utf-8")
    assert sorted(load_text_folder(folder)["text"]) == ["deep", "top"]


def test_load_text_folder_missing_folder(tmp_path):
    with pytest.raises(DataError, match="Text folder not found"):
        load_text_folder(tmp_path / "missing")


def test_load_text_folder_path_is_a_file(tmp_path):
    file = tmp_path / "a.txt"
    file.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="Text folder not found"):
        load_text_folder(file)


def test_load_text_folder_without_txt_files(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "readme.md").write_text("# no txt here", encoding="utf-8")
    with pytest.raises(DataError, match=r"No \.txt files"):
        load_text_folder(folder)


def test_load_text_folder_non_utf8_file(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "good.txt").write_text("fine", encoding="utf-8")
    (folder / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.txt is not valid UTF-8"):
        load_text_folder(folder)


def test_load_raw_dataset_uses_text_dir(tmp_path):
    from helpers.data import load_raw_dataset

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "a.txt").write_text("A.\n\nB.", encoding="utf-8")
    profile = CPU_SMOLLM2.replace(text_dir=str(folder), split_on_blank_lines=True)
    dataset, source = load_raw_dataset(profile)
    assert dataset["text"] == ["A."]  # "B." is held out for validation
    assert load_raw_dataset(profile, split="validation")[0]["text"] == ["B."]
    assert source.startswith(f"text folder {folder}")


def test_load_raw_dataset_local_sample_without_hub(tmp_path):
    from helpers.data import load_raw_dataset

    sample = tmp_path / "data" / "tinystories-sample"
    sample.mkdir(parents=True)
    write_lines(sample / "train.jsonl", [json.dumps({"text": "Once."}), json.dumps({"text": "Twice."})])
    write_lines(sample / "validation.jsonl", [json.dumps({"text": "Held out."})])
    dataset, source = load_raw_dataset(CPU_SMOLLM2, split="validation", prefer_hub=False)
    assert dataset["text"] == ["Held out."]
    assert source == "local sample: data/tinystories-sample/validation.jsonl"


def test_load_raw_dataset_validates_the_local_sample(tmp_path):
    from helpers.data import load_raw_dataset

    sample = tmp_path / "data" / "tinystories-sample"
    sample.mkdir(parents=True)
    write_lines(sample / "train.jsonl", ['{"story": "wrong column"}'])
    with pytest.raises(DataError, match="fields found"):
        load_raw_dataset(CPU_SMOLLM2, prefer_hub=False)


# --- tokenize / build_train_dataset ------------------------------------------------------------

STORIES = [
    "once upon a time there was a little cat",  # 9 words
    "the dog liked to play",  # 5
    "a happy robot who loved stars in a galaxy far away",  # 11
]


def test_tokenize_adds_no_special_tokens(word_tokenizer):
    from datasets import Dataset

    from helpers.data import tokenize

    tokenized = tokenize(Dataset.from_dict({"text": STORIES, "id": [1, 2, 3]}), word_tokenizer)
    assert sorted(tokenized.column_names) == ["attention_mask", "input_ids"]  # text and id removed
    assert [len(ids) for ids in tokenized["input_ids"]] == [9, 5, 11]
    assert word_tokenizer.unk_token_id not in {t for ids in tokenized["input_ids"] for t in ids}


def test_build_train_dataset_packed(word_tokenizer):
    from datasets import Dataset

    from helpers.data import build_train_dataset

    profile = CPU_SMOLLM2.replace(packing=True, max_seq_length=8)  # the smallest block allowed
    dataset, stats = build_train_dataset(Dataset.from_dict({"text": STORIES}), word_tokenizer, profile)
    assert dataset.column_names == ["input_ids"]
    assert all(len(ids) == 8 for ids in dataset["input_ids"])
    assert stats == {
        "documents": 3,
        "tokens": 25,
        "longer_than_max_seq_length": 2,
        "packing": True,
        "max_seq_length": 8,
        "rows": 3,
        "tail_tokens_dropped": 1,
    }
    ids = [word_tokenizer(s, add_special_tokens=False)["input_ids"] for s in STORIES]
    assert [t for row in dataset["input_ids"] for t in row] == [t for doc in ids for t in doc][:24]


def test_build_train_dataset_one_row_per_story(word_tokenizer):
    from datasets import Dataset

    from helpers.data import build_train_dataset

    profile = CPU_SMOLLM2.replace(packing=False, max_seq_length=9)
    dataset, stats = build_train_dataset(Dataset.from_dict({"text": STORIES}), word_tokenizer, profile)
    assert [len(ids) for ids in dataset["input_ids"]] == [9, 5, 9]
    assert stats["rows"] == 3
    assert stats["rows_truncated"] == 1
    assert stats["longer_than_max_seq_length"] == 1
    assert "tail_tokens_dropped" not in stats


def test_build_train_dataset_after_append_eos_ends_stories_with_eos(word_tokenizer):
    from datasets import Dataset

    from helpers.data import build_train_dataset

    with_eos = append_eos(Dataset.from_dict({"text": [*STORIES, "  "]}), word_tokenizer.eos_token)
    profile = CPU_SMOLLM2.replace(packing=False, max_seq_length=64)
    dataset, stats = build_train_dataset(with_eos, word_tokenizer, profile)
    assert stats["documents"] == 3
    assert all(ids[-1] == word_tokenizer.eos_token_id for ids in dataset["input_ids"])


# --- issue 12: what the text loader used to get silently wrong -------------------------------------


def text_folder(tmp_path, files: dict):
    folder = tmp_path / "texts"
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


def test_hidden_files_and_folders_are_skipped_and_counted(tmp_path, capsys):
    """A .ipynb_checkpoints/ copy of a held-out document used to land in training."""
    folder = text_folder(tmp_path, {"a.txt": "Visible story.", ".ipynb_checkpoints/b-checkpoint.txt": "Held-out copy.",
                                    ".hidden.txt": "Hidden file."})
    dataset = load_text_folder(folder)
    assert dataset["text"] == ["Visible story."]
    assert "2 hidden .txt files skipped" in capsys.readouterr().out


def test_txt_in_any_case_is_read(tmp_path):
    """A.TXT and B.Txt used to be skipped without notice."""
    folder = text_folder(tmp_path, {"A.TXT": "Upper.", "B.Txt": "Mixed.", "c.txt": "Lower.", "d.md": "Not text."})
    assert load_text_folder(folder)["text"] == ["Upper.", "Mixed.", "Lower."]


def test_a_utf8_bom_is_stripped(tmp_path, capsys):
    """A UTF-8 BOM used to stay on every document and get trained."""
    folder = text_folder(tmp_path, {"a.txt": "\ufeffOnce upon a time.".encode(), "b.txt": "No mark."})
    assert load_text_folder(folder)["text"] == ["Once upon a time.", "No mark."]
    assert "byte-order mark removed from 1" in capsys.readouterr().out


def test_a_txt_that_is_not_a_file_is_named(tmp_path, capsys):
    """A directory named x.txt or a dangling link gave a raw IsADirectoryError / FileNotFoundError."""
    folder = text_folder(tmp_path, {"a.txt": "Real text.", "x.txt/inner.md": "inside a folder named x.txt"})
    (folder / "gone.txt").symlink_to(tmp_path / "does-not-exist.txt")
    assert load_text_folder(folder)["text"] == ["Real text."]
    out = capsys.readouterr().out
    assert "gone.txt (a link to nothing)" in out and "x.txt (a folder, not a file)" in out


@pytest.mark.parametrize("where", ["venv", "repo"])
def test_a_folder_inside_venv_or_holding_the_repo_is_refused_unless_told(tmp_path, monkeypatch, where):
    """CPT_TEXT_DIR=. used to train on 261 licence files of .venv."""
    if where == "venv":
        folder = text_folder(tmp_path, {".venv/lib/site-packages/pkg/LICENSE.txt": "MIT License"}) / ".venv" / "lib"
        expected = "inside a virtual environment"
    else:
        (tmp_path / "notes.txt").write_text("A note at the project root.", encoding="utf-8")
        folder = tmp_path  # the project root (CPT_ROOT) itself
        expected = "contains the project itself"
    with pytest.raises(DataError, match=rf"{expected}.*CPT_ALLOW_ANY_TEXT_DIR=1"):
        load_text_folder(folder)
    monkeypatch.setenv("CPT_ALLOW_ANY_TEXT_DIR", "1")
    assert len(load_text_folder(folder)) == 1


def test_validate_jsonl_accepts_a_utf8_bom(tmp_path):
    """A JSONL file with a BOM was refused with 'Unexpected UTF-8 BOM' (datasets itself reads it)."""
    path = tmp_path / "bom.jsonl"
    path.write_bytes("\ufeff".encode() + b'{"text": "a"}\n{"text": "b"}\n')
    assert validate_jsonl(path) == 2


# --- issue 12: settings that cannot train, refused before anything is written ----------------------


@pytest.mark.parametrize("change, expected", [
    (dict(max_seq_length=1), "max_seq_length=1: use at least 8"),
    (dict(max_steps=0), "max_steps=0: use at least 1, or -1"),
    (dict(per_device_train_batch_size=0), "per_device_train_batch_size=0: use at least 1"),
    (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps=0: use at least 1"),
])
def test_build_train_dataset_refuses_settings_that_cannot_train(word_tokenizer, change, expected):
    """scripts/train_cpt.py --max-seq-length 1 reported 'final loss 0.0' and saved an adapter;
    --max-steps 0 trained one step and exited 0. The script builds its rows here first."""
    from datasets import Dataset

    from helpers.data import build_train_dataset
    from helpers.errors import SettingsError

    with pytest.raises(SettingsError, match=expected):
        build_train_dataset(Dataset.from_dict({"text": STORIES}), word_tokenizer, CPU_SMOLLM2.replace(**change))


def test_empty_prompt_is_refused_with_what_to_do():
    from helpers.errors import SettingsError, check_prompt

    for prompt in ("", "   ", None):
        with pytest.raises(SettingsError, match="The prompt is empty"):
            check_prompt(prompt)
    assert check_prompt("Once") == "Once"


# --- issue 13: the GPU profile offline gets the walkthrough's 2,500 rows ---------------------------

from conftest import REPO_ROOT  # noqa: E402


def hub_unreachable(monkeypatch):
    """Make load_dataset fail for the hub dataset the way it does without network (ConnectionError)."""
    import datasets

    real = datasets.load_dataset

    def fake(path, *args, **kwargs):
        if path == "roneneldan/TinyStories":
            raise ConnectionError("Couldn't reach 'roneneldan/TinyStories' on the Hub (LocalEntryNotFoundError)")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", fake)


def test_gpu_profile_offline_cycles_the_sample_to_the_requested_rows(monkeypatch, capsys):
    from helpers.data import load_raw_dataset, requested_rows
    from helpers.profiles import GPU_MISTRAL7B

    hub_unreachable(monkeypatch)
    monkeypatch.setenv("CPT_ROOT", str(REPO_ROOT))  # the shipped sample (nothing is written)
    dataset, source = load_raw_dataset(GPU_MISTRAL7B, split="train")
    sample = [json.loads(line)["text"] for line in local_sample_files(GPU_MISTRAL7B)["train"].read_text().splitlines()]
    assert requested_rows(GPU_MISTRAL7B.dataset_split) == 2500
    assert len(dataset) == 2500 and dataset["text"][: len(sample)] == sample
    assert dataset[len(sample)]["text"] == sample[0]  # cycled in order
    assert f"{len(sample)} stories cycled to the 2500 rows of train[:2500]" in source
    out = capsys.readouterr().out
    assert "Hub dataset unavailable (ConnectionError)" in out and "NOTE: the hub is unreachable" in out
    batch = GPU_MISTRAL7B.padded_batch[0] * GPU_MISTRAL7B.padded_batch[1]  # CPT_PACKING=0: the walkthrough's
    assert -(-len(dataset) // batch) == 157  # the walkthrough's padded epoch at bs 2 x GA 8
    validation, _ = load_raw_dataset(GPU_MISTRAL7B, split="validation")
    assert len(validation) == 640  # held-out data is never repeated


def test_cpu_profile_uses_the_sample_as_it_is(monkeypatch):
    from helpers.data import load_raw_dataset

    hub_unreachable(monkeypatch)
    monkeypatch.setenv("CPT_ROOT", str(REPO_ROOT))  # the shipped sample (nothing is written)
    dataset, source = load_raw_dataset(CPU_SMOLLM2, split="train")
    assert len(dataset) == 188 and "cycled" not in source


def test_requested_rows_and_cycle_to():
    from datasets import Dataset

    from helpers.data import cycle_to, requested_rows

    assert requested_rows("train[:2500]") == 2500 and requested_rows("train") is None
    assert requested_rows("train[:10%]") is None
    assert cycle_to(Dataset.from_dict({"text": ["a", "b"]}), 5)["text"] == ["a", "b", "a", "b", "a"]
    with pytest.raises(DataError):
        cycle_to(Dataset.from_dict({"text": []}), 3)


def test_document_segments_count_documents_ending_at_eos():
    from helpers.data import document_segments

    assert document_segments([5, 6, 2, 7, 8, 2, 9], eos_token_id=2) == [0, 0, 0, 1, 1, 1, 2]
    assert document_segments([2, 2], eos_token_id=2) == [0, 1] and document_segments([], 2) == []


def test_packed_rows_collator_labels_and_positions():
    from helpers.data import PackedRowsCollator

    rows = [{"input_ids": [5, 6, 2, 7, 8, 2, 9]}, {"input_ids": [2, 3, 4, 5, 2, 6, 7]}]
    isolated = PackedRowsCollator(2, isolate_documents=True)(rows)
    across = PackedRowsCollator(2, isolate_documents=False)(rows)
    # the same targets either way: no story is trained to predict its opening from the one before
    assert isolated["labels"].tolist() == across["labels"].tolist() == [[5, 6, 2, -100, 8, 2, -100],
                                                                         [2, -100, 4, 5, 2, -100, 7]]
    assert set(across) == {"input_ids", "labels"}  # one causal sequence per row
    assert isolated["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 0], [0, 0, 1, 2, 3, 0, 1]]
    mask = isolated["attention_mask"]
    assert mask.shape == (2, 1, 7, 7) and mask.dtype.is_floating_point is False
    assert mask[0, 0, 4].tolist() == [False, False, False, True, True, False, False]  # its own story, causally


def test_packed_rows_collator_refuses_rows_of_different_lengths():
    from helpers.data import PackedRowsCollator

    with pytest.raises(ValueError, match="one length"):
        PackedRowsCollator(2, isolate_documents=True)([{"input_ids": [1, 2]}, {"input_ids": [1, 2, 3]}])


def test_isolated_documents_see_only_themselves(tiny_llama_factory):
    """With the collator's mask and positions, a story's logits inside a packed row are the logits
    of the story alone; without them the story sees the one before it."""
    import torch

    from helpers.data import PackedRowsCollator

    model = tiny_llama_factory(64).eval()
    first, second = [5, 9, 14, 2], [7, 11, 3, 30, 41]
    batch = PackedRowsCollator(2, isolate_documents=True)([{"input_ids": first + second}])
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([second])).logits[0]
        isolated = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                         attention_mask=batch["attention_mask"]).logits[0, len(first):]
        across = model(input_ids=batch["input_ids"]).logits[0, len(first):]
    assert torch.allclose(isolated, alone, atol=1e-5)
    assert not torch.allclose(across, alone, atol=1e-3)
