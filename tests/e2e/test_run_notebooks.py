"""scripts/run_notebooks.py: executed copies may go to any folder (issue 12)."""

from __future__ import annotations

import importlib.util

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
