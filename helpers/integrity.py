"""Is a file whole? Hashes of files and folders, and quick structural checks of the formats the
series writes (safetensors weights, ``torch.save`` zip archives, JSON).

A hash recorded when a file was written tells later whether it is still the same file (a manifest,
see :mod:`helpers.provenance`). The structural checks need no recorded hash: they find a file cut
off by a killed process or a full disk by reading only its header or its zip directory, so they
are cheap even for multi-GB files.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from pathlib import Path

CHUNK = 1 << 20
_hash_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path | str) -> str:
    """Return the SHA-256 hex digest of a file (cached per process by path, size and mtime)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def list_files(path: Path | str) -> dict[str, Path]:
    """Return ``{relative name: path}`` of the regular files of an artifact: the file itself (under
    its own name) or every file below a folder (sorted, symlinks followed)."""
    path = Path(path)
    if path.is_file():
        return {path.name: path}
    return {str(f.relative_to(path)): f for f in sorted(path.rglob("*")) if f.is_file()}


def describe_files(path: Path | str) -> dict[str, dict]:
    """Return ``{relative name: {"bytes": size, "sha256": digest}}`` for :func:`list_files`."""
    return {name: {"bytes": f.stat().st_size, "sha256": file_sha256(f)} for name, f in list_files(path).items()}


def text_sha256(texts) -> str:
    """Return a SHA-256 over a sequence of strings (each length-prefixed, so the split counts)."""
    digest = hashlib.sha256()
    for text in texts:
        data = (text or "").encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def token_sha256(dataset, column: str = "input_ids", batch_size: int = 1024) -> str:
    """Return a SHA-256 over the token ids of a ``datasets.Dataset`` column, row by row."""
    import numpy as np

    digest = hashlib.sha256()
    for start in range(0, len(dataset), batch_size):
        for row in dataset[start : start + batch_size][column]:
            ids = np.asarray(row, dtype=np.int64)
            digest.update(len(ids).to_bytes(8, "little"))
            digest.update(ids.tobytes())
    return digest.hexdigest()


def safetensors_problem(path: Path | str) -> str | None:
    """Return what is wrong with a safetensors file (cut off, no header, not safetensors), or None.

    Reads the 8-byte header length and the JSON header only: the tensors' byte ranges must end
    exactly at the end of the file.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, too short for a safetensors file"
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8 or header_len > 100_000_000:
            return f"header length {header_len} does not fit in the file ({size} bytes): cut off or not safetensors"
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "its header is not valid JSON: cut off or not safetensors"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    expected = 8 + header_len + (max(ends) if ends else 0)
    if expected != size:
        return f"{size} bytes where its header describes {expected}: {'cut off' if size < expected else 'extra bytes'}"
    return None


def safetensors_shapes(path: Path | str) -> dict[str, list[int]]:
    """Return ``{tensor name: shape}`` from a safetensors header (no tensor is read)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def torch_archive_problem(path: Path | str) -> str | None:
    """Return what is wrong with a ``torch.save`` file (a zip archive: cut off, empty), or None.

    Opening the zip reads its central directory at the end of the file, which a cut-off file lacks.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        return "empty (0 bytes)"
    try:
        with zipfile.ZipFile(path) as archive:
            if not archive.namelist():
                return "an empty archive"
    except zipfile.BadZipFile:
        return "not a complete torch.save archive (cut off while writing?)"
    return None


def json_problem(path: Path | str) -> str | None:
    """Return why a JSON file does not parse (empty, cut off), or None."""
    try:
        json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"not valid JSON ({err})"
    return None


def file_problem(path: Path | str) -> str | None:
    """Return what is structurally wrong with a file, judged by its extension, or None (unknown
    extensions: only that it exists and is readable)."""
    path = Path(path)
    if not path.is_file():
        return "missing" if not path.exists() else "not a regular file"
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return safetensors_problem(path)
    if suffix in (".pt", ".pth", ".bin"):
        return torch_archive_problem(path)
    if suffix == ".json":
        return json_problem(path)
    return None
