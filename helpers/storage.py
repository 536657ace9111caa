"""Writing results so that an interrupted or failed write never leaves a half-written file behind
(and measuring what was written: :func:`folder_size_bytes`).

Both helpers write to a temporary name next to the target and rename it into place at the end: a
rename within one folder is atomic on POSIX file systems, so readers see either the old complete
version or the new complete version, never a mix.

Temporary names carry the writer's process id (``.NAME.tmp-PID-xxxx``). A process killed while
saving leaves its temporary folder behind (a converted model or an adapter: hundreds of MB);
:func:`clean_stale_temp` removes those whose process is gone, and each save runs it on its folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
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


def save_directory_atomically(target: Path | str, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` to fill a fresh temporary folder, then swap it in as ``target``.

    If ``write`` raises (disk full, Ctrl-C, ...), the temporary folder is removed, the previous
    ``target`` is left untouched, and the error propagates. Returns ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(target.parent, only=target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
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
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


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
        size_mb = _size(entry) / 1e6
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
                lines.append(f"kept {entry.name} ({size_mb:.0f} MB): recent, maybe a save in progress")
                continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        lines.append(f"removed {entry.name} ({size_mb:.0f} MB), left by an interrupted save")
    if lines and not quiet:
        for line in lines:
            print(f"{folder.name}/: {line}")
    return lines
