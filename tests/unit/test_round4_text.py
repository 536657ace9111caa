"""Issue 40, "No silently wrong result, round 4": raw text is text, and every file of a text folder is
accounted for. Each test reproduces one case that used to be silently wrong (the case is in its name;
``own`` marks the cases found while fixing); each fails on ebb1ba7."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from helpers.profiles import CPU_SMOLLM2

CHAT_LOG = ("user: hi<|im_end|>\nassistant: hello<|im_end|>\nuser: what is <|endoftext|>?<|im_end|>\n"
            "assistant: a token<|im_end|><|endoftext|>")
ARTICLE = ("Tokenizers mark the end of a turn with <|im_end|> and pad with <|endoftext|>; "
           "Mistral ends a text with </s>. Writing <|im_end|> in a text must not end it.")
V3_FILE = "mistral_instruct_tokenizer_240323.model.v3"


def _folder(tmp_path, files: dict[str, bytes | str]) -> Path:
    folder = tmp_path / "texts"
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
    return folder


def _mistral_tokenizer():
    """Mistral-7B-v0.3's v3 tokenizer, built from the ``tokenizer.model`` that ``make setup`` unpacks
    (``.venv/mistral-common-src``, never imported); skipped where it is missing."""
    from helpers.lab.export import llama_tokenizer_from_sentencepiece

    for base in (REPO_ROOT / ".venv", Path(sys.prefix)):
        candidate = base / "mistral-common-src" / "mistral_common" / "data" / V3_FILE
        if candidate.is_file():
            return llama_tokenizer_from_sentencepiece(candidate, add_bos_token=True)
    pytest.skip("mistral-common is not unpacked (make setup does it)")


def _rows_and_stats(documents: list[str], tokenizer, max_seq_length: int = 16, packing: bool = True):
    from datasets import Dataset

    from helpers.data import append_eos, build_train_dataset

    with_eos = append_eos(Dataset.from_dict({"text": documents}), tokenizer.eos_token)
    return build_train_dataset(with_eos, tokenizer, CPU_SMOLLM2.replace(max_seq_length=max_seq_length,
                                                                        packing=packing))


# --- case 1: literal special-token strings in raw text are trained as control tokens -------------


def test_case01_special_token_strings_in_a_text_folder_are_trained_as_text(tmp_path, tokenizer, capsys):
    """A CPT_TEXT_DIR file holding '<|im_end|>' and '<|endoftext|>' was tokenized with them as EOS and pad
    ids: 2 documents, but 13 EOS tokens in the rows, and the collator started a document at each."""
    from helpers.data import PackedRowsCollator, append_eos, build_train_dataset, load_text_folder, tokenize

    folder = _folder(tmp_path, {"chat.txt": CHAT_LOG, "article.txt": ARTICLE})
    documents = load_text_folder(folder)
    assert ("2 of 2 documents contain text written like a control token ('<|endoftext|>' in 2, '<|im_end|>' in 2, "
            "'</s>' in 1); trained as text, not as control tokens") in capsys.readouterr().out
    with_eos = append_eos(documents, tokenizer.eos_token)
    for ids in tokenize(with_eos, tokenizer)["input_ids"]:
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.eos_token_id not in ids[:-1] and tokenizer.pad_token_id not in ids
    profile = CPU_SMOLLM2.replace(max_seq_length=8, packing=True)
    rows, stats = build_train_dataset(with_eos, tokenizer, profile)
    eos_in_rows = sum(list(row).count(tokenizer.eos_token_id) for row in rows["input_ids"])
    assert stats["documents"] == 2 and eos_in_rows <= 2  # the tail dropped by packing may hold one
    assert stats["special_token_text"] == {"<|endoftext|>": 2, "<|im_end|>": 2}
    out = capsys.readouterr().out
    assert ("2 document(s) contain '<|endoftext|>' (this tokenizer's pad token) as text; 2 document(s) contain "
            "'<|im_end|>' (this tokenizer's EOS) as text: trained as text, not as control tokens") in out
    batch = PackedRowsCollator(tokenizer.eos_token_id, isolate_documents=True)([{"input_ids": r} for r in rows["input_ids"]])
    assert int((batch["labels"] == -100).sum()) <= 2  # a new document only after a real EOS
    # the text round-trips: the literal strings are in the decoded rows
    assert "<|im_end|>" in tokenizer.decode(tokenize(with_eos, tokenizer)["input_ids"][1])


def test_case01_mistral_tokenizer_keeps_a_literal_end_of_text_as_text(torch_one_thread):
    """The walkthrough's '</s>' in a document became Mistral's EOS id 2 (and '[INST]' its control token)."""
    from helpers.data import tokenize

    mistral = _mistral_tokenizer()
    from datasets import Dataset

    text = "She wrote </s> on the board, then [INST] too."
    ids = tokenize(Dataset.from_dict({"text": [text + mistral.eos_token]}), mistral)["input_ids"][0]
    assert ids.count(mistral.eos_token_id) == 1 and ids[-1] == mistral.eos_token_id
    assert 3 not in ids  # [INST]
    rows, stats = _rows_and_stats([text, "Once upon a time."], mistral, max_seq_length=8)
    assert stats["special_token_text"] == {"</s>": 1, "[INST]": 1}


def test_guard_documents_without_special_strings_tokenize_as_before(tokenizer):
    """The fix must not move a single token of ordinary text: the sample tokenizes exactly as
    tokenizer(text + EOS, add_special_tokens=False) did, and each story ends in one EOS."""
    from datasets import Dataset

    from helpers.data import append_eos, tokenize

    texts = [json.loads(line)["text"] for line in
             (REPO_ROOT / "data" / "tinystories-sample" / "validation.jsonl").read_text().splitlines()[:12]]
    texts.append("ends with spaces and a newline  \n")
    with_eos = append_eos(Dataset.from_dict({"text": texts}), tokenizer.eos_token)
    assert tokenize(with_eos, tokenizer)["input_ids"] == [
        tokenizer(t, add_special_tokens=False)["input_ids"] for t in with_eos["text"]]


def test_own_a_literal_pad_string_in_padded_rows_is_no_longer_masked_from_the_loss(tokenizer):
    """Own case (same class): with padded rows (CPT_PACKING=0) the collator masks the pad id out of the
    loss, so a document quoting '<|endoftext|>' silently lost those positions from training."""
    from transformers import DataCollatorForLanguageModeling

    rows, stats = _rows_and_stats(["The GPT-2 separator <|endoftext|> appears in scraped pages."], tokenizer,
                                  max_seq_length=64, packing=False)
    labels = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False)([{"input_ids": rows[0]["input_ids"]}])["labels"]
    assert int((labels == -100).sum()) == 0
    assert stats["special_token_text"] == {"<|endoftext|>": 1}


def test_own_a_long_document_cut_in_pieces_keeps_special_strings_as_text(tokenizer, monkeypatch):
    """Own case: a document longer than PIECE_CHARS is tokenized in pieces (issue 31, case 17); each piece
    must keep special-token strings as text too, and the document still ends in one EOS."""
    from datasets import Dataset

    from helpers import data

    monkeypatch.setattr(data, "PIECE_CHARS", 200)
    text = "\n".join(f"line {i} says <|im_end|> and goes on" for i in range(40))
    ids = data.tokenize(Dataset.from_dict({"text": [text + tokenizer.eos_token]}), tokenizer)["input_ids"][0]
    assert list(ids).count(tokenizer.eos_token_id) == 1 and ids[-1] == tokenizer.eos_token_id


# --- case 6: every file left out is named; a binary file named .txt is said to be one -----------


def test_case06_files_left_out_are_named_by_extension(tmp_path, capsys):
    """A folder with .md, .txt.gz and .TEXT files beside the .txt ones said 'Loaded 3 documents from 3
    .txt files' and nothing of the others, though the docstring promised every file left out is counted."""
    from helpers.data import load_text_folder

    folder = _folder(tmp_path, {"a.txt": "One.", "b.txt": "Two.", "sub/c.txt": "Three.", "notes.md": "# notes",
                                "readme.md": "x", "old.txt.gz": gzip.compress(b"Four."), "LOUD.TEXT": "FIVE."})
    assert load_text_folder(folder).num_rows == 3
    out = capsys.readouterr().out
    assert "Loaded 3 documents from 3 .txt files" in out
    assert ("Left out 4 file(s) that are not .txt: 2 .md (notes.md, readme.md), 1 .TEXT (LOUD.TEXT), 1 .txt.gz "
            "(old.txt.gz). Only files ending in .txt are read: rename the .md, .TEXT files to .txt if they are plain "
            "text you want trained on; decompress the .txt.gz files into .txt files") in out


