"""Own the Colab parts of every notebook in one place (like unslothai/notebooks' generator).

For each notebooks/py/NN_*.py (the jupytext sources), this makes sure that:

* the first cell is a markdown cell holding an "Open in Colab" badge for that notebook (the GitHub
  path form of the URL, built from REPOSITORY below), followed by the notebook's title;
* the first code cell starts with the Colab-only block: on Colab (and only there) it clones the
  repository and runs this file's :func:`bootstrap` from the clone, which installs the GPU extra with
  the project's pins, makes ``helpers`` importable and moves into ``notebooks/``; then the cell calls
  `helpers.session.start`.

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
CLONE_DIR = "/content/cpt-raw-text"
# The first code cell of every notebook: on Colab (only there) clone the repository, then run
# bootstrap() below from the clone. Everything else (install, sys.path, working folder) lives here.
INSTALL = '''import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d {clone} || git clone -q --depth 1 -b {branch} https://github.com/{repo}.git {clone}", shell=True, check=True)
    runpy.run_path("{clone}/scripts/colab_cells.py", run_name="colab_bootstrap")

'''
BADGE_LINE = re.compile(r"^# \[!\[Open In Colab\].*\n#\n", re.M)
INSTALL_BLOCK = re.compile(r'import sys\n\nif "google\.colab" in sys\.modules:.*?\n\n(?=\S)', re.S)


def render(path: Path) -> str:
    """Return the source of one notebook with the badge and install block in place."""
    text = path.read_text(encoding="utf-8")
    name = path.stem
    badge = BADGE.format(repo=REPOSITORY, branch=BRANCH, name=name)
    install = INSTALL.format(repo=REPOSITORY, branch=BRANCH, clone=CLONE_DIR)
    text = BADGE_LINE.sub("", text, count=1)
    text = text.replace("# %% [markdown]\n", "# %% [markdown]\n" + badge, 1)
    text = INSTALL_BLOCK.sub("", text, count=1)
    first_code = text.index("# %%\n")
    return text[: first_code + len("# %%\n")] + install + text[first_code + len("# %%\n"):]


def bootstrap(clone_dir: str = CLONE_DIR) -> None:
    """Colab only (the first cell runs this file from the fresh clone): install the repository with
    the GPU extra and the project's pins (once per runtime), make ``helpers`` importable, and move
    into ``notebooks/`` so that every notebook runs where it runs locally."""
    import os
    import subprocess

    marker = Path(clone_dir) / ".colab-installed"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{clone_dir}[gpu]"], check=True)
        marker.touch()
    if clone_dir not in sys.path:
        sys.path.insert(0, clone_dir)
    os.chdir(f"{clone_dir}/notebooks")


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


if __name__ == "colab_bootstrap":  # runpy.run_path(..., run_name="colab_bootstrap") from a notebook's first cell
    bootstrap()
elif __name__ == "__main__":
    sys.exit(main())
