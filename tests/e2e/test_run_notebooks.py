"""scripts/run_notebooks.py: executed copies may go to any folder; one fresh kernel per notebook, started ahead."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import REPO_ROOT


def load_script():
    spec = importlib.util.spec_from_file_location("run_notebooks", REPO_ROOT / "scripts" / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_out_folder_outside_the_repository(tmp_path, capsys):
    """`--out <a folder outside the repo>` used to fail after running the notebook, with
    `ValueError: ... is not in the subpath of ...`, and the executed copy was not reported."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    notebook = tmp_path / "tiny.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print(6 * 7)")]
    nbformat.write(nb, notebook)
    out = tmp_path / "elsewhere"
    assert load_script().main([str(notebook), "--out", str(out), "--timeout", "60"]) == 0
    executed = nbformat.read(out / "tiny.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "42\n"
    assert "ok tiny.ipynb" in capsys.readouterr().out


def test_each_notebook_gets_its_own_fresh_kernel_in_its_folder(tmp_path):
    """The next kernel is started while a notebook runs: still one new kernel per notebook (no state
    carried over), started in the notebook's folder, and the failing notebook stops the run."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    paths = []
    for name, code in (("a", "import os\nleft_by_a = 1\nprint(os.getpid(), os.getcwd())"),
                       ("b", "import os\nprint(os.getpid(), os.getcwd(), 'left_by_a' in globals())"),
                       ("c", "raise RuntimeError('stop here')"),
                       ("d", "print('never runs')")):
        folder = tmp_path / name
        folder.mkdir()
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(code)]
        nbformat.write(nb, folder / f"{name}.ipynb")
        paths.append(folder / f"{name}.ipynb")
    out = tmp_path / "out"
    assert load_script().main([*map(str, paths), "--out", str(out), "--timeout", "60"]) == 1
    pid_a, cwd_a = nbformat.read(out / "a.ipynb", as_version=4).cells[0].outputs[0]["text"].split()
    pid_b, cwd_b, carried = nbformat.read(out / "b.ipynb", as_version=4).cells[0].outputs[0]["text"].split()
    assert pid_a != pid_b and carried == "False"
    assert (cwd_a, cwd_b) == (str(tmp_path / "a"), str(tmp_path / "b"))
    assert not (out / "c.ipynb").exists() and not (out / "d.ipynb").exists()
    for pid in (pid_a, pid_b):  # both kernels were shut down
        assert not (Path("/proc") / pid).exists() or "zombie" in (Path("/proc") / pid / "status").read_text().lower()