@pytest.mark.parametrize(("content", "kind"), [
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "a PNG image"),
    (gzip.compress(b"Some text that was compressed."), "a gzip archive"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "a PDF document"),
    (b"PK\x03\x04\x14\x00\x06\x00", "a zip archive"),
], ids=["png", "gzip", "pdf", "zip"])
def test_case06_a_binary_file_named_txt_is_called_what_it_is(tmp_path, content, kind):
    """A PNG or gzip renamed .txt got 're-encode it (e.g. with iconv)', advice that fits no binary file."""
    from helpers.data import DataError, load_text_folder

    folder = _folder(tmp_path, {"good.txt": "Text.", "picture.txt": content})
    with pytest.raises(DataError, match=rf"picture.txt: this is not text \({kind}.*What to do:") as caught:
        load_text_folder(folder)
    assert "iconv" not in str(caught.value)


def test_own_a_folder_with_no_txt_names_what_it_holds(tmp_path):
    """Own case: a folder holding only .md files said 'No .txt files in texts' without a word about the
    three files it did find."""
    from helpers.data import DataError, load_text_folder

    folder = _folder(tmp_path, {"a.md": "A.", "b.md": "B.", "c.markdown": "C."})
    with pytest.raises(DataError, match=r"No .txt files in texts\. .*Left out 3 file\(s\) that are not \.txt: "
                                        r"2 \.md \(a\.md, b\.md\), 1 \.markdown \(c\.markdown\)\. Only files ending "
                                        r"in \.txt are read: rename the \.md, \.markdown files to \.txt"):
        load_text_folder(folder)


