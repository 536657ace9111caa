"""Raw-text data: loading TinyStories (hub or shipped sample) or your own .txt files, appending EOS,
tokenizing, and packing into fixed-length blocks.

Notebook ``02_data_prep`` walks through each step; later notebooks call these functions.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from .paths import project_root, relative
from .profiles import Profile


class DataError(ValueError):
    """The training data is missing or malformed; the message says what to fix."""


def local_sample_files(profile: Profile) -> dict[str, Path]:
    """Return ``{"train": path, "validation": path}`` of the shipped TinyStories sample."""
    folder = project_root() / profile.local_data_dir
    return {"train": folder / "train.jsonl", "validation": folder / "validation.jsonl"}


def validate_jsonl(path: Path | str, column: str = "text") -> int:
    """Check a JSON Lines file before ``datasets`` reads it; return the number of rows.

    Raises :class:`DataError` naming the problem: missing or empty file, bytes that are not UTF-8,
    a line that is not JSON (with its line number), or rows without the ``column`` field (listing
    the fields found).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Data file not found: {relative(path)}. Check the path, or use the shipped sample in data/.")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"Data file is empty: {relative(path)}. Put one JSON object per line, with a {column!r} field.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{relative(path)} is not valid UTF-8 (line {line}, byte {err.start}). "
            "Re-encode it, e.g. `iconv -f latin1 -t utf-8 in.jsonl > out.jsonl`."
        ) from None
    rows = 0
    # split on \n only: str.splitlines() would also break on U+2028/U+0085, which JSON allows inside strings
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{relative(path)} line {number} is not valid JSON: {err.msg}.") from None
        if not isinstance(record, dict) or column not in record:
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(
                f"{relative(path)} line {number} has no {column!r} field; fields found: {found}. "
                f"Rename the field holding the raw text to {column!r}."
            )
        rows += 1
    return rows


def load_raw_dataset(profile: Profile, split: str = "train", prefer_hub: bool = True):
    """Load the profile's raw-text dataset split as a ``datasets.Dataset`` with a ``text`` column.

    Tries the hub (``roneneldan/TinyStories``, the walkthrough's slice) when ``prefer_hub`` is true and
    the profile is not the embedded one, and falls back to the shipped sample with the same
    ``load_dataset`` code (``"json"`` builder). Returns ``(dataset, source)``, where ``source`` says
    which was used.
    """
    from datasets import load_dataset

    if profile.text_dir:
        return load_text_folder(profile.text_dir, profile.split_on_blank_lines), f"text folder {profile.text_dir}"
    if prefer_hub and not profile.is_local_model:
        hub_split = profile.dataset_split if split == "train" else "validation[:600]"
        try:
            return load_dataset(profile.dataset_name, split=hub_split), f"hub: {profile.dataset_name} {hub_split}"
        except Exception as err:  # no network, no cache: fall back to the sample, and say so
            print(f"Hub dataset unavailable ({type(err).__name__}); using the shipped sample instead.")
    path = local_sample_files(profile)[split]
    validate_jsonl(path)
    dataset = load_dataset("json", data_files=str(path), split="train")
    return dataset, f"local sample: {relative(path)}"


def load_text_folder(folder: Path | str, split_on_blank_lines: bool = False):
    """Load every ``*.txt`` file of a folder as raw-text documents; return a ``datasets.Dataset``.

    One document per file, or one per blank-line-separated paragraph when ``split_on_blank_lines``.
    Empty documents are dropped (and counted in the printed summary).
    """
    from datasets import Dataset

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Text folder not found: {folder}. Point the profile's text_dir at a folder of .txt files.")
    files = sorted(folder.rglob("*.txt"))
    if not files:
        raise DataError(f"No .txt files in {folder}.")
    documents, empty = [], 0
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{file.name} is not valid UTF-8; re-encode it (e.g. with iconv).") from None
        parts = re.split(r"\n\s*\n", text) if split_on_blank_lines else [text]
        for part in parts:
            part = part.strip()
            if part:
                documents.append(part)
            else:
                empty += 1
    print(f"Loaded {len(documents)} documents from {len(files)} .txt files ({empty} empty skipped).")
    return Dataset.from_dict({"text": documents})


def append_eos(dataset, eos_token: str):
    """Return the dataset with ``eos_token`` appended to every ``text`` (empty rows are removed).

    Without an end-of-sequence marker, packed documents run into each other and the model never
    learns where a story ends, so generation rambles on past the end.
    """
    dataset = dataset.filter(lambda row: bool(row["text"] and row["text"].strip()))
    return dataset.map(lambda batch: {"text": [t + eos_token for t in batch["text"]]}, batched=True)


def tokenize(dataset, tokenizer):
    """Return the dataset tokenized (``input_ids``, ``attention_mask``), without truncation."""
    return dataset.map(
        lambda batch: tokenizer(batch["text"], add_special_tokens=False),
        batched=True,
        remove_columns=dataset.column_names,
        desc="Tokenizing",
    )


def pack_blocks(token_lists: list[list[int]], block_size: int) -> tuple[list[list[int]], int]:
    """Concatenate token lists and cut them into blocks of exactly ``block_size`` tokens.

    Returns ``(blocks, dropped)``: the blocks, and the number of tokens in the final partial block
    that was left out. Documents longer than ``block_size`` simply continue into the next block,
    so no story is ever dropped, only the tail of the whole stream.
    """
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    stream = [token for tokens in token_lists for token in tokens]
    full = len(stream) // block_size * block_size
    return [stream[i : i + block_size] for i in range(0, full, block_size)], len(stream) - full


def truncate_rows(token_lists: list[list[int]], max_length: int) -> tuple[list[list[int]], int]:
    """Cut each token list to ``max_length`` (the walkthrough's padded setting).

    Returns ``(rows, truncated)``, where ``truncated`` counts the rows that lost tokens.
    """
    rows = [tokens[:max_length] for tokens in token_lists]
    return rows, sum(len(tokens) > max_length for tokens in token_lists)


def build_train_dataset(dataset_with_eos, tokenizer, profile: Profile):
    """Tokenize and shape the training data as the profile asks (packed blocks, or one row per story).

    Returns ``(dataset, stats)``: a ``datasets.Dataset`` with ``input_ids`` and a dict of counts
    (documents, tokens, rows, tokens dropped or rows truncated), which the notebooks print.
    """
    from datasets import Dataset

    tokenized = tokenize(dataset_with_eos, tokenizer)
    token_lists = tokenized["input_ids"]
    lengths = [len(t) for t in token_lists]
    stats = {
        "documents": len(token_lists),
        "tokens": sum(lengths),
        "longer_than_max_seq_length": sum(n > profile.max_seq_length for n in lengths),
        "packing": profile.packing,
        "max_seq_length": profile.max_seq_length,
    }
    if profile.packing:
        rows, dropped = pack_blocks(token_lists, profile.max_seq_length)
        stats.update(rows=len(rows), tail_tokens_dropped=dropped)
    else:
        rows, truncated = truncate_rows(token_lists, profile.max_seq_length)
        stats.update(rows=len(rows), rows_truncated=truncated)
    return Dataset.from_dict({"input_ids": rows}), stats


def length_summary(lengths: list[int]) -> dict:
    """Return count, min, median, mean, p95 and max of a list of token counts."""
    if not lengths:
        raise DataError("No documents to summarise.")
    ordered = sorted(lengths)
    return {
        "count": len(ordered),
        "min": ordered[0],
        "median": statistics.median(ordered),
        "mean": round(statistics.fmean(ordered), 1),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }
