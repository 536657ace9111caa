"""Raw-text data: loading TinyStories (hub or shipped sample) or your own .txt files, appending EOS,
tokenizing, and packing into fixed-length blocks.

Notebook ``02_data_prep`` walks through each step; later notebooks call these functions.
"""

from __future__ import annotations

import json
import os
import re
import statistics
from pathlib import Path

from .errors import check_training_settings
from .profiles import Profile
from .support.paths import project_root, read_switch, relative

ANY_TEXT_DIR_ENV_VAR = "CPT_ALLOW_ANY_TEXT_DIR"  # 1: read a text folder inside .venv or holding the repo
BOM = "\ufeff"


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
    the fields found). A UTF-8 byte-order mark at the start (Windows editors write one) is accepted,
    as ``datasets`` accepts it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Data file not found: {relative(path)}. Check the path, or use the shipped sample in data/.")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"Data file is empty: {relative(path)}. Put one JSON object per line, with a {column!r} field.")
    try:
        text = raw.decode("utf-8").removeprefix(BOM)
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
        if record[column] is not None and not isinstance(record[column], str):
            raise DataError(
                f"{relative(path)} line {number}: the {column!r} field is a {type(record[column]).__name__}, "
                "not a string. Each row's raw text must be one JSON string."
            )
        rows += 1
    return rows


def load_raw_dataset(profile: Profile, split: str = "train", prefer_hub: bool = True):
    """Load the profile's raw-text dataset split as a ``datasets.Dataset`` with a ``text`` column.

    Tries the hub (``roneneldan/TinyStories``, the walkthrough's slice) when ``prefer_hub`` is true and
    the profile is not the embedded one, and falls back to the shipped sample with the same
    ``load_dataset`` code (``"json"`` builder). With ``profile.text_dir`` set ("your own text"), the
    documents of that folder are split deterministically: every tenth document (at least one) is
    held out as ``"validation"``, the rest is ``"train"``. Returns ``(dataset, source)``, where
    ``source`` says which was used.

    When a hub profile falls back to the sample and its split asks for more training rows than the
    sample holds (``train[:2500]`` vs 188), the sample is repeated up to that count
    (:func:`cycle_to`), so the run takes the walkthrough's number of steps, also with your own model
    (``CPT_MODEL``); this is printed and said in ``source``. Profiles that use the sample by design
    (``sample_by_design``: the CPU default and its GPU twins) get it as it is.
    """
    from datasets import load_dataset  # deferred: heavy

    if profile.text_dir:
        documents = load_text_folder(profile.text_dir, profile.split_on_blank_lines)
        held_out = held_out_indices(len(documents))
        keep = held_out if split == "validation" else [i for i in range(len(documents)) if i not in set(held_out)]
        if not keep:
            raise DataError(f"{profile.text_dir} has too few documents to hold one out for validation; add more text.")
        return documents.select(keep), f"text folder {profile.text_dir} ({split}: {len(keep)} of {len(documents)} documents)"
    if prefer_hub and not profile.is_local_model:
        hub_split = profile.dataset_split if split == "train" else "validation[:600]"
        try:
            return load_dataset(profile.dataset_name, split=hub_split), f"hub: {profile.dataset_name} {hub_split}"
        except Exception as err:  # no network, no cache: fall back to the sample, and say so
            print(f"Hub dataset unavailable ({type(err).__name__}); using the shipped sample instead.")
    path = local_sample_files(profile)[split]
    validate_jsonl(path)
    dataset = load_dataset("json", data_files=str(path), split="train")
    source = f"local sample: {relative(path)}"
    wanted = requested_rows(profile.dataset_split)
    if prefer_hub and not profile.sample_by_design and split == "train" and wanted and wanted > dataset.num_rows:
        sample_rows = dataset.num_rows
        dataset = cycle_to(dataset, wanted)
        note = (f"repeated {wanted / sample_rows:.1f}x: {sample_rows} stories cycled to the {wanted} rows of "
                f"{profile.dataset_split}")
        print(f"NOTE: the hub is unreachable, so the {sample_rows}-story sample stands in for "
              f"{profile.dataset_name} {profile.dataset_split}; it is {note}, so that the run takes the "
              "walkthrough's number of optimizer steps. The model sees each story several times: expect a lower "
              "training loss than on 2,500 different stories.")
        source += f" ({note})"
    return dataset, source


def requested_rows(split: str) -> int | None:
    """Return N for a split like ``"train[:N]"`` (None for a whole split or a percentage)."""
    match = re.fullmatch(r"\s*\w+\s*\[\s*:\s*(\d+)\s*\]\s*", split)
    return int(match.group(1)) if match else None


def cycle_to(dataset, rows: int):
    """Return ``dataset`` repeated in order (row 0, 1, ..., n-1, 0, 1, ...) up to exactly ``rows`` rows."""
    if dataset.num_rows == 0:
        raise DataError("Cannot repeat an empty dataset.")
    return dataset.select([i % dataset.num_rows for i in range(rows)])


def held_out_indices(count: int) -> list[int]:
    """Return the indices of the documents held out for validation: every tenth one (9, 19, ...),
    or the last one when there are fewer than ten, and none when there is only one."""
    if count < 2:
        return []
    return list(range(9, count, 10)) or [count - 1]


def _is_hidden(relative_path: Path) -> bool:
    return any(part.startswith(".") for part in relative_path.parts)


def check_text_folder_location(folder: Path | str, allow_any: bool | None = None) -> Path:
    """Return the resolved folder, or raise :class:`DataError` when it lies inside a virtual
    environment (``.venv``, ``site-packages``: licence files, not your text) or contains the project
    itself (``CPT_TEXT_DIR=.`` would train on everything in the repository, .venv included), unless
    ``allow_any`` (default: ``$CPT_ALLOW_ANY_TEXT_DIR`` is 1)."""
    folder = Path(folder).expanduser().resolve()
    if allow_any is None:
        allow_any = read_switch(ANY_TEXT_DIR_ENV_VAR, False)
    if allow_any:
        return folder
    root = project_root().resolve()
    told = f"If you really mean it, set {ANY_TEXT_DIR_ENV_VAR}=1."
    if any(part in (".venv", "venv", "site-packages", "node_modules") for part in folder.parts):
        raise DataError(f"The text folder {folder.name!r} lies inside a virtual environment or package folder: its "
                        f".txt files are licences and package metadata, not your text. Point it at your own folder "
                        f"of .txt files. {told}")
    if folder == root or root.is_relative_to(folder):
        raise DataError(f"The text folder {folder.name!r} contains the project itself, so its .txt files would "
                        "include the project's own files (and any .venv). Point it at a folder holding only your "
                        f"text, e.g. tests/data/own_text. {told}")
    return folder


def text_folder_files(folder: Path | str) -> tuple[list[tuple[str, Path]], dict[str, list[str]]]:
    """Return the ``.txt`` files a text folder contributes, and what was left out.

    Files: ``[(relative name, path)]``, sorted, every file whose name ends in ``.txt`` in any case
    (``A.TXT``, ``b.Txt``), in the folder and its subfolders. Left out (``{"hidden": [...],
    "not_files": [...], "folders": [...], "other": [...]}``): anything hidden or inside a hidden folder
    (``.ipynb_checkpoints/`` keeps copies of your documents, ``.git/``), ``.txt`` names that are not
    readable files (a folder named ``x.txt``, a link to nothing), each with the reason, the subfolders
    not read (:func:`skipped_folders`), and every other file that is not hidden (``notes.md``,
    ``a.txt.gz``, ``b.TEXT``): :func:`left_out_summary` names them by extension.
    """
    folder = Path(folder)
    files, hidden, not_files, other = [], [], [], []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.name.lower().endswith(".txt"):
            if not _is_hidden(rel) and (path.is_file() or (path.is_symlink() and not path.exists())):
                other.append(str(rel))
            continue
        if _is_hidden(rel):
            hidden.append(str(rel))
        elif path.is_file():
            files.append((str(rel), path))
        elif path.is_symlink() and not path.exists():
            not_files.append(f"{rel} (a link to nothing)")
        elif path.is_dir():
            not_files.append(f"{rel} (a folder, not a file)")
        else:
            not_files.append(f"{rel} (not a regular file)")
    return files, {"hidden": hidden, "not_files": not_files, "folders": skipped_folders(folder), "other": other}


COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip", ".7z", ".lz4")


def file_extension(name: str) -> str:
    """Return the extension a left-out file is counted under, as written: ``.md``, ``.TEXT``, and two
    parts for a compressed file (``.txt.gz``); ``(no extension)`` for a name without one."""
    suffixes = Path(name).suffixes
    if not suffixes:
        return "(no extension)"
    if suffixes[-1].lower() in COMPRESSED_SUFFIXES and len(suffixes) >= 2:
        return "".join(suffixes[-2:])
    return suffixes[-1]


_TEXT_LIKE = (".text", ".md", ".markdown", ".rst", ".csv", ".tsv", ".log", ".json", ".jsonl", ".html", ".xml", ".tex",
              ".org", ".asciidoc", ".adoc", ".srt", ".vtt", "(no extension)")


def _what_to_do(extensions: list[str]) -> str:
    """Return what to do with left-out files of these extensions, one clause per kind of file."""
    compressed = [e for e in extensions if e.lower().endswith(COMPRESSED_SUFFIXES)]
    textual = [e for e in extensions if e not in compressed and e.lower() in _TEXT_LIKE]
    other = [e for e in extensions if e not in compressed and e not in textual]
    clauses = []
    if textual:
        clauses.append(f"rename the {', '.join(textual)} files to .txt if they are plain text you want trained on")
    if compressed:
        clauses.append(f"decompress the {', '.join(compressed)} files into .txt files (e.g. gunzip -k FILE.txt.gz) if "
                       "they hold text")
    if other:
        clauses.append(f"convert the {', '.join(other)} files to plain .txt files if they hold text you want trained on")
    return "; ".join(clauses)


