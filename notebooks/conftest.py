"""pytest settings for the notebooks under nbval (``pytest --nbval-lax notebooks``).

``--nbval-record-dir DIR`` keeps what nbval executed: each notebook is written to DIR with the
outputs its cells produced in that very test run. One execution is then both the test and the
record, which halves the GPU time of ``scripts/gpu_nbval.sh`` (nbval alone keeps no outputs).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

_ran: dict[str, object] = {}  # notebook path -> its nbval file item (holds the notebook node)


def pytest_addoption(parser):
    parser.addoption("--nbval-record-dir", default=None,
                     help="write each executed notebook, with the outputs of this run, into this folder")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    yield
    if call.when != "call" or not item.config.getoption("--nbval-record-dir"):
        return
    outputs = getattr(item, "test_outputs", None)
    cell = getattr(item, "cell", None)
    if cell is None or outputs is None:
        return
    counter = getattr(item.parent, "_record_count", 0) + 1
    item.parent._record_count = counter
    cell.outputs = [nbformat.from_dict(dict(output)) for output in outputs]
    for output in cell.outputs:
        if output.get("output_type") == "execute_result":
            output["execution_count"] = counter
    cell.execution_count = counter
    cell.metadata.pop("execution", None)
    cell.metadata["nbval_recorded"] = True
    _ran[str(item.parent.path)] = item.parent
    _write(item.parent, Path(item.config.getoption("--nbval-record-dir")))  # now: a run killed later keeps it


def _write(nb_item, folder: Path) -> None:
    """Write one notebook as recorded so far; a cell this run did not execute keeps no stale output."""
    nb = nbformat.from_dict(nb_item.nb)  # a copy: the marks stay on the cells nbval still runs
    for cell in nb.cells:
        if cell.cell_type == "code" and not cell.metadata.pop("nbval_recorded", False):
            cell.outputs, cell.execution_count = [], None
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / Path(str(nb_item.path)).name)


def pytest_sessionfinish(session):
    folder = session.config.getoption("--nbval-record-dir", default=None)
    if not folder:
        return
    for nb_item in _ran.values():
        _write(nb_item, Path(folder))
