"""The series as a person runs it: JupyterLab in a real browser, "Run All Cells", one notebook at a time.

Notebooks 00-02 (the profile, model loading, the data) are opened from JupyterLab's file browser,
each run with Run > Run All Cells in its own kernel, then closed with its kernel shut down, in order,
as the notebooks hand their results to the next through outputs/. After each run the test reads what
the page shows: every code cell ran, no cell shows an error or anything on stderr (a warning, a text
progress bar), the first cell prints the profile header, plots are drawn as images, progress bars are
widgets (ipywidgets), and "IProgress not found" appears nowhere. A screenshot of each notebook stays
in outputs/browser/. A second test proves the checks fail when a cell raises or warns.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from playwright.sync_api import expect

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "outputs" / "browser"  # the same folder as conftest.py's

SERIES = ["00_setup", "01_load_quantized_model", "02_data_prep"]
NOTEBOOK_TIMEOUT_S = int(os.environ.get("CPT_BROWSER_NOTEBOOK_TIMEOUT", "900"))

# Everything the page shows about the open notebook, read in one pass.
READ_NOTEBOOK = """
(panel) => {
  const cells = [...panel.querySelectorAll('.jp-Notebook .jp-Cell')];
  return cells.map((cell, i) => {
    const index = i + 1;  // numbered from 1, as in the status bar ("Cell 3/18")
    const code = cell.classList.contains('jp-CodeCell');
    const prompt = code ? (cell.querySelector('.jp-InputArea-prompt')?.textContent || '').trim() : '';
    const outputs = [...cell.querySelectorAll('.jp-OutputArea-output')].map(o => ({
      mime: o.getAttribute('data-mime-type') || '',
      text: (o.textContent || '').slice(0, 2000),  // innerText is empty for cells scrolled out of view
    }));
    const images = [...cell.querySelectorAll('.jp-OutputArea-output img')].map(i => i.naturalWidth);
    const widgets = cell.querySelectorAll('.jp-OutputArea-output .jupyter-widgets.widget-hprogress').length;
    return {index, code, prompt, outputs, images, widgets};
  });
}
"""
# Done: the first code cell has its execution count, no cell waits ("[*]"), the kernel is idle.
RUN_FINISHED = """
(panel) => {
  const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent);
  const status = panel.querySelector('.jp-Notebook-ExecutionIndicator')?.getAttribute('data-status');
  return prompts.length > 0 && /\\d/.test(prompts[0]) && !prompts.some(p => p.includes('*')) && status === 'idle';
}
"""
RUN_STARTED = """
(panel) => [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].some(p => /[*\\d]/.test(p.textContent))
"""
WIDGETS_DRAWN = "(panel) => !panel.textContent.includes('Loading widget...')"
PROBLEM_MIMES = ("application/vnd.jupyter.stderr", "application/vnd.jupyter.error")


@dataclass
class NotebookRun:
    name: str
    seconds: float
    cells: list[dict]
    page_text: str
    header_shown: str  # what the first code cell with output shows on screen, scrolled into view
    problems: list[str] = field(default_factory=list)

    @property
    def code_cells(self) -> list[dict]:
        return [cell for cell in self.cells if cell["code"]]

    @property
    def images(self) -> list[int]:
        return [width for cell in self.cells for width in cell["images"]]

    @property
    def progress_widgets(self) -> int:
        return sum(cell["widgets"] for cell in self.cells)


def check(run: NotebookRun, expects_plot: bool) -> list[str]:
    """Return what is wrong with what the page shows after Run All (empty when all is well)."""
    problems = []
    not_run = [cell["index"] for cell in run.code_cells if not re.search(r"\d", cell["prompt"])]
    if not_run:
        problems.append(f"code cells {not_run} did not run (Run All stopped early)")
    for cell in run.code_cells:
        for output in cell["outputs"]:
            if output["mime"] in PROBLEM_MIMES:
                error = "error" in output["mime"] or "Traceback" in output["text"]
                kind = "an error" if error else "stderr output (a warning?)"
                problems.append(f"cell {cell['index']} shows {kind}: {output['text'][:600]}")
    header = run.header_shown
    if not (f"notebook : {run.name}" in header and "profile  :" in header):
        problems.append(f"the first output on screen is no profile header; it is: {header[:300]!r}")
    if expects_plot and not run.images:
        problems.append("the notebook draws a plot, but no image is rendered")
    blank = [width for width in run.images if width == 0]
    if blank:
        problems.append(f"{len(blank)} image(s) failed to render")
    for text in ("IProgress not found", "Error displaying widget", "Loading widget..."):
        if text in run.page_text:
            problems.append(f"the page shows {text!r}")
    return problems


# Closing asks "Shut down the notebook?" and, for a notebook with new outputs, whether to save it: the
# answers are shut down, and discard (the committed notebook stays as it is). Never "Save".
CLOSE_ANSWERS = re.compile(r"^(Shut Down|Discard|Ok)$", re.I)
PANEL_GONE_OR_DIALOG = "(panel) => !panel.isConnected || document.querySelector('.jp-Dialog') !== null"


def close_and_shut_down(page, panel, lab_server) -> None:
    """File > Close and Shut Down Notebook, answering its dialogs; return once the server has no session
    or kernel left."""
    handle = panel.element_handle()
    page.locator(".lm-MenuBar-item").filter(has_text=re.compile(r"^File$")).click()
    page.locator('.lm-Menu-item[data-command="filemenu:close-and-cleanup"]').click()
    for _ in range(3):
        _wait_for(page, PANEL_GONE_OR_DIALOG, handle, 60, "the notebook to close or ask a question")
        dialog = page.locator(".jp-Dialog")
        if not dialog.count():
            break
        dialog.get_by_role("button", name=CLOSE_ANSWERS).first.click()
        dialog.wait_for(state="detached")
    panel.wait_for(state="detached")
    deadline = time.monotonic() + 60
    while lab_server.api("sessions") or lab_server.api("kernels"):
        assert time.monotonic() < deadline, "the notebook's kernel was not shut down within 60 s"
        page.wait_for_timeout(200)


def _wait_for(page, condition: str, arg, seconds: float, what: str) -> None:
    """Wait until the JavaScript ``condition(arg)`` holds; on time-out, fail saying ``what`` was awaited,
    with the cell prompts, the status bar and a screenshot (outputs/browser/timeout.png)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(condition, arg=arg, timeout=seconds * 1000)
    except PlaywrightTimeout:
        page.screenshot(path=str(ARTIFACTS / "timeout.png"))
        prompts = page.evaluate("() => [...document.querySelectorAll('.jp-InputArea-prompt')].map(p => p.textContent)")
        status = page.locator(".jp-StatusBar-Widget").first.inner_text()
        raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}; prompts {prompts}; "
                             f"status bar {status!r}; screenshot outputs/browser/timeout.png") from None