def left_out_summary(other: list[str], limit: int = 3) -> str | None:
    """Return one sentence naming every non-``.txt`` file of a text folder by extension, with up to
    ``limit`` names each and what to do (``Left out 3 files that are not .txt: 2 .md (a.md, b.md), 1
    .txt.gz (c.txt.gz) …``), or None when there is none."""
    if not other:
        return None
    groups: dict[str, list[str]] = {}
    for name in other:
        groups.setdefault(file_extension(name), []).append(name)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0].lower()))
    parts = []
    for extension, names in ordered:
        shown = ", ".join(names[:limit]) + (f", … {len(names) - limit} more" if len(names) > limit else "")
        parts.append(f"{len(names)} {extension} ({shown})")
    return (f"Left out {len(other)} file(s) that are not .txt: {', '.join(parts)}. Only files ending in .txt are "
            f"read: {_what_to_do([extension for extension, _ in ordered])}.")


def skipped_folders(folder: Path | str) -> list[str]:
    """Return the subfolders of ``folder`` whose files are not read, each with the reason: a linked
    folder (links are not followed: it could point back up, or outside) and a folder that cannot
    be listed (no permission). Hidden folders are counted as hidden, not here (issue 31, case 7)."""
    folder = Path(folder)
    found = []

    def unreadable(err: OSError) -> None:
        name = Path(err.filename).relative_to(folder) if err.filename else "?"
        if not _is_hidden(Path(str(name))):
            found.append(f"{name}/ (cannot be read: {err.strerror}; check its permissions)")

    for here, dirs, _ in os.walk(folder, onerror=unreadable):
        for name in sorted(dirs):
            sub = Path(here) / name
            rel = sub.relative_to(folder)
            if sub.is_symlink() and not _is_hidden(rel):
                found.append(f"{rel}/ (a link to a folder, not followed: copy the files in, or point "
                             "CPT_TEXT_DIR at the folder itself)")
    return sorted(found)


# control characters a text file may hold: tab, line feed, vertical tab, form feed, carriage return
_ALLOWED_CONTROLS = {"\t", "\n", "\x0b", "\x0c", "\r"}
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f]")


def text_problem(text: str) -> str | None:
    """Return why decoded ``text`` is not plain text to train on, or None.

    UTF-16 without a byte-order mark decodes as "valid" UTF-8 with a NUL after (or before) every
    ASCII letter (``H\\x00e\\x00l\\x00…``, issue 31, case 1); NUL and other control bytes (case 6)
    come from binary files renamed ``.txt`` or broken exports, and some tokenize to the pad token.
    """
    nuls = text.count("\x00")
    if nuls and nuls >= len(text) // 4:
        even = text[0::2].count("\x00")
        order = "UTF-16BE" if even > nuls / 2 else "UTF-16LE"
        return (f"looks like {order} text without a byte-order mark ({nuls} NUL characters in {len(text)}), "
                f"not UTF-8. Re-encode it: iconv -f {order} -t UTF-8 FILE > FILE.utf8.txt (and remove the original).")
    found = _CONTROLS.search(text)
    if found is not None:
        count = len(_CONTROLS.findall(text))
        line = text.count("\n", 0, found.start()) + 1
        return (f"holds {count} control character(s) that are not text (first: {found.group()!r} on line {line}): "
                "a binary file named .txt, or a broken export. Remove them (e.g. tr -d '\\000-\\010\\016-\\037' "
                "< FILE > FILE.clean.txt), or take the file out of the folder.")
    return None


# the first bytes of file formats that are not text, and what each is (a binary file renamed .txt)
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "a PNG image"), (b"\xff\xd8\xff", 0, "a JPEG image"), (b"GIF8", 0, "a GIF image"),
    (b"%PDF-", 0, "a PDF document"), (b"\x1f\x8b", 0, "a gzip archive"), (b"BZh", 0, "a bzip2 archive"),
    (b"\xfd7zXZ\x00", 0, "an xz archive"), (b"\x28\xb5\x2f\xfd", 0, "a zstd archive"),
    (b"7z\xbc\xaf\x27\x1c", 0, "a 7-Zip archive"), (b"PK\x03\x04", 0, "a zip archive (or a .docx / .odt / .epub, which are zip archives)"),
    (b"PK\x05\x06", 0, "an empty zip archive"), (b"\x7fELF", 0, "a program (ELF executable)"),
    (b"SQLite format 3\x00", 0, "an SQLite database"), (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", 0, "an old Microsoft Office document (.doc / .xls)"),
    (b"OggS", 0, "an Ogg audio file"), (b"ID3", 0, "an MP3 audio file"), (b"RIFF", 0, "a RIFF file (WAV audio or WebP image)"),
    (b"ftyp", 4, "an MP4 / MOV video or audio file"), (b"\x00\x00\x01\x00", 0, "an icon (.ico)"),
    (b"GGUF", 0, "a GGUF model file"), (b"\x93NUMPY", 0, "a numpy array (.npy)"),
)


def binary_kind(head: bytes) -> str | None:
    """Return what a file is when its first bytes are those of a known binary format (``a PNG image``,
    ``a gzip archive``, ``a PDF document`` ...), or None: such a file renamed ``.txt`` is not text."""
    for magic, offset, kind in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return kind
    return None


_DECOMPRESS = {"a gzip archive": "gunzip", "a bzip2 archive": "bunzip2", "an xz archive": "unxz",
               "a zstd archive": "unzstd"}


