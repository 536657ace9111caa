"""Issue 31, "No silently wrong result, round 3": each test reproduces one case that used to lose
output, raise a raw error or give a silently wrong result (the case number is in the test's name)."""

from __future__ import annotations

import json
import multiprocessing
import os
import traceback

from helpers.support.files import save_directory_atomically

FORK = multiprocessing.get_context("fork")


def _save_adapter_folders(target: str, tag: str, times: int, errors) -> None:
    def write(folder):
        (folder / "adapter_model.safetensors").write_bytes(tag.encode() * 1000)
        (folder / "adapter_config.json").write_text(json.dumps({"tag": tag}))

    for _ in range(times):
        try:
            save_directory_atomically(target, write)
        except Exception:  # noqa: BLE001 - counted, shown by the test
            errors.put(traceback.format_exc())


def _run_in_parallel(function, args_list) -> list[str]:
    errors = FORK.Queue()
    processes = [FORK.Process(target=function, args=(*args, errors)) for args in args_list]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert all(p.exitcode == 0 for p in processes)
    found = []
    while not errors.empty():
        found.append(errors.get())
    return found


def test_case02_two_processes_saving_one_folder_never_fail(tmp_path):
    """Two processes saving the same adapter folder at once: some saves raised a bare
    FileNotFoundError ('.05_adapter.old', '...tmp-...') before the swap ran under a lock."""
    target = str(tmp_path / "05_adapter")
    errors = _run_in_parallel(_save_adapter_folders, [(target, "A", 150), (target, "B", 150)])
    assert errors == []
    tag = json.loads((tmp_path / "05_adapter" / "adapter_config.json").read_text())["tag"]
    weights = (tmp_path / "05_adapter" / "adapter_model.safetensors").read_bytes()
    assert weights == tag.encode() * 1000  # one save's files, never a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["05_adapter"]


def _save_notebook_outputs(root: str, tag: str, times: int, errors) -> None:
    os.environ["CPT_ROOT"] = root
    from helpers.artifacts import save_outputs
    from helpers.profiles import CPU_SMOLLM2

    for _ in range(times):
        try:
            save_outputs(CPU_SMOLLM2, {"before": {"perplexity": tag}})
        except Exception:  # noqa: BLE001 - counted, shown by the test
            errors.put(traceback.format_exc())


def test_case13_concurrent_save_outputs_never_fail(tmp_path, monkeypatch):
    """Two processes saving one notebook's outputs at once: about a third of the saves failed with
    'Directory not empty: .commit-NB.ready' or FileNotFoundError."""
    monkeypatch.setenv("CPT_ROOT", str(tmp_path))
    (tmp_path / "outputs").mkdir()
    errors = _run_in_parallel(_save_notebook_outputs, [(str(tmp_path), "A", 60), (str(tmp_path), "B", 60)])
    assert errors == [], errors[0]
    from helpers.artifacts import require
    from helpers.profiles import CPU_SMOLLM2

    path = require("before", CPU_SMOLLM2)  # the last save's set is whole and passes its manifest
    assert json.loads(path.read_text())["perplexity"] in ("A", "B")
    assert not list((tmp_path / "outputs").glob(".commit-*"))