def _wait_for_idle_kernel(page, lab_server, relative: str, seconds: float = 180) -> None:
    """Wait until the server has a session for the notebook whose kernel is idle (it has started)."""
    deadline = time.monotonic() + seconds
    while True:
        states = [s["kernel"]["execution_state"] for s in lab_server.api("sessions") if s["path"] == relative]
        if states == ["idle"]:
            return
        assert time.monotonic() < deadline, f"the kernel of {relative} is not idle after {seconds:.0f} s: {states}"
        page.wait_for_timeout(250)


def open_from_file_browser(page, relative: str, lab_server):
    """Open ``relative`` (a notebook path from the repository root) by double-clicking through the file
    browser, starting from its home folder; return the notebook panel once its kernel is idle."""
    page.locator(".jp-BreadCrumbs-home").click()
    parts = relative.split("/")
    for depth, part in enumerate(parts):
        item = page.locator(".jp-DirListing-item").filter(
            has=page.locator(".jp-DirListing-itemText", has_text=re.compile(rf"^{re.escape(part)}$")))
        item.dblclick()
        if depth < len(parts) - 1:
            page.locator(".jp-BreadCrumbs").get_by_text(part, exact=True).wait_for()
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").filter(has=page.locator(".jp-Notebook"))
    panel.locator(".jp-CodeCell").first.wait_for()
    _wait_for_idle_kernel(page, lab_server, relative)
    panel.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').wait_for()
    return panel


