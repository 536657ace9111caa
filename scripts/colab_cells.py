"""Own the Colab parts of every notebook in one place (like unslothai/notebooks' generator).

For each notebooks/py/NN_*.py (the jupytext sources), this makes sure that:

* the first cell is a markdown cell holding an "Open in Colab" badge for that notebook (the GitHub
  path form of the URL, built from REPOSITORY below), followed by the notebook's title;
* the first code cell starts with the Colab-only install block, which clones the repository and
  installs the GPU extra with the project's pins when (and only when) it runs on Colab, and then
  calls `helpers.session.start`.

    python scripts/colab_cells.py          # rewrite the sources in place
    python scripts/colab_cells.py --check  # exit 1 if any source is out of date (run by the tests)

Forks: change REPOSITORY and BRANCH, run this script, then `make notebooks`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPOSITORY = "cpt-tutorial/cpt-raw-text"
BRANCH = "main"
ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "notebooks" / "py"

BADGE = (
    "# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    "(https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{name}.ipynb)\n"
    "#\n"
)
INSTALL = '''import sys

if "google.colab" in sys.modules:  # Colab only: get the repository and install it with the project's pins
    import os
    import subprocess

    if not os.path.isdir("/content/cpt-raw-text"):
        subprocess.run(["git", "clone", "--depth", "1", "--branch", "{branch}",
                        "https://github.com/{repo}.git", "/content/cpt-raw-text"], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/cpt-raw-text[gpu]"], check=True)
    os.chdir("/content/cpt-raw-text/notebooks")
    sys.path.insert(0, "/content/cpt-raw-text")

'''
BADGE_LINE = re.compile(r"^# \[!\[Open In Colab\].*\n#\n", re.M)
INSTALL_BLOCK = re.compile(r'import sys\n\nif "google\.colab" in sys\.modules:.*?\n\n(?=\S)', re.S)


def render(path: Path) -> str:
    """Return the source of one notebook with the badge and install block in place."""
    text = path.read_text(encoding="utf-8")
    name = path.stem
    badge = BADGE.format(repo=REPOSITORY, branch=BRANCH, name=name)
    install = INSTALL.format(repo=REPOSITORY, branch=BRANCH)
    text = BADGE_LINE.sub("", text, count=1)
    text = text.replace("# %% [markdown]\n", "# %% [markdown]\n" + badge, 1)
    text = INSTALL_BLOCK.sub("", text, count=1)
    first_code = text.index("# %%\n")
    return text[: first_code + len("# %%\n")] + install + text[first_code + len("# %%\n"):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report sources that are out of date")
    parser.add_argument("files", nargs="*", type=Path, help="default: every notebooks/py/NN_*.py")
    args = parser.parse_args(argv)
    stale = []
    for path in args.files or sorted(SOURCES.glob("[0-9][0-9]_*.py")):
        wanted = render(path)
        if wanted != path.read_text(encoding="utf-8"):
            stale.append(path.name)
            if not args.check:
                path.write_text(wanted, encoding="utf-8")
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run python scripts/colab_cells.py", file=sys.stderr)
        return 1
    print(f"{'checked' if args.check else 'updated'}: {len(stale)} stale source(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
