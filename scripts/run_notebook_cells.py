"""Run selected code cells of a notebook's jupytext source, in order, in one namespace.

    python scripts/run_notebook_cells.py notebooks/py/01_load_quantized_model.py run_probe quantize_4bit

Runs the notebook's first code cell (the session header: profile, seeds, versions), then every code
cell whose source contains one of the given strings, after importing torch, importlib, math, os and
sys and creating an empty ``results`` dict (which skipped cells would otherwise have done). Used to
measure GPU-only cells (unsloth's patches and NF4 in notebook 01, LoRA memory in notebook 04) on a GPU machine without running the notebooks before it;
the output is what those cells print in the full series.
"""

from __future__ import annotations

import sys
from pathlib import Path


def code_cells(path: Path) -> list[str]:
    """Return the code cells of a jupytext percent-format file, in order."""
    cells, current, kind = [], [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# %%"):
            if kind == "code":
                cells.append("\n".join(current))
            current, kind = [], "markdown" if "[markdown]" in line else "code"
        elif kind is not None:
            current.append(line)
    if kind == "code":
        cells.append("\n".join(current))
    return cells


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    path, patterns = Path(argv[0]), argv[1:]
    cells = code_cells(path)
    chosen = [cells[0]] + [c for c in cells[1:] if any(p in c for p in patterns)]
    namespace: dict = {"__name__": "__main__"}
    # the imports that earlier, skipped cells would have made
    exec("import importlib.metadata, importlib.util, math, os, sys\nimport torch\nresults = {}", namespace)
    for index, source in enumerate(chosen):
        print(f"\n===== cell {index}: {source.strip().splitlines()[0][:80]}", flush=True)
        exec(compile(source, f"{path.name}[{index}]", "exec"), namespace)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
