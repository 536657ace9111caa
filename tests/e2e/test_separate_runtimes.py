"""Notebooks 00-06 run the way hosted Colab runs them: each in a fresh copy of the project and a kernel
of its own, sharing nothing but a ``CPT_OUTPUTS`` folder that lies outside every copy (issue 30).

Each notebook is executed by ``scripts/run_notebooks.py`` (the runner ``make run`` uses) from a copy
made for it alone (the tracked and untracked-but-not-ignored files, no ``outputs/``), with the kernel
importing ``helpers`` from that copy. The copy is removed after its notebook ran. Then 05's outputs are
taken out of the shared folder, and 06 must stop with the message that names notebook 05 and the
folder it looked in.

About four minutes on two CPU cores (the notebooks' own time plus a kernel start each).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import time

import pytest
from conftest import REPO_ROOT

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

SERIES = ("00_setup", "01_load_quantized_model", "02_data_prep", "03_inference_before_training", "04_lora",
          "05_training", "06_inference_after_training")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
FIVE = ("05_adapter", "05_train_result.json", "manifests/adapter.json", "manifests/train_result.json")


def load_runner():
    spec = importlib.util.spec_from_file_location("run_notebooks", REPO_ROOT / "scripts" / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def project_files() -> list[str]:
    """The project as a fresh clone would hold it, with this working tree's edits: tracked files and
    untracked files that git does not ignore."""
    listed = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, check=True).stdout.decode()
    return [name for name in listed.split("\0") if name and (REPO_ROOT / name).is_file()]


def fresh_copy(dest):
    for name in project_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    return dest


def run_in_own_runtime(runner, notebook: str, workspace, shared, capsys) -> tuple[int, str, float]:
    """Run one notebook from a copy of its own, in a kernel of its own; return (exit code, what the
    runner printed, seconds). Only CPT_OUTPUTS (and the offline switches of the tests) reach the kernel."""
    copy = fresh_copy(workspace / f"runtime-{notebook[:2]}")
    started = time.perf_counter()
    with pytest.MonkeyPatch.context() as env:
        for key in [k for k in os.environ if k.startswith("CPT_")]:
            env.delenv(key)
        env.setenv("CPT_OUTPUTS", str(shared))
        env.setenv("PYTHONPATH", str(copy))  # helpers from this copy, not from an installed checkout
        env.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        env.chdir(copy)
        code = runner.main([str(copy / "notebooks" / f"{notebook}.ipynb"), "--out", str(workspace / "executed"),
                            "--timeout", "1200"])
    captured = capsys.readouterr()
    said = ANSI.sub("", captured.out + captured.err)  # without the colours of the traceback
    assert not (copy / "outputs").exists(), f"{notebook} wrote into its copy's outputs/, not into CPT_OUTPUTS"
    shutil.rmtree(copy)
    return code, said, time.perf_counter() - started


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """The shared outputs folder and the workspace of the copies, side by side (neither inside the other)."""
    return tmp_path_factory.mktemp("shared-cpt-outputs"), tmp_path_factory.mktemp("runtimes")


def test_notebooks_00_to_06_each_in_its_own_runtime_share_only_cpt_outputs(series, capsys):
    shared, workspace = series
    runner = load_runner()
    for notebook in SERIES:
        code, said, seconds = run_in_own_runtime(runner, notebook, workspace, shared, capsys)
        with capsys.disabled():
            print(f"\n{notebook}: exit {code}, {seconds:.0f} s in its own copy and kernel")
        assert code == 0, f"{notebook} failed in a runtime of its own:\n{said[-6000:]}"
    for name in ("01_model_info.json", "02_dataset", "03_before.json", "04_lora_info.json", "05_adapter", "06_after.json"):
        assert (shared / name).exists() and (shared / "manifests").is_dir(), name


def test_without_05s_outputs_06_names_notebook_05_and_the_folder(series, capsys):
    shared, workspace = series
    if not (shared / "05_adapter").is_dir():
        pytest.skip("the series did not run (see the test above)")
    aside = workspace / "05-aside"
    for name in FIVE:
        (aside / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(shared / name, aside / name)
    try:
        code, said, _ = run_in_own_runtime(load_runner(), "06_inference_after_training", workspace, shared, capsys)
    finally:
        for name in FIVE:
            shutil.move(aside / name, shared / name)
    with capsys.disabled():
        print("\n" + "\n".join(line for line in said.splitlines() if "FAILED" in line or "MissingArtifactError" in line))
    assert code == 1
    assert "FAILED 06_inference_after_training.ipynb" in said
    assert (f"MissingArtifactError: 05_adapter is missing from {shared} (from CPT_OUTPUTS). "
            "Run notebooks/05_training.ipynb first, with the same CPT_OUTPUTS; it writes 05_adapter there.") in said
