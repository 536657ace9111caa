"""Progress bars are live for a person and absent from notebooks saved by scripts/run_notebooks.py.

The end-to-end test runs one small notebook that draws a bar from each source the series has (the
project's "Perplexity" bar, transformers' "Loading weights", datasets' "Saving the dataset", and a plain
tqdm.auto bar), once through nbclient as it is (the control: the bars are there) and once through
run_notebooks.py (none left, the cells' own output kept).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers.support.progress import QUIET_PROGRESS_ENV, bars_disabled, progress_bar

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "scripts" / "run_notebooks.py")
run_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_notebooks)

METER = "Loading weights:  42%|████▏     | 114/272 [00:00<00:00, 1117.97it/s]"


def test_bars_disabled_reads_tqdm_disable():
    assert bars_disabled({"TQDM_DISABLE": "1"})
    assert not bars_disabled({})
    assert not bars_disabled({"TQDM_DISABLE": "0"})
    assert set(QUIET_PROGRESS_ENV) == {"TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS",
                                       "HF_DATASETS_DISABLE_PROGRESS_BARS"}


def test_progress_bar_is_switched_off_by_the_flag_and_by_the_environment(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not progress_bar(range(3), desc="x").disable
    assert progress_bar(range(3), desc="x", enabled=False).disable
    monkeypatch.setenv("TQDM_DISABLE", "1")
    bar = progress_bar(range(3), desc="x")
    assert bar.disable and list(bar) == [0, 1, 2]  # the iteration itself is unchanged


def test_strip_progress_text_keeps_everything_but_the_meters():
    text = f"loading\n\r{METER.replace('42', '0')}\r{METER}\nWARNING: a real warning\n"
    assert run_notebooks.strip_progress_text(text) == "loading\nWARNING: a real warning\n"
    assert run_notebooks.strip_progress_text("no bar | here [00:01] 50%\n") == "no bar | here [00:01] 50%\n"


def test_strip_progress_removes_bar_outputs_and_keeps_the_rest():
    outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="hello\n"),
        nbformat.v4.new_output("stream", name="stderr", text=f"\r{METER}\n"),
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
            "text/plain": METER}),
        nbformat.v4.new_output("display_data", data={"text/plain": "a table", "text/html": "<table/>"}),
        nbformat.v4.new_output("stream", name="stderr", text="UserWarning: something real\n"),
    ]
    kept, touched = run_notebooks.strip_progress(outputs)
    assert touched == 2
    assert [o.get("text") or o["data"]["text/plain"] for o in kept] == [
        "hello\n", "a table", "UserWarning: something real\n"]


BAR_CELLS = [
    "from helpers.support.progress import progress_bar",
    "print('project', sum(progress_bar(range(3), desc='Perplexity')))",
    "from transformers.utils.logging import tqdm as hf_tqdm\nprint('transformers', sum(hf_tqdm(range(3), desc='Loading weights')))",
    "import tempfile\nfrom datasets import Dataset\nwith tempfile.TemporaryDirectory() as folder:\n"
    "    Dataset.from_dict({'text': ['a', 'b']}).save_to_disk(folder)\nprint('datasets saved')",
    "from tqdm.auto import tqdm\nprint('plain', sum(tqdm(range(3), desc='Plain')))",
]


def _bar_outputs(nb) -> list[str]:
    """Describe every output of ``nb`` that is a progress bar (a widget view or tqdm meter text)."""
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            text = output.get("text", "") + str(data.get("text/plain", ""))
            if run_notebooks.WIDGET_VIEW in data or run_notebooks.PROGRESS_METER.search(text) or "IProgress" in text:
                found.append(text.strip()[:60] or "widget view")
    return found


@pytest.fixture
def bar_notebook():
    folder = ROOT / "outputs" / "test_progress_outputs"  # under ROOT: run_notebooks names its files relative to it
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    path = folder / "bars.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in BAR_CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    yield path
    shutil.rmtree(folder, ignore_errors=True)


def test_a_notebook_saved_by_run_notebooks_holds_no_progress_bar(bar_notebook):
    env = {k: v for k, v in os.environ.items() if k not in QUIET_PROGRESS_ENV}
    control = nbformat.read(bar_notebook, as_version=4)
    NotebookClient(control, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(bar_notebook.parent)}}).execute(env=env)
    seen = " ".join(_bar_outputs(control))
    for desc in ("Perplexity", "Loading weights", "Saving the dataset", "Plain"):
        assert desc in seen, f"the control run shows no {desc!r} bar, so this test could not see one: {seen}"

    out = bar_notebook.parent / "executed"
    assert run_notebooks.main([str(bar_notebook), "--out", str(out)]) == 0
    saved = nbformat.read(out / bar_notebook.name, as_version=4)
    assert _bar_outputs(saved) == []
    assert "widgets" not in saved.metadata
    printed = "".join(o.get("text", "") for cell in saved.cells for o in cell.outputs)
    assert printed == "project 3\ntransformers 3\ndatasets saved\nplain 3\n"
