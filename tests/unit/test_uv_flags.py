"""scripts/uv_flags.py: the Makefile's uv install gets the indexes, find-links and constraints pip is configured with."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "uv_flags.py"


def load():
    spec = importlib.util.spec_from_file_location("uv_flags", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pip_configuration_becomes_uv_flags():
    listed = "\n".join([
        ":env:.find-links='/opt/wheels'",
        ":env:.default-timeout='180'",
        "global.cert='/etc/ssl/certs/ca-certificates.crt'",
        "global.constraint='/etc/xdg/pip/constraints.txt'",
        "global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'",
        "global.find-links='/opt/wheels'",
    ])
    assert load().uv_flags(listed) == [
        "--index-strategy", "unsafe-best-match",  # pip's way: the best version from any index
        "--find-links", "/opt/wheels",  # once, though listed twice
        "--constraint", "/etc/xdg/pip/constraints.txt",
        "--extra-index-url", "file:///opt/pypi/simple", "--extra-index-url", "file:///opt/pypi-more/simple",
    ]


def test_without_pip_configuration_uv_uses_pypi():
    assert load().uv_flags("") == ["--index-strategy", "unsafe-best-match"]


def test_first_index_url_wins():
    listed = ":env:.index-url='https://mirror.example/simple'\nglobal.index-url='https://other.example/simple'"
    flags = load().uv_flags(listed)
    assert flags.count("--index-url") == 1 and flags[flags.index("--index-url") + 1] == "https://mirror.example/simple"


def test_script_prints_flags_for_this_machine():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True).stdout
    assert out.startswith("--index-strategy unsafe-best-match")
