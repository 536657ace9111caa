"""Execute the numbered notebooks in order, each in its own fresh kernel.

    python scripts/run_notebooks.py                       # executed copies -> outputs/executed/
    python scripts/run_notebooks.py --inplace             # write outputs into notebooks/*.ipynb (to commit)
    python scripts/run_notebooks.py notebooks/03_*.ipynb  # a subset, still in the order given

The kernel runs in notebooks/ (as in JupyterLab and under nbval). Stops at the first failing
notebook and prints the time each one took.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/NN_*.ipynb")
    parser.add_argument("--inplace", action="store_true", help="overwrite the notebooks with their executed versions")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "executed", help="folder for executed copies")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    notebooks = [p.resolve() for p in args.notebooks] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        print("no notebooks found", file=sys.stderr)
        return 2
    total = time.perf_counter()
    for path in notebooks:
        started = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()
        except CellExecutionError as err:
            print(f"FAILED {path.name} after {time.perf_counter() - started:.0f} s\n{err}", file=sys.stderr)
            return 1
        for cell in nb.cells:  # volatile, machine-specific metadata stays out of the repo
            cell.metadata.pop("execution", None)
            if cell.cell_type == "code":
                cell.outputs = coalesce_streams(cell.outputs)
        target = path if args.inplace else args.out / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
        shown = target.relative_to(ROOT) if target.is_relative_to(ROOT) else target  # --out may lie outside the repo
        print(f"ok {path.name:<40} {time.perf_counter() - started:6.1f} s -> {shown}", flush=True)
    print(f"all {len(notebooks)} notebooks ran in {time.perf_counter() - total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
