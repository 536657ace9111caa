"""Execute the numbered notebooks in order, each in its own fresh kernel.

    python scripts/run_notebooks.py                       # executed copies -> outputs/executed/
    python scripts/run_notebooks.py --inplace             # write outputs into notebooks/*.ipynb (to commit)
    python scripts/run_notebooks.py notebooks/03_*.ipynb  # a subset, still in the order given

The kernel runs in notebooks/ (as in JupyterLab and under nbval). Stops at the first failing
notebook and prints the time each one took. Each notebook still gets a fresh kernel of its own, but
the next one is started while the current notebook runs (as JupyterLab starts a kernel when a
notebook is opened), so the series does not wait for eleven kernel start-ups in a row.

Progress bars stay out of the saved notebooks: the kernels start with helpers.support.progress.QUIET_PROGRESS_ENV
(the switches of tqdm, transformers/huggingface_hub and datasets), and any bar drawn all the same (a
library's plain tqdm.auto, which ignores TQDM_DISABLE in a notebook) is removed before saving: widget
views and the "\\r"-rewritten text lines of a tqdm meter.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # helpers/, also when the script runs without the editable install
    sys.path.insert(0, str(ROOT))

from helpers.support.progress import QUIET_PROGRESS_ENV  # noqa: E402

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# One tqdm meter: "Loading weights:  42%|████▏     | 114/272 [00:00<00:00, 1117.97it/s]"
PROGRESS_METER = re.compile(r"\d+%\|[^|\r\n]*\|[^\r\n]*\[[\d:]+<[\d:?]+")


def coalesce_streams(outputs: list) -> list:
    """Merge consecutive stream outputs of the same stream (a streamed story arrives as hundreds of
    small writes; Jupyter shows them as one block, and so should the saved file)."""
    merged: list = []
    for output in outputs:
        if (output.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                and merged[-1]["name"] == output["name"]):
            merged[-1]["text"] += output["text"]
        else:
            merged.append(output)
    return merged


def strip_progress_text(text: str) -> str:
    """Return ``text`` without its tqdm meters: each "\\r"-separated segment that is a meter goes, and so
    does a line left blank by that; every other character is kept."""
    lines = []
    for line in text.split("\n"):
        segments = line.split("\r")
        kept = [segment for segment in segments if not PROGRESS_METER.search(segment)]
        if len(kept) < len(segments) and not "".join(kept).strip():
            continue
        lines.append("\r".join(kept))
    return "\n".join(lines)


def is_progress_output(output) -> bool:
    """True for a progress bar drawn as a widget (a widget view whose text form is a tqdm meter, or
    that has no text form) or as stream text made only of tqdm meters."""
    if output.get("output_type") == "stream":
        return bool(output["text"].strip()) and not strip_progress_text(output["text"]).strip()
    data = output.get("data", {})
    if WIDGET_VIEW in data:
        return not data.get("text/plain") or bool(PROGRESS_METER.search(str(data["text/plain"])))
    return False


def strip_progress(outputs: list) -> tuple[list, int]:
    """Return ``(outputs without progress bars, how many outputs were removed or trimmed)``; a stream
    that mixes text and bars keeps its text."""
    kept, touched = [], 0
    for output in outputs:
        if is_progress_output(output):
            touched += 1
            continue
        if output.get("output_type") == "stream":
            text = strip_progress_text(output["text"])
            if text != output["text"]:
                touched += 1
                output["text"] = text
        kept.append(output)
    return kept, touched


def cell_seconds(cell) -> float:
    """Return the seconds a cell took to execute, from nbclient's timing metadata (0.0 if not recorded)."""
    timing = cell.metadata.get("execution", {})
    started, ended = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (started and ended):
        return 0.0
    parse = lambda stamp: datetime.fromisoformat(stamp.replace("Z", "+00:00"))  # noqa: E731
    return (parse(ended) - parse(started)).total_seconds()


def start_kernel(path: Path, env: dict) -> AsyncKernelManager:
    """Return a kernel manager whose fresh python3 kernel is starting up in ``path``'s folder (it is
    not waited for: :class:`nbclient.NotebookClient` waits until it is ready before the first cell)."""
    km = AsyncKernelManager(kernel_name="python3")
    # the argument nbclient itself gives its kernels: no IPython history file is written
    run_sync(km.start_kernel)(cwd=str(path.parent), env=env, extra_arguments=["--HistoryManager.hist_file=:memory:"])
    return km


def stop_kernel(km: AsyncKernelManager | None) -> None:
    """Shut down the kernel of ``km`` (a no-op for None or a kernel that is gone)."""
    if km is not None and run_sync(km.is_alive)():
        run_sync(km.shutdown_kernel)(now=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/NN_*.ipynb")
    parser.add_argument("--inplace", action="store_true", help="overwrite the notebooks with their executed versions")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "executed", help="folder for executed copies")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds allowed per cell")
    parser.add_argument("--slowest", type=int, default=3, help="print the N slowest cells of each notebook (0: none)")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    notebooks = [p.resolve() for p in args.notebooks] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        print("no notebooks found", file=sys.stderr)
        return 2
    total = time.perf_counter()
    env = {**os.environ, **QUIET_PROGRESS_ENV}
    upcoming = start_kernel(notebooks[0], env)
    for position, path in enumerate(notebooks):
        started = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        km, upcoming = upcoming, None
        client = NotebookClient(nb, km=km, timeout=args.timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            if position + 1 < len(notebooks):  # boots while this notebook runs
                upcoming = start_kernel(notebooks[position + 1], env)
            client.execute()
        except BaseException as err:  # a failing cell, or Ctrl-C: no kernel is left behind
            stop_kernel(upcoming)
            if not isinstance(err, CellExecutionError):
                raise
            print(f"FAILED {path.name} after {time.perf_counter() - started:.0f} s\n{err}", file=sys.stderr)
            return 1
        finally:
            stop_kernel(km)
        slowest = sorted(((cell_seconds(cell), index) for index, cell in enumerate(nb.cells)), reverse=True)
        stripped = 0
        for cell in nb.cells:  # volatile, machine-specific metadata stays out of the repo
            cell.metadata.pop("execution", None)
            if cell.cell_type == "code":
                cell.outputs, touched = strip_progress(coalesce_streams(cell.outputs))
                stripped += touched
        if not any(WIDGET_VIEW in output.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                   for output in cell.outputs):
            nb.metadata.pop("widgets", None)  # the state of the bars' widgets, now unused
        if stripped:
            print(f"   {path.name}: {stripped} progress-bar output(s) removed before saving", flush=True)
        target = path if args.inplace else args.out / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
        shown = target.relative_to(ROOT) if target.is_relative_to(ROOT) else target  # --out may lie outside the repo
        print(f"ok {path.name:<40} {time.perf_counter() - started:6.1f} s -> {shown}", flush=True)
        if args.slowest:
            print("   slowest cells: " + ", ".join(f"[{index}] {seconds:.1f} s" for seconds, index in slowest[:args.slowest]
                                                   if seconds), flush=True)
    print(f"all {len(notebooks)} notebooks ran in {time.perf_counter() - total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
