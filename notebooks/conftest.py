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


def pytest_sessionfinish(session):
    folder = session.config.getoption("--nbval-record-dir", default=None)
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    for path, nb_item in sorted(_ran.items()):
        for cell in nb_item.nb.cells:  # a cell this run did not execute keeps no stale output
            if cell.cell_type == "code" and not cell.metadata.pop("nbval_recorded", False):
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb_item.nb, Path(folder) / Path(path).name)
