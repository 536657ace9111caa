"""Writing results so that an interrupted or failed write never leaves a half-written file behind
(and measuring what was written: :func:`folder_size_bytes`).

Both helpers write to a temporary name next to the target and rename it into place at the end: a
rename within one folder is atomic on POSIX file systems, so readers see either the old complete
version or the new complete version, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_json(path: Path | str, obj) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
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


def save_directory_atomically(target: Path | str, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` to fill a fresh temporary folder, then swap it in as ``target``.

    If ``write`` raises (disk full, Ctrl-C, ...), the temporary folder is removed, the previous
    ``target`` is left untouched, and the error propagates. Returns ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    old = target.with_name(f".{target.name}.old")
    try:
        write(tmp)
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


def folder_size_bytes(folder: Path | str, pattern: str = "*") -> int:
    """Return the total size in bytes of the files under ``folder`` matching ``pattern`` (recursive)."""
    return sum(f.stat().st_size for f in Path(folder).rglob(pattern) if f.is_file())
