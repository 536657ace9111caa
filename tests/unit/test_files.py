"""Tests for helpers.support.files: atomic JSON writes and atomic directory swaps."""

from __future__ import annotations

import errno
import json
import os
import time

import pytest

from helpers.support import files as storage
from helpers.support.files import read_json, save_directory_atomically, write_json


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


# --- write_json / read_json --------------------------------------------------------------------


def test_write_json_round_trip_and_no_temp_files(tmp_path):
    path = tmp_path / "result.json"
    obj = {"loss": 1.25, "steps": [1, 2, 3], "name": "Zoë", "nested": {"ok": True, "none": None}}
    assert write_json(path, obj) == path
    assert read_json(path) == obj
    assert listing(tmp_path) == ["result.json"]
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert '\n  "loss": 1.25' in text  # indented


def test_write_json_accepts_str_path_and_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "c.json"
    returned = write_json(str(path), [1])
    assert returned == path
    assert read_json(path) == [1]


def test_write_json_serialises_unknown_types_with_str(tmp_path):
    path = write_json(tmp_path / "p.json", {"path": tmp_path / "x", "set": {1}})
    assert read_json(path) == {"path": str(tmp_path / "x"), "set": "{1}"}


def test_write_json_replaces_existing_file(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"version": 1})
    write_json(path, {"version": 2})
    assert read_json(path) == {"version": 2}
    assert listing(tmp_path) == ["r.json"]


def test_write_json_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"version": 1})
    circular: list = []
    circular.append(circular)
    with pytest.raises(ValueError, match="[Cc]ircular"):
        write_json(path, {"version": 2, "bad": circular})
    assert read_json(path) == {"version": 1}
    assert listing(tmp_path) == ["r.json"]


def test_write_json_interrupted_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_json(path, {"version": 1})

    def interrupted_dump(obj, f, **kwargs):
        f.write('{"version": 2, "half')  # a partial write, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(storage.json, "dump", interrupted_dump)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"version": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text(encoding="utf-8")) == {"version": 1}
    assert listing(tmp_path) == ["r.json"]


# --- save_directory_atomically -----------------------------------------------------------------


def make_old_target(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "weights.bin").write_bytes(b"old weights")
    (target / "config.json").write_text('{"old": true}', encoding="utf-8")
    return target


def assert_old_target_intact(target):
    assert listing(target) == ["config.json", "weights.bin"]
    assert (target / "weights.bin").read_bytes() == b"old weights"
    assert (target / "config.json").read_text(encoding="utf-8") == '{"old": true}'


def test_save_directory_first_time(tmp_path):
    target = tmp_path / "out" / "model"
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert tmp.is_dir() and tmp.parent == target.parent  # same folder, so the rename is atomic
        (tmp / "file.txt").write_text("new", encoding="utf-8")

    assert save_directory_atomically(target, write) == target
    assert (target / "file.txt").read_text(encoding="utf-8") == "new"
    assert not seen[0].exists()
    assert listing(target.parent) == ["model"]


def test_save_directory_success_replaces_old_target(tmp_path):
    target = make_old_target(tmp_path)

    def write(tmp):
        (tmp / "new.bin").write_bytes(b"new weights")

    save_directory_atomically(str(target), write)
    assert listing(target) == ["new.bin"]  # the old files are gone, not merged
    assert (target / "new.bin").read_bytes() == b"new weights"
    assert listing(tmp_path) == ["adapter"]  # no temporary or .old folder left behind


def test_save_directory_disk_full_keeps_previous_folder(tmp_path):
    target = make_old_target(tmp_path)

    def write(tmp):
        (tmp / "weights.bin").write_bytes(b"half of the new wei")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        save_directory_atomically(target, write)
    assert info.value.errno == errno.ENOSPC
    assert "No space left on device" in str(info.value)
    assert_old_target_intact(target)
    assert listing(tmp_path) == ["adapter"]


def test_save_directory_keyboard_interrupt_keeps_previous_folder(tmp_path):
    target = make_old_target(tmp_path)

    def write(tmp):
        (tmp / "config.json").write_text('{"new": tr', encoding="utf-8")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_directory_atomically(target, write)
    assert_old_target_intact(target)
    assert listing(tmp_path) == ["adapter"]


