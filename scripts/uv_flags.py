"""Print the `uv pip install` flags that repeat pip's own configuration, for the Makefile's install.

    uv pip install $(python scripts/uv_flags.py) torch==2.13.0 ...

uv installs the same packages in a fraction of pip's time, but it does not read pip's configuration
(pip.conf, PIP_* variables). A machine may rely on it: this project's CI machines, for example, find
the CPU build of torch through `find-links` and extra package indexes on their disk. So this script asks
pip (`pip config list`) and passes on what uv understands: index-url, extra-index-url, find-links and
constraint. pip weighs every index alike and takes the best version from any of them; uv by default
stops at the first index that has a package, so `--index-strategy unsafe-best-match` is added to keep
pip's behaviour. With no pip configuration the output is just that flag, and uv uses PyPI, as pip would.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

# pip's key -> uv's flag; pip's values may list several entries separated by whitespace
FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraint"}
LINE = re.compile(r"^(?P<scope>[^.]*)\.(?P<key>[\w-]+)='(?P<value>.*)'$")


def uv_flags(config_list: str) -> list[str]:
    """Return uv's flags for the output of `pip config list` (lines like ``global.find-links='/opt/wheels'``;
    ``:env:`` lines come from PIP_* variables). Each value is passed once, in the order pip lists them."""
    flags: list[str] = ["--index-strategy", "unsafe-best-match"]
    seen: set[tuple[str, str]] = set()
    for line in config_list.splitlines():
        match = LINE.match(line.strip())
        if not match or match["key"] not in FLAGS:
            continue
        for value in match["value"].split():
            if match["key"] == "index-url" and any(key == "index-url" for key, _ in seen):
                continue  # one index replaces PyPI: the first listed (pip's environment variable comes first)
            if (match["key"], value) not in seen:
                seen.add((match["key"], value))
                flags += [FLAGS[match["key"]], value]
    return flags


def main() -> None:
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    print(shlex.join(uv_flags(listed.stdout if listed.returncode == 0 else "")))


if __name__ == "__main__":
    main()