def _not_text_message(name: str, kind: str) -> str:
    if kind in _DECOMPRESS:
        todo = (f"if it holds text, decompress it into a .txt file ({_DECOMPRESS[kind]} -c FILE > FILE.txt) and take "
                "the archive out of the folder")
    elif "PDF" in kind or "Office" in kind or "docx" in kind:
        todo = "save its text as a plain .txt file (e.g. pdftotext FILE FILE.txt) and take this file out of the folder"
    else:
        todo = "take it out of the folder"
    return (f"{name}: this is not text ({kind}), only named .txt; training on its bytes would teach the model noise. "
            f"What to do: {todo}.")


def _undecodable_message(name: str, raw: bytes, err: UnicodeDecodeError) -> str:
    """Return what to tell a user whose ``.txt`` file is not UTF-8: where the first bad byte is, and
    the ``iconv`` command for the encoding it most likely is in."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        order = "UTF-16LE" if raw.startswith(b"\xff\xfe") else "UTF-16BE"
        return (f"{name} is {order} text (it starts with a UTF-16 byte-order mark), not UTF-8. Re-encode it: "
                f"iconv -f UTF-16 -t UTF-8 FILE > FILE.utf8.txt (and remove the original).")
    line = raw[: err.start].count(b"\n") + 1
    byte = raw[err.start : err.start + 1].hex()
    try:
        raw.decode("cp1252")
        guess, source = "Latin-1 / Windows-1252 text (a Windows or older export)", "WINDOWS-1252"
    except UnicodeDecodeError:
        guess, source = "text in another encoding", "<its encoding>"
    return (f"{name} is not valid UTF-8 (line {line}, byte {err.start}: 0x{byte}); it looks like {guess}. "
            f"Re-encode it: iconv -f {source} -t UTF-8 FILE > FILE.utf8.txt (and remove the original).")


# strings written like the control tokens of common tokenizers (<|im_end|>, </s>, [INST]): counted in
# the folder summary; the tokenization keeps them text (tokenize, split_special_tokens=True)
CONTROL_LIKE = re.compile(r"<\|[A-Za-z0-9_.:/-]{1,40}\|>|</?s>|<(?:unk|pad|eos|bos|mask|sep|cls)>|\[/?INST\]")


def control_like_counts(documents: list[str]) -> dict[str, int]:
    """Return ``{string: documents holding it}`` for the strings of :data:`CONTROL_LIKE` found in
    ``documents`` (text written like a tokenizer's control token), most frequent first."""
    counts: dict[str, int] = {}
    for document in documents:
        if "<" not in document and "[" not in document:
            continue
        for found in set(CONTROL_LIKE.findall(document)):
            counts[found] = counts.get(found, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def describe_control_like(documents: list[str]) -> str | None:
    """Return the folder summary's line about text written like control tokens (``2 of 3 documents
    contain text written like a control token ('<|im_end|>' in 2, '</s>' in 1); trained as text …``),
    or None when no document holds any."""
    counts = control_like_counts(documents)
    if not counts:
        return None
    holding = sum(1 for document in documents if CONTROL_LIKE.search(document))
    shown = ", ".join(f"{string!r} in {count}" for string, count in counts.items())
    return (f"{holding} of {len(documents)} documents contain text written like a control token ({shown}); "
            "trained as text, not as control tokens: only the EOS appended to each document ends one.")


def load_text_folder(folder: Path | str, split_on_blank_lines: bool = False, allow_any: bool | None = None):
    """Load every ``.txt`` file of a folder as raw-text documents; return a ``datasets.Dataset``.

    One document per file, or one per blank-line-separated paragraph when ``split_on_blank_lines``.
    Which files count: see :func:`text_folder_files` (any case of ``.txt``; hidden files and folders
    skipped). A UTF-8 byte-order mark at the start of a file is removed (it would be trained as a
    character). Empty documents are dropped. The printed summary counts every file left out and names
    the other files by extension (:func:`left_out_summary`), names the ``.txt`` names that are not
    files, and counts the documents holding text written like a control token (``<|im_end|>``,
    ``</s>``: trained as text, see :func:`tokenize`). A ``.txt`` that is a binary file (a PNG, a gzip
    archive: :func:`binary_kind`) or not UTF-8 raises :class:`DataError` saying what it is and what
    to do. Refuses a folder inside a virtual environment or holding the project (see
    :func:`check_text_folder_location`, ``allow_any``).
    """

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Text folder not found: {folder}. Point the profile's text_dir at a folder of .txt files.")
    check_text_folder_location(folder, allow_any)
    files, skipped = text_folder_files(folder)
    if not files:
        hidden = f" ({len(skipped['hidden'])} hidden .txt files skipped)" if skipped["hidden"] else ""
        folders = f" Folders not read: {', '.join(skipped['folders'])}." if skipped.get("folders") else ""
        other = f" {left_out_summary(skipped['other'])}" if skipped.get("other") else ""
        raise DataError(f"No .txt files in {folder.name}{hidden}. Put your text in files ending in .txt.{folders}{other}")
    documents, empty, boms = [], 0, 0
    for name, file in files:
        try:
            raw = file.read_bytes()
        except OSError as err:
            raise DataError(f"{name} cannot be read ({err.strerror}); check its permissions.") from None
        if (kind := binary_kind(raw[:16])) is not None:
            raise DataError(_not_text_message(name, kind))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(_undecodable_message(name, raw, err)) from None
        del raw
        if text.startswith(BOM):
            text, boms = text[1:], boms + 1
        if (problem := text_problem(text)) is not None:
            raise DataError(f"{name}: {problem}")
        parts = re.split(r"\n\s*\n", text) if split_on_blank_lines else [text]
        for part in parts:
            part = part.strip()
            if part:
                documents.append(part)
            else:
                empty += 1
    notes = [f"{empty} empty skipped"]
    if skipped["hidden"]:
        notes.append(f"{len(skipped['hidden'])} hidden .txt files skipped, e.g. {skipped['hidden'][0]}")
    if boms:
        notes.append(f"byte-order mark removed from {boms}")
    print(f"Loaded {len(documents)} documents from {len(files)} .txt files ({'; '.join(notes)}).")
    if skipped.get("other"):
        print(left_out_summary(skipped["other"]))
    if skipped["not_files"]:
        print(f"Skipped {len(skipped['not_files'])} .txt name(s) that are not files: {', '.join(skipped['not_files'])}.")
    if skipped.get("folders"):
        print(f"Skipped {len(skipped['folders'])} folder(s) whose files were not read: {', '.join(skipped['folders'])}.")
    if (control := describe_control_like(documents)) is not None:
        print(control)
    return _text_dataset(documents)


def _text_dataset(documents: list[str]):
    """Return ``Dataset.from_dict({"text": documents})``, built in Arrow directly, its fingerprint a
    hash of the text: from_dict, and a Dataset left to fingerprint its own table, took about 8 bytes
    of memory per character of text on their way (issue 31, case 17)."""
    import pyarrow as pa  # deferred: heavy
    from datasets import Dataset  # deferred: heavy

    from .support.files import text_sha256

    column = pa.array(documents, type=pa.string())  # a ChunkedArray past 2 GB of text
    return Dataset(pa.table({"text": column}), fingerprint=text_sha256(documents)[:16])


def append_eos(dataset, eos_token: str):
    """Return the dataset with ``eos_token`` appended to every ``text`` (empty rows are removed).

    Without an end-of-sequence marker, packed documents run into each other and the model never
    learns where a story ends, so generation rambles on past the end. Rows whose text is empty,
    blank or null would become a lone EOS; they are dropped, and a note says how many.
    """
    before = dataset.num_rows
    dataset = dataset.filter(lambda row: bool(row["text"] and row["text"].strip()))
    if dataset.num_rows < before:
        print(f"Dropped {before - dataset.num_rows} empty row(s) (empty, blank or null text) of {before}.")
    return dataset.map(lambda batch: {"text": [t + eos_token for t in batch["text"]]}, batched=True)


PIECE_CHARS = 100_000  # a longer document is tokenized in pieces of about this many characters
PIECES_AT_ONCE = 8  # pieces handed to the tokenizer in one call (bounds its working memory)
_PROBES = ("Once upon a time.\nThe end", "a b\n\"Hi,\" she said", "x\n1. One", "tail \nHead", "end\n\u4e2d\u6587 text",
           "end.\n\nThe", "end.\n \n\t\nThe", "end.\r\nThe", "end.  \n\n\nThe", "1\n2",
           "one two", "end.  The", "x\t y", "a, \"b\"", "it's 42 ok", "\u4e2d\u6587 \u4e2d")
_splits_cleanly: dict[int, bool] = {}
_CUT_POINT = re.compile(r"[\n ](?=\S)")  # a newline or space that ends a run of whitespace before a word


def text_pieces(text: str, size: int | None = None) -> list[str]:
    """Cut ``text`` into pieces of at most about ``size`` characters, each cut just before a newline
    that a non-space character follows (the next piece starts ``"\\nThe"``), or, in a stretch without
    one (a text on one line), just before a space that a non-space character follows (``" word"``):
    byte-level pre-tokenizers (GPT-2's rule) split there anyway, the whitespace before it going to the
    piece before, so tokenizing the pieces one by one gives the same tokens as the whole text
    (:func:`splits_cleanly` checks a tokenizer). A stretch longer than ``size`` with neither stays whole."""
    size = PIECE_CHARS if size is None else size
    if len(text) <= size:
        return [text]
    pieces, start = [], 0
    while len(text) - start > size:
        cut = _last_cut(text, start, start + size, "\n")
        if cut <= start:
            cut = _last_cut(text, start, start + size, " ")
        if cut <= start:  # no cut point within size: take the next one after it
            found = _CUT_POINT.search(text, start + size)
            if found is None:
                break
            cut = found.start()
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _last_cut(text: str, start: int, end: int, char: str) -> int:
    """Return the last index in ``text[start:end]`` holding ``char`` with a non-space character after
    it (-1 when there is none)."""
    cut = text.rfind(char, start, end)
    while cut > start and text[cut + 1].isspace():
        cut = text.rfind(char, start, cut)
    return cut


def splits_cleanly(tokenizer) -> bool:
    """True when tokenizing text in :func:`text_pieces` gives the same tokens as the whole text, for
    this tokenizer (checked once on a few probes). Byte-level BPE tokenizers (SmolLM2, Qwen, GPT-2)
    do; SentencePiece tokenizers that mark the start of a text (Llama 2, Mistral) do not, and get
    whole documents."""
    key = id(tokenizer)
    if key not in _splits_cleanly:
        def ids(text):
            return encode_text(text, tokenizer)["input_ids"]

        clean = True
        for probe in _PROBES:
            pieces = text_pieces(probe, size=max(probe.rfind("\n"), probe.rfind(" ")))
            clean = clean and len(pieces) >= 2 and [i for piece in pieces for i in ids(piece)] == ids(probe)
        _splits_cleanly[key] = clean
    return _splits_cleanly[key]


def encode_text(texts, tokenizer) -> dict:
    """Return ``tokenizer(texts)`` for raw text: no special tokens added (no BOS), and a string that
    spells a special token (``<|im_end|>``, ``</s>``, ``<|endoftext|>``) inside the text tokenized as
    the ordinary characters it is (``split_special_tokens=True``), never as that control token: a chat
    log, a scraped page or an article about tokenizers would otherwise put EOS and pad ids inside a
    document (issue 40)."""
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)


def _encode_bodies(texts: list[str], tokenizer) -> dict:
    """Tokenize ``texts`` as raw text (:func:`encode_text`); a long text in pieces
    (:func:`text_pieces`), a few at a time, joined into one numpy row, so that the memory used grows
    with the text, not with the tokenizer's bookkeeping of one huge string (a 50 MB file took 7.6 GB)."""
    import numpy as np  # deferred: heavy

    if all(len(t) <= PIECE_CHARS for t in texts) or not splits_cleanly(tokenizer):
        return dict(encode_text(texts, tokenizer))
    out: dict[str, list] = {}
    for text in texts:
        pieces = text_pieces(text)
        parts: dict[str, list] = {}
        for first in range(0, len(pieces), PIECES_AT_ONCE):
            encoded = encode_text(pieces[first : first + PIECES_AT_ONCE], tokenizer)
            for key, rows in encoded.items():
                # the types Dataset.map stores Python ints in: int32 ids, int8 masks (the same features
                # whether or not a batch held a long document)
                dtype = np.int32 if key == "input_ids" else np.int8
                parts.setdefault(key, []).extend(np.asarray(row, dtype=dtype) for row in rows)
        for key, rows in parts.items():
            out.setdefault(key, []).append(np.concatenate(rows))
    return out


def split_eos(text: str, eos_token: str | None) -> tuple[str, bool]:
    """Return ``(text without the EOS string that ends it, whether it ended in one)``: the EOS that
    :func:`append_eos` (or notebook 02's ``add_eos``) appended; anything before it is the document."""
    if eos_token and text.endswith(eos_token):
        return text[: -len(eos_token)], True
    return text, False


def _encode(texts: list[str], tokenizer) -> dict:
    """Tokenize documents that end in the tokenizer's EOS string (:func:`append_eos`): the text before
    it as raw text (:func:`_encode_bodies`: special-token strings inside it stay text), then the EOS
    id, so that each document holds exactly one EOS, its last token. A text without that ending is
    tokenized whole as raw text, with no EOS added."""
    import numpy as np  # deferred: heavy

    eos_id = tokenizer.eos_token_id
    split = [split_eos(text, tokenizer.eos_token) for text in texts]
    out = _encode_bodies([body for body, _ in split], tokenizer)
    if eos_id is None or not any(ended for _, ended in split):
        return out
    for key, rows in out.items():
        value = eos_id if key == "input_ids" else 1 if key == "attention_mask" else 0
        for i, (_, ended) in enumerate(split):
            if ended:
                row = rows[i]
                rows[i] = (np.concatenate([row, np.asarray([value], dtype=row.dtype)]) if isinstance(row, np.ndarray)
                           else [*row, value])
    return out


def tokenize(dataset, tokenizer):
    """Return the dataset tokenized (``input_ids``, ``attention_mask``), without truncation.

    Each ``text`` is a document with the tokenizer's EOS string appended (:func:`append_eos`): that
    last EOS becomes the EOS id, and everything before it is raw text, so a special-token string
    inside a document (``<|im_end|>``, ``<|endoftext|>``, ``</s>``) is trained as the characters it
    is, never as an EOS or pad token (:func:`encode_text`; issue 40). A document longer than
    :data:`PIECE_CHARS` characters is tokenized in pieces cut at newlines (the same tokens, see
    :func:`text_pieces`; issue 31, case 17)."""
    return dataset.map(
        lambda batch: _encode(batch["text"], tokenizer),
        batched=True,
        batch_size=64,
        remove_columns=dataset.column_names,
        desc="Tokenizing",
    )


def special_token_strings(tokenizer) -> list[str]:
    """Return the strings of the tokenizer's special tokens (EOS, pad, BOS, chat markers and every
    added token marked special): the ones :func:`encode_text` keeps as text inside a document."""
    found = list(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            found.append(str(token))
    return sorted({s for s in found if s and s.strip()}, key=lambda s: (-len(s), s))


def special_token_text(dataset_with_eos, tokenizer, batch_size: int = 256) -> dict[str, int]:
    """Return ``{special-token string: documents holding it as text}`` for the documents of a dataset
    with EOS appended (the appended EOS itself not counted), most frequent first; empty when none
    does. Read in batches, so a big text folder is never held twice."""
    strings = special_token_strings(tokenizer)
    counts: dict[str, int] = {}
    if not strings:
        return counts
    for start in range(0, dataset_with_eos.num_rows, batch_size):
        for text in dataset_with_eos[start : start + batch_size]["text"]:
            body, _ = split_eos(text or "", tokenizer.eos_token)
            for string in strings:
                if string in body:
                    counts[string] = counts.get(string, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _role(tokenizer, string: str) -> str:
    for attr, role in (("eos_token", "EOS"), ("pad_token", "pad token"), ("bos_token", "BOS"), ("unk_token", "unknown token")):
        if getattr(tokenizer, attr, None) == string:
            return f"this tokenizer's {role}"
    return "a special token of this tokenizer"


def describe_special_token_text(counts: dict[str, int], tokenizer) -> str:
    """Return the note printed when documents hold special-token strings as text (``2 documents contain
    '<|im_end|>' (this tokenizer's EOS) as text; trained as text …``)."""
    shown = "; ".join(f"{count} document(s) contain {string!r} ({_role(tokenizer, string)}) as text"
                      for string, count in counts.items())
    return (f"{shown}: trained as text, not as control tokens, so only the EOS appended to each document ends "
            "one (stats: special_token_text).")


def _token_column(dataset, column: str = "input_ids"):
    """Return ``(values, offsets)`` of a list-of-ints column as numpy arrays (all tokens in one
    array, row ``i`` is ``values[offsets[i]:offsets[i + 1]]``) without making Python lists."""
    import numpy as np  # deferred: heavy
    import pyarrow as pa  # deferred: heavy

    chunks = dataset.data.column(column).chunks
    values, lengths = [], []
    for chunk in chunks:
        if isinstance(chunk, pa.ChunkedArray):
            chunk = pa.concat_arrays(chunk.chunks)
        values.append(chunk.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False))
        lengths.append(chunk.value_lengths().fill_null(0).to_numpy(zero_copy_only=False))
    if not values:
        return np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
    lengths = np.concatenate(lengths).astype(np.int64)
    return np.concatenate(values), np.concatenate([[0], np.cumsum(lengths)])


def _rows_dataset(values, offsets):
    """Return a ``datasets.Dataset`` whose ``input_ids`` rows are ``values`` cut at ``offsets``, built
    in Arrow (the same column ``Dataset.from_dict({"input_ids": rows})`` gives, without Python lists)."""
    import hashlib

    import numpy as np  # deferred: heavy
    import pyarrow as pa  # deferred: heavy
    from datasets import Dataset, Features, Sequence, Value  # deferred: heavy

    # int32 ids, as Dataset.from_dict stores Python ints in an "input_ids" column
    values = np.ascontiguousarray(values, dtype=np.int32)
    offsets = np.ascontiguousarray(offsets, dtype=np.int32)
    digest = hashlib.sha256(memoryview(values).cast("B"))
    digest.update(memoryview(offsets).cast("B"))
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    return Dataset(pa.table({"input_ids": column}), fingerprint=digest.hexdigest()[:16]).cast(
        Features({"input_ids": Sequence(Value("int32"))}))


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
    Raises :class:`helpers.errors.SettingsError` for settings that cannot train, and
    :class:`DataError` when there is no text, or (packing) less than one row of it.
    Stories longer than ``max_seq_length`` are never dropped: packing continues them into the next
    block, one-row-per-story truncates them; either way they are counted
    (``longer_than_max_seq_length``, and ``rows_truncated`` / ``tokens_truncated``) and a note is
    printed. Documents with no tokens at all (empty text) are left out, and a note counts them.
    Special-token strings inside the documents (``<|im_end|>``, ``</s>``) are tokenized as text
    (:func:`tokenize`); the documents holding them are counted (``special_token_text``, only when
    there are any) and a note says so.
    """
    import numpy as np  # deferred: heavy

    check_training_settings(profile)
    if dataset_with_eos.num_rows == 0:
        raise DataError("No training text: the dataset has no rows (empty rows were dropped, and none was left).")
    as_text = special_token_text(dataset_with_eos, tokenizer)
    if as_text:
        print(describe_special_token_text(as_text, tokenizer))
    tokenized = tokenize(dataset_with_eos, tokenizer)
    # all tokens in one numpy array, rows by offsets: Python lists of a 50 MB text's 12 M token ids
    # took gigabytes (issue 31, case 17); the rows below are the same as pack_blocks / truncate_rows give
    values, offsets = _token_column(tokenized)
    all_lengths = np.diff(offsets)
    kept = all_lengths > 0
    if not kept.any():
        raise DataError(f"No training text: none of the {tokenized.num_rows} documents has any text in it.")
    if not kept.all():
        print(f"Left out {int((~kept).sum())} empty document(s) (no tokens).")
    lengths = all_lengths[kept]
    size = profile.max_seq_length
    stats = {
        "documents": int(len(lengths)),
        "tokens": int(lengths.sum()),
        "longer_than_max_seq_length": int((lengths > size).sum()),
        "packing": profile.packing,
        "max_seq_length": profile.max_seq_length,
        **({"special_token_text": as_text} if as_text else {}),
    }
    long = stats["longer_than_max_seq_length"]
    if profile.packing:
        full = len(values) // size * size
        dropped = len(values) - full
        rows = _rows_dataset(values[:full], np.arange(0, full + 1, size)) if full else None
        if not rows:
            raise DataError(
                f"The text is too short to train on: {stats['tokens']} tokens in {stats['documents']} document(s), "
                f"fewer than one packed row of max_seq_length={profile.max_seq_length} tokens. Add at least "
                f"{profile.max_seq_length - stats['tokens']} more tokens of text, or lower max_seq_length to at most "
                f"{stats['tokens']} (and at least 8). Nothing was saved; the previous training set is kept.")
        stats.update(rows=len(rows), tail_tokens_dropped=int(dropped))
        if long:
            print(f"{long} of {len(lengths)} stories are longer than max_seq_length={profile.max_seq_length} tokens; "
                  "packing continues each into the next block, so none is cut or dropped.")
    else:
        starts, clipped = offsets[:-1][kept], np.minimum(lengths, size)
        row_offsets = np.concatenate([[0], np.cumsum(clipped)])
        # the first `clipped` tokens of each kept document, gathered without a Python loop
        take = np.repeat(starts - row_offsets[:-1], clipped) + np.arange(row_offsets[-1])
        rows = _rows_dataset(values[take], row_offsets)
        truncated, lost = int((lengths > size).sum()), int((lengths - clipped).sum())
        stats.update(rows=len(rows), rows_truncated=truncated, tokens_truncated=lost)
        if truncated:
            print(f"{truncated} of {len(lengths)} stories are longer than max_seq_length={profile.max_seq_length} "
                  f"tokens and were truncated ({lost} tokens cut from their ends; none dropped). Raise "
                  "max_seq_length or turn on packing to keep them whole.")
    return rows, stats


def text_for_unsloth(text_dataset, tokenizer):
    """Return ``text_dataset`` (documents with EOS appended) for unsloth's trainer to tokenize and pack
    itself, or None when a document holds a special-token string as text (:func:`special_token_text`):
    unsloth tokenizes the text without ``split_special_tokens``, so ``<|im_end|>`` / ``</s>`` inside a
    document would become control tokens (issue 40). With None, the caller trains on the rows
    :func:`build_train_dataset` made instead (unsloth's branch without ``text_dataset``), and a printed
    note says why."""
    found = special_token_text(text_dataset, tokenizer)
    if not found:
        return text_dataset
    print(f"NOTE: {', '.join(map(repr, found))} occur inside the documents as text; unsloth would tokenize them as "
          "control tokens, so it trains on the packed rows tokenized here (documents in a row attend across their "
          "EOS) instead of packing the text itself.")
    return None


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


def document_segments(input_ids: list[int], eos_token_id: int) -> list[int]:
    """Return, for every token of a packed row, the index of the document it belongs to: 0 for the
    first, and one more after every EOS token (the EOS ends its own document)."""
    segments, current = [], 0
    for token in input_ids:
        segments.append(current)
        if token == eos_token_id:
            current += 1
    return segments


class PackedRowsCollator:
    """Batch equal-length packed rows for causal-LM training, with or without attention across the
    documents inside a row.

    Returns ``input_ids``, ``labels`` (the inputs, with the first token of every document after the
    first set to -100: no document is trained to predict its opening from the one before) and, with
    ``isolate_documents``, ``position_ids`` that restart at every document and a 4-D boolean
    ``attention_mask`` (batch, 1, length, length) that lets a token attend only to earlier tokens
    of its own document. Without it the row is one causal sequence, documents seeing the ones before
    them (the concatenate-and-chunk packing of Hugging Face's ``run_clm``). The labels are the same
    either way, so two runs differ only in what the attention sees. Raises ``ValueError`` for rows of
    different lengths (pack them first, :func:`pack_blocks`).
    """

    def __init__(self, eos_token_id: int, isolate_documents: bool):
        self.eos_token_id, self.isolate_documents = eos_token_id, isolate_documents

    def __call__(self, features: list[dict]) -> dict:
        import torch  # deferred: heavy

        rows = [list(f["input_ids"]) for f in features]
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"packed rows must all have one length, got {sorted({len(r) for r in rows})}: pack "
                             "them first (helpers.data.pack_blocks), or train rows of one document each with a "
                             "profile that does not pack (profile.replace(packing=False))")
        input_ids = torch.tensor(rows)
        segments = torch.tensor([document_segments(r, self.eos_token_id) for r in rows])
        starts = torch.zeros_like(segments, dtype=torch.bool)
        starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
        labels = input_ids.masked_fill(starts, -100)
        batch = {"input_ids": input_ids, "labels": labels}
        if self.isolate_documents:
            length = input_ids.shape[1]
            index = torch.arange(length)
            # where each token's document starts: the latest start at or before it (the row starts at 0)
            first = torch.cummax(torch.where(starts, index, 0), dim=1).values
            batch["position_ids"] = index[None, :] - first
            causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
            batch["attention_mask"] = (causal[None] & (segments[:, :, None] == segments[:, None, :]))[:, None]
        return batch
