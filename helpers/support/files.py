"""Files: written so that an interrupted or failed write never leaves a half-written file behind
(and measured: :func:`folder_size_bytes`), and checked to be whole.

Both helpers write to a temporary name next to the target and rename it into place at the end: a
rename within one folder is atomic on POSIX file systems, so readers see either the old complete
version or the new complete version, never a mix.

Temporary names carry the writer's process id (``.NAME.tmp-PID-xxxx``). A process killed while
saving leaves its temporary folder behind (a converted model or an adapter: hundreds of MB);
:func:`clean_stale_temp` removes those whose process is gone, and each save runs it on its folder.

Is a file whole? Hashes of files and folders, and quick structural checks of the formats the series
writes (safetensors weights, ``torch.save`` zip archives, JSON).

A hash recorded when a file was written tells later whether it is still the same file (a manifest,
see :mod:`helpers.artifacts`). The structural checks need no recorded hash: they find a file cut
off by a killed process or a full disk by reading only its header or its zip directory, so they
are cheap even for multi-GB files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# ``.NAME.tmp-PID-random`` (folders of save_directory_atomically), ``.NAME.PID.random`` (files of
# write_json), ``.NAME.old`` (the previous version during a swap), and the forms without a PID
# written by earlier versions of this module.
_TEMP = re.compile(r"^\.(?P<name>.+?)\.(?:tmp-(?P<pid>\d+)-[^.]+|tmp-[^.]+|(?P<fpid>\d+)\.[^.]+|old)$")
LEGACY_TEMP_AGE_S = 600  # a temporary name without a PID is removed once it is this old


def write_json(path: Path | str, obj) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(path.parent, only=path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: Path | str):
    """Return the object stored as JSON in ``path``."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


_held: dict[str, list] = {}  # folder -> [fd, depth]: the lock is re-entrant within a process
_held_guard = threading.RLock()