def test_own_a_latin1_file_is_told_the_encoding_and_the_line(tmp_path):
    """Own case: a Latin-1 (Windows) export got 'is not valid UTF-8; re-encode it (e.g. with iconv)', with
    neither the line nor the encoding to convert from."""
    from helpers.data import DataError, load_text_folder

    folder = _folder(tmp_path, {"menu.txt": "First line.\nCaf\u00e9 au lait.\n".encode("latin-1")})
    with pytest.raises(DataError, match=r"menu.txt is not valid UTF-8 \(line 2, byte 15: 0xe9\); it looks like "
                                        r"Latin-1 / Windows-1252 .*iconv -f WINDOWS-1252 -t UTF-8"):
        load_text_folder(folder)


def test_own_utf16_with_a_byte_order_mark_is_told_its_encoding(tmp_path):
    """Own case: a UTF-16 file with its byte-order mark (Notepad's 'Unicode') got the vague 're-encode it'."""
    from helpers.data import DataError, load_text_folder

    folder = _folder(tmp_path, {"notepad.txt": "\ufeffHello from Notepad.".encode("utf-16-le")})
    with pytest.raises(DataError, match=r"notepad.txt is UTF-16LE text \(it starts with a UTF-16 byte-order mark\)"
                                        r".*iconv -f UTF-16 -t UTF-8"):
        load_text_folder(folder)


def test_case01_the_unsloth_branch_trains_on_rows_when_documents_hold_special_strings(tokenizer, capsys):
    """unsloth tokenizes the text it is handed itself (no split_special_tokens): given documents holding
    '<|im_end|>' it gets None (train on the rows tokenized here, where the strings stay text) and a note;
    ordinary documents are handed over as before."""
    from datasets import Dataset

    from helpers.data import append_eos, text_for_unsloth

    plain = append_eos(Dataset.from_dict({"text": ["Once upon a time.", "The end."]}), tokenizer.eos_token)
    assert text_for_unsloth(plain, tokenizer) is plain
    chat = append_eos(Dataset.from_dict({"text": [CHAT_LOG, "The end."]}), tokenizer.eos_token)
    assert text_for_unsloth(chat, tokenizer) is None
    assert "unsloth would tokenize them as control tokens, so it trains on the packed rows" in capsys.readouterr().out