def run_all_in_lab(page, relative: str, lab_server, screenshot: Path | None = None) -> NotebookRun:
    """Open the notebook, Run > Run All Cells, wait until the kernel is idle with every cell done, read
    the page, screenshot it, then File > Close and Shut Down Notebook (discarding the outputs)."""
    name = Path(relative).stem
    panel = open_from_file_browser(page, relative, lab_server)
    started = time.perf_counter()
    page.locator(".lm-MenuBar-item").filter(has_text=re.compile(r"^Run$")).click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    handle = panel.element_handle()
    _wait_for(page, RUN_STARTED, handle, 60, f"Run All to start in {name}")
    _wait_for(page, RUN_FINISHED, handle, NOTEBOOK_TIMEOUT_S, f"Run All to finish in {name}")
    _wait_for(page, WIDGETS_DRAWN, handle, 60, f"the widgets of {name} to be drawn")
    seconds = time.perf_counter() - started
    cells = panel.evaluate(READ_NOTEBOOK)
    first_output = panel.locator(".jp-CodeCell .jp-OutputArea-output").first
    header_shown = ""
    if first_output.count():
        first_output.scroll_into_view_if_needed()
        try:  # a cell scrolled into view is drawn a frame later (content-visibility)
            expect(first_output).to_contain_text("profile", use_inner_text=True, timeout=10_000)
        except AssertionError:
            pass  # check() reports what is shown instead
        header_shown = first_output.inner_text() if first_output.is_visible() else ""
    run = NotebookRun(name, seconds, cells, panel.evaluate("(p) => p.textContent"), header_shown)
    if screenshot is not None:
        last_image = panel.locator(".jp-OutputArea-output img").last
        if last_image.count():
            last_image.scroll_into_view_if_needed()
        page.screenshot(path=str(screenshot))
    close_and_shut_down(page, panel, lab_server)
    return run


def _has_plot(name: str) -> bool:
    source = (ROOT / "notebooks" / "py" / f"{name}.py").read_text()
    return "plt.show()" in source


def test_series_runs_in_jupyterlab(lab_page, lab_server):
    print(f"\nJupyterLab started as: {lab_server.how}")
    runs = []
    for name in SERIES:
        run = run_all_in_lab(lab_page, f"notebooks/{name}.ipynb", lab_server,
                             screenshot=ARTIFACTS / f"{name}.png")
        run.problems = check(run, expects_plot=_has_plot(name))
        print(f"{name}: Run All took {run.seconds:.1f} s, {len(run.code_cells)} code cells, "
              f"{len(run.images)} image(s), {run.progress_widgets} progress widget(s)")
        runs.append(run)
        assert not run.problems, f"{name} in JupyterLab (screenshot outputs/browser/{name}.png):\n" + "\n".join(
            run.problems)
    # Progress bars are widgets in JupyterLab: "Loading weights" of notebook 01 is one.
    assert sum(run.progress_widgets for run in runs) >= 1, "no progress bar was drawn as a widget"


def test_the_checks_fail_when_a_cell_raises_or_warns(lab_page, lab_server):
    folder = ARTIFACTS / "failing"
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("from helpers.session import start\nprofile = start('raises')"),
        nbformat.v4.new_code_cell("import warnings\nwarnings.warn('a deliberate warning')"),
        nbformat.v4.new_code_cell("raise ValueError('a deliberate failure')"),
        nbformat.v4.new_code_cell("print('never reached')"),
    ]
    nbformat.write(nb, folder / "raises.ipynb")
    run = run_all_in_lab(lab_page, "outputs/browser/failing/raises.ipynb", lab_server)
    problems = check(run, expects_plot=True)
    report = "\n".join(problems)
    assert "ValueError: a deliberate failure" in report, report
    assert "a deliberate warning" in report, report
    assert "code cells [4] did not run" in report, report
    assert "no image is rendered" in report, report
    assert "profile header" not in report, report  # the header of the first cell is seen on screen