@contextmanager
def folder_lock(folder: Path | str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` itself (``fcntl.flock`` on the directory) for the block.

    Two processes that swap things into one folder take turns instead of renaming each other's
    temporary folders away (issue 31, cases 2 and 13). No lock file is left behind; the kernel
    releases the lock when its process dies, so a killed process never leaves it held. Re-entrant
    within one process (the threads of a process share it). Where ``fcntl`` is missing (Windows)
    it does nothing.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            fd = os.open(key, os.O_RDONLY)
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:
                pass
            _held[key] = [fd, 1]
    try:
        yield
    finally:
        with _held_guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                os.close(entry[0])  # closing the descriptor releases the flock


class FolderInUseError(RuntimeError):
    """Another live process holds a folder for exclusive use; the message names it."""


@contextmanager
def exclusive_use(folder: Path | str) -> Iterator[None]:
    """Hold ``folder`` for exclusive use for the block (``fcntl.flock`` on the directory itself, not
    waiting); raise :class:`FolderInUseError` when another process holds it. Nothing is written into
    the folder, and the kernel releases the lock when its process dies, so a killed process never
    leaves it held. Not re-entrant; where ``fcntl`` is missing (Windows) it does nothing."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUseError(f"{folder} is held by another process") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def save_directory_atomically(target: Path | str, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` to fill a fresh temporary folder, then swap it in as ``target``.

    If ``write`` raises (disk full, Ctrl-C, ...), the temporary folder is removed, the previous
    ``target`` is left untouched, and the error propagates. Returns ``target``.

    Concurrent saves of one target (two processes, or threads) are safe: each writes its own
    temporary folder, and the swap runs under :func:`folder_lock`, so the last one to finish wins
    and none fails.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(target.parent):
        clean_stale_temp(target.parent, only=target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    old = target.with_name(f".{target.name}.old")
    try:
        write(tmp)
        with folder_lock(target.parent):
            try:
                if old.exists():
                    shutil.rmtree(old)
                if target.exists():
                    os.replace(target, old)
                os.replace(tmp, target)
            except BaseException:
                if old.exists() and not target.exists():
                    os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def folder_size_bytes(folder: Path | str, pattern: str = "*") -> int:
    """Return the total size in bytes of the files under ``folder`` matching ``pattern`` (recursive)."""
    return sum(f.stat().st_size for f in Path(folder).rglob(pattern) if f.is_file())


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _size(path: Path) -> int:
    """Bytes under ``path``; files that vanish meanwhile (another process's save) count 0."""
    def one(f: Path) -> int:
        try:
            return f.stat().st_size if f.is_file() and not f.is_symlink() else 0
        except OSError:
            return 0

    if path.is_file():
        return one(path)
    try:
        return sum(one(f) for f in path.rglob("*"))
    except OSError:
        return 0


def clean_stale_temp(folder: Path | str, only: str | None = None, quiet: bool = False) -> list[str]:
    """Remove what interrupted saves left in ``folder``; return one line per thing removed or kept.

    - ``.NAME.tmp-PID-*`` folders and ``.NAME.PID.*`` files whose process no longer runs (a save
      that is still running in another process keeps its folder); those without a PID (older
      versions) once they are :data:`LEGACY_TEMP_AGE_S` seconds old, else they are only reported;
    - ``.NAME.old`` (the previous version during a folder swap): put back as ``NAME`` when ``NAME``
      is missing (the process died between the two renames), else removed.

    ``only``: clean only the leftovers of that target name. Prints each line unless ``quiet``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    lines = []
    for entry in sorted(folder.iterdir()):
        match = _TEMP.match(entry.name)
        if not match or (only is not None and match.group("name") != only):
            continue
        name = match.group("name")
        if entry.name.endswith(".old") and not (match.group("pid") or match.group("fpid")):
            target = folder / name
            if not target.exists():
                os.replace(entry, target)
                lines.append(f"restored {name} from {entry.name} (a save was killed between its two renames)")
                continue
        else:
            pid = match.group("pid") or match.group("fpid")
            if pid is not None and _process_alive(int(pid)):
                continue
            if pid is None and time.time() - entry.stat().st_mtime < LEGACY_TEMP_AGE_S:
                size_mb = _size(entry) / 1e6
                lines.append(f"kept {entry.name} ({size_mb:.0f} MB): recent, maybe a save in progress")
                continue
        size_mb = _size(entry) / 1e6
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        lines.append(f"removed {entry.name} ({size_mb:.0f} MB), left by an interrupted save")
    if lines and not quiet:
        for line in lines:
            print(f"{folder.name}/: {line}")
    return lines


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
    import numpy as np  # deferred: heavy

    digest = hashlib.sha256()
    for start in range(0, len(dataset), batch_size):
        for row in dataset[start : start + batch_size][column]:
            ids = np.asarray(row, dtype=np.int64)
            digest.update(len(ids).to_bytes(8, "little"))
            digest.update(ids.tobytes())
    return digest.hexdigest()


def safetensors_header(path: Path | str) -> tuple[int, dict]:
    """Return ``(header length, header)`` of a safetensors file: the JSON object that names each tensor's
    dtype, shape and ``data_offsets`` (counted from the end of the header). Raises ``ValueError`` when
    the file is too short or its header is not a JSON object (see :func:`safetensors_problem`)."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise ValueError(f"{size} bytes, too short for a safetensors file")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8 or header_len > 100_000_000:
            raise ValueError(f"header length {header_len} does not fit in the file ({size} bytes): cut off or not "
                             "safetensors")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError("its header is not valid JSON: cut off or not safetensors") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return header_len, header


def safetensors_problem(path: Path | str) -> str | None:
    """Return what is wrong with a safetensors file (cut off, no header, not safetensors), or None.

    Reads the 8-byte header length and the JSON header only: the tensors' byte ranges must end
    exactly at the end of the file.
    """
    path = Path(path)
    size = path.stat().st_size
    try:
        header_len, header = safetensors_header(path)
    except ValueError as err:
        return str(err)
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    expected = 8 + header_len + (max(ends) if ends else 0)
    if expected != size:
        return f"{size} bytes where its header describes {expected}: {'cut off' if size < expected else 'extra bytes'}"
    return None


# tensors whose correct start is all zeros: LoRA's B matrices (and A of an embedding's LoRA), so that a
# fresh adapter changes nothing; zero is damage only when other tensors of theirs have trained
ZERO_AT_START = re.compile(r"(?:^|\.)(?:lora_B|lora_embedding_A)(?:\.|$)")
ZERO_TAIL_SHARE = 0.25  # a matrix whose last quarter (or more) is zero bytes is zero-filled, not trained
MIN_CHECKED_ELEMENTS = 64  # smaller tensors (and vectors: biases, norms) may be zero by design


def _trailing_zero_bytes(data, start: int, end: int, chunk: int = 1 << 20) -> int:
    """Return how many bytes at the end of ``data[start:end]`` are zero, reading back from the end in
    ``chunk``-byte blocks (a tensor that ends in a non-zero byte costs one small read)."""
    import numpy as np  # deferred: heavy

    position = end
    while position > start:
        low = max(start, position - chunk)
        block = np.asarray(data[low:position])
        if block[-64:].any():
            block = block[-64:]
            low = position - len(block)
        nonzero = np.flatnonzero(block)
        if nonzero.size:
            return end - (low + int(nonzero[-1]) + 1)
        position = low
    return end - start


def zero_filled_tensors(path: Path | str) -> dict:
    """Return what of a safetensors file's weights is zero-filled, judged by content: ``{"tensors": n,
    "entirely_zero": [names], "zero_tail": [(name, share of it zero)], "zero_share": share of all weight
    bytes that are trailing zeros, "untrained_lora": True when every LoRA B matrix is zero}``.

    Matrices (2 or more dimensions, :data:`MIN_CHECKED_ELEMENTS` or more entries) are checked; a
    matrix entirely of zero bytes, or whose last :data:`ZERO_TAIL_SHARE` or more is (a copy that
    stopped and was padded with zeros: the size and header stay right), is listed. Vectors (biases,
    norms) may be zero by design and are not listed. LoRA B matrices start at zero
    (:data:`ZERO_AT_START`): they are listed only when some of them trained and others are zero.
    Reads the header and, per tensor, only the bytes back from its end to its last non-zero byte.
    """
    import math

    import numpy as np  # deferred: heavy

    path = Path(path)
    header_len, header = safetensors_header(path)
    tensors = [(name, info) for name, info in header.items() if name != "__metadata__" and isinstance(info, dict)]
    found = {"tensors": len(tensors), "entirely_zero": [], "zero_tail": [], "zero_share": 0.0, "untrained_lora": False}
    if not tensors or path.stat().st_size <= 8 + header_len:
        return found
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    zero_bytes = total = 0
    lora_start, lora_zero = 0, []
    for name, info in sorted(tensors, key=lambda item: item[1]["data_offsets"][0]):
        start, end = info["data_offsets"]
        nbytes = end - start
        numel = math.prod(info.get("shape") or [1])
        if nbytes <= 0 or numel == 0:
            continue
        zero = _trailing_zero_bytes(data, start, end)
        total += nbytes
        if ZERO_AT_START.search(name):
            lora_start += 1
            if zero == nbytes:
                lora_zero.append(name)
            continue
        zero_bytes += zero
        if len(info.get("shape") or []) < 2 or numel < MIN_CHECKED_ELEMENTS:
            continue
        if zero == nbytes:
            found["entirely_zero"].append(name)
        elif zero >= ZERO_TAIL_SHARE * nbytes and zero // max(1, nbytes // numel) >= MIN_CHECKED_ELEMENTS:
            found["zero_tail"].append((name, zero / nbytes))
    if lora_zero and len(lora_zero) < lora_start:  # some B matrices trained, these did not: damage
        found["entirely_zero"].extend(lora_zero)
        zero_bytes += sum(header[name]["data_offsets"][1] - header[name]["data_offsets"][0] for name in lora_zero)
    found["untrained_lora"] = bool(lora_start) and len(lora_zero) == lora_start
    found["zero_share"] = zero_bytes / total if total else 0.0
    del data
    return found


def zero_filled_problem(path: Path | str) -> str | None:
    """Return what of a safetensors file's weights is zero-filled (:func:`zero_filled_tensors`), as one
    phrase with the numbers and the first names, or None when no matrix is (or the file is not
    readable safetensors: :func:`safetensors_problem` says why)."""
    try:
        found = zero_filled_tensors(path)
    except (OSError, ValueError):
        return None
    whole, tail = found["entirely_zero"], found["zero_tail"]
    if not whole and not tail:
        return None
    parts = []
    if whole:
        parts.append(f"{len(whole)} of its {found['tensors']} tensors are entirely zero (e.g. {', '.join(whole[:2])})")
    if tail:
        name, share = tail[0]
        parts.append(f"{len(tail)} {'ends' if len(tail) == 1 else 'end'} in a zero-filled part (e.g. {name}: its last {share:.0%} is zero)")
    return f"{' and '.join(parts)}; {found['zero_share']:.1%} of its weight bytes are zero-filled"


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


# --- a folder that carries the sizes and hashes of its own files ---------------------------------

FOLDER_MANIFEST = "files.sha256.json"  # written last into a folder; lists every other file's size and hash


def write_folder_manifest(folder: Path | str) -> Path:
    """Write ``files.sha256.json`` into ``folder``: the size and SHA-256 of every other file below it
    (:func:`describe_files`). :func:`folder_manifest_problem` checks the folder against it later, so
    a file damaged, cut off or replaced after it was written is found by its content."""
    folder = Path(folder)
    files = {name: info for name, info in describe_files(folder).items() if name != FOLDER_MANIFEST}
    return write_json(folder / FOLDER_MANIFEST, {"files": files})


def folder_manifest_problem(folder: Path | str, require: bool = False) -> str | None:
    """Return what differs between ``folder`` and its ``files.sha256.json`` (a file missing, cut off,
    grown or changed since it was written, the manifest unreadable), or None when every file is as
    written. A folder without a manifest passes, unless ``require``."""
    folder = Path(folder)
    manifest = folder / FOLDER_MANIFEST
    if not manifest.is_file():
        return f"it has no {FOLDER_MANIFEST} (its save did not finish)" if require else None
    try:
        files = read_json(manifest)["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"its {FOLDER_MANIFEST} is unreadable ({err})"
    for name, info in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != info["bytes"]:
            how = "cut off" if size < info["bytes"] else "longer than written"
            return f"{name} is {how}: {size} bytes, {info['bytes']} when it was written"
        if file_sha256(path) != info["sha256"]:
            return f"{name} has changed since it was written (its SHA-256 differs)"
    return None
