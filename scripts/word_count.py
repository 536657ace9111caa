#!/usr/bin/env python3
"""Count the prose of the lesson: markdown words in notebooks 00-06, on the main path and in all.

    python scripts/word_count.py            # prints the table; exits 1 when a limit is exceeded

The main path of a notebook is every markdown cell above its "Going further" heading (a markdown
heading whose text starts with "Going further"); digressions live below it. A word is a
whitespace-separated piece with a letter or digit in it, after link targets, images and HTML tags
are removed (the Colab badge counts nothing). Fenced code in markdown counts too: the learner reads it.
The limits are the tutorial's: at most 5,000 words on the main paths of 00-06, 7,500 in all, and no
markdown cell over 250 words. tests/repo/test_word_count.py runs this on every test run.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = [f"{n:02d}" for n in range(7)]
MAIN_PATH_LIMIT, TOTAL_LIMIT, CELL_LIMIT = 5000, 7500, 250
GOING_FURTHER = re.compile(r"^#+\s*Going further", re.IGNORECASE | re.MULTILINE)


def words(markdown: str) -> int:
    """Return the number of words a reader reads in ``markdown`` (link targets, images and tags removed)."""
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", markdown)  # images (the Colab badge)
    text = re.sub(r"\]\([^)]*\)", "] ", text)  # link targets
    text = re.sub(r"<[^>]+>", " ", text)  # HTML tags
    return sum(1 for piece in text.split() if re.search(r"\w", piece))


def notebook_counts(path: Path) -> dict:
    """Return ``{"main": words above "Going further", "total": words, "cells": [(index, words), ...]}``
    for the markdown cells of one .ipynb file."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    main = total = 0
    in_main = True
    per_cell = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        source = "".join(cell["source"])
        if GOING_FURTHER.search(source):
            in_main = False
        count = words(source)
        per_cell.append((index, count))
        total += count
        main += count if in_main else 0
    return {"main": main, "total": total, "cells": per_cell}


def counts(root: Path = ROOT) -> dict[str, dict]:
    """Return :func:`notebook_counts` for each of notebooks 00-06, keyed by file name."""
    result = {}
    for number in NOTEBOOKS:
        (path,) = sorted((root / "notebooks").glob(f"{number}_*.ipynb"))
        result[path.name] = notebook_counts(path)
    return result


def problems(table: dict[str, dict]) -> list[str]:
    """Return one line per limit exceeded (empty when the prose is within the limits)."""
    main = sum(c["main"] for c in table.values())
    total = sum(c["total"] for c in table.values())
    found = []
    if main > MAIN_PATH_LIMIT:
        found.append(f"main path: {main} words (limit {MAIN_PATH_LIMIT})")
    if total > TOTAL_LIMIT:
        found.append(f"in all: {total} words (limit {TOTAL_LIMIT})")
    for name, c in table.items():
        for index, count in c["cells"]:
            if count > CELL_LIMIT:
                found.append(f"{name} cell {index}: {count} words (limit {CELL_LIMIT})")
    return found


def main() -> int:
    table = counts()
    print(f"{'notebook':<40}{'main path':>10}{'in all':>8}{'longest cell':>14}")
    for name, c in table.items():
        index, longest = max(c["cells"], key=lambda item: item[1], default=(None, 0))
        print(f"{name:<40}{c['main']:>10}{c['total']:>8}{longest:>9} [{index}]")
    main_words = sum(c["main"] for c in table.values())
    total = sum(c["total"] for c in table.values())
    longest = max((count for c in table.values() for _, count in c["cells"]), default=0)
    print(f"{'00-06':<40}{main_words:>10}{total:>8}{longest:>14}")
    print(f"limits: main path {MAIN_PATH_LIMIT}, in all {TOTAL_LIMIT}, a cell {CELL_LIMIT}")
    found = problems(table)
    for line in found:
        print(f"OVER: {line}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