def test_save_directory_failure_without_previous_target_leaves_nothing(tmp_path):
    target = tmp_path / "adapter"

    def write(tmp):
        (tmp / "partial").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        save_directory_atomically(target, write)
    assert not target.exists()
    assert listing(tmp_path) == []


def test_save_directory_failed_swap_restores_previous_folder(tmp_path, monkeypatch):
    """The old folder is moved aside first; if moving the new one in fails, the old one comes back."""
    target = make_old_target(tmp_path)
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # target -> .old succeeded; tmp -> target fails
            raise OSError(errno.EIO, "I/O error")
        return real_replace(src, dst)

    monkeypatch.setattr(storage.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="I/O error"):
        save_directory_atomically(target, lambda tmp: (tmp / "new.bin").write_bytes(b"new"))
    monkeypatch.undo()
    assert_old_target_intact(target)
    assert listing(tmp_path) == ["adapter"]


def test_save_directory_recovers_from_a_stale_old_folder(tmp_path):
    """A crash between the two renames of an earlier run leaves only ``.adapter.old``; the next
    successful save cleans it up."""
    target = make_old_target(tmp_path)
    os.replace(target, tmp_path / ".adapter.old")
    save_directory_atomically(target, lambda tmp: (tmp / "new.bin").write_bytes(b"new"))
    assert listing(target) == ["new.bin"]
    assert listing(tmp_path) == ["adapter"]


def test_save_directory_failure_after_stale_old_folder_restores_it(tmp_path):
    target = make_old_target(tmp_path)
    os.replace(target, tmp_path / ".adapter.old")

    def write(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        save_directory_atomically(target, write)
    assert_old_target_intact(target)
    assert listing(tmp_path) == ["adapter"]


# --- leftovers of killed saves (issue 12) ------------------------------------------------------------


def test_clean_stale_temp_removes_dead_writers_and_keeps_live_ones(tmp_path):
    from helpers.support.files import clean_stale_temp

    dead = tmp_path / ".model.tmp-999999999-x1"  # no such process
    live = tmp_path / f".model.tmp-{os.getpid()}-x2"  # this process: a save in progress
    dead_file = tmp_path / ".result.json.999999999.abc"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"\0" * 10)
    dead_file.write_text("{", encoding="utf-8")
    (tmp_path / "model").mkdir()
    lines = clean_stale_temp(tmp_path, quiet=True)
    assert not dead.exists() and not dead_file.exists() and live.is_dir()
    assert len(lines) == 2 and all("left by an interrupted save" in line for line in lines)


def test_clean_stale_temp_restores_a_target_lost_between_the_two_renames(tmp_path):
    from helpers.support.files import clean_stale_temp

    (tmp_path / ".adapter.old").mkdir()
    (tmp_path / ".adapter.old" / "a.bin").write_bytes(b"old")
    lines = clean_stale_temp(tmp_path, quiet=True)
    assert (tmp_path / "adapter" / "a.bin").read_bytes() == b"old"
    assert "restored adapter" in lines[0]


def test_clean_stale_temp_reports_a_recent_folder_without_pid(tmp_path):
    from helpers.support.files import clean_stale_temp

    (tmp_path / ".model.tmp-abcd1234").mkdir()  # the name of earlier versions: no PID to check
    lines = clean_stale_temp(tmp_path, quiet=True)
    assert (tmp_path / ".model.tmp-abcd1234").is_dir() and "kept .model.tmp-abcd1234" in lines[0]
    old = time.time() - 3600
    os.utime(tmp_path / ".model.tmp-abcd1234", (old, old))
    clean_stale_temp(tmp_path, quiet=True)
    assert not (tmp_path / ".model.tmp-abcd1234").exists()


def test_a_new_save_cleans_its_target_s_leftovers(tmp_path):
    stale = tmp_path / ".adapter.tmp-999999999-zz"
    stale.mkdir()
    save_directory_atomically(tmp_path / "adapter", lambda tmp: (tmp / "new.bin").write_bytes(b"new"))
    assert listing(tmp_path) == ["adapter"]
