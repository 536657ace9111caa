"""Fixtures of the browser test: a JupyterLab server started as the README says, and headless Chromium.

The test runs with ``make browser`` (part of ``make test``), which installs Chromium first and sets
``CPT_BROWSER_TEST=1``. Run by hand: ``CPT_BROWSER_TEST=1 .venv/bin/python -m pytest tests/browser``.
Without that variable, a plain ``pytest tests`` reports these tests as skipped, with the reason.
A missing Chromium fails the test and says what to install; it never skips.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "outputs" / "browser"  # screenshots and the server's log, kept after the run
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = ("The browser test needs Chromium. Install it with `apt-get install -y chromium` (Debian; "
                "`make browser` does this when run as root), or point CPT_CHROMIUM at a Chromium or Chrome binary.")
# Headless Chromium that reaches nothing but the loopback server (without the background-networking
# switches it opens connections of its own, which this machine refuses many at a time).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
# JupyterLab settings for the test's own, empty settings folder: no news or update checks (they would
# reach the internet and pop up a notification over the notebook), and no autosave (the run must not
# rewrite the committed notebooks with its outputs).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CPT_BROWSER_TEST") == "1":
        return
    skip = pytest.mark.skip(reason="the browser test runs with `make browser` (part of `make test`), "
                                   "or with CPT_BROWSER_TEST=1; it needs Chromium")
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Return the Chromium binary to drive: CPT_CHROMIUM, else the first of chromium / chromium-browser /
    google-chrome on PATH; fail with what to install when there is none."""
    wanted = os.environ.get("CPT_CHROMIUM")
    if wanted:
        if not (Path(wanted).is_file() and os.access(wanted, os.X_OK)):
            pytest.fail(f"CPT_CHROMIUM={wanted} is not an executable file. {INSTALL_HINT}")
        return wanted
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lab_command() -> tuple[list[str], str]:
    """Return the command that starts JupyterLab and how it was chosen: the README's ``.venv/bin/jupyter
    lab`` when the checkout has that venv, else the interpreter running pytest (``-m jupyter lab``)."""
    readme_path = ROOT / ".venv" / "bin" / "jupyter"
    if readme_path.exists():
        return [str(readme_path), "lab"], ".venv/bin/jupyter lab (the README's path)"
    return [sys.executable, "-m", "jupyter", "lab"], f"{sys.executable} -m jupyter lab (no .venv in this checkout)"


class LabServer:
    def __init__(self, url: str, token: str, how: str, process: subprocess.Popen, log: Path):
        self.url, self.token, self.how, self.process, self.log = url, token, how, process, log

    def api(self, path: str):
        """GET ``/api/<path>`` with the token and return the decoded JSON."""
        request = urllib.request.Request(f"{self.url}/api/{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory) -> LabServer:
    """Start JupyterLab on a free loopback port with a random token, rooted at the repository, as a
    person would from the README; stop it (and its kernels) afterwards."""
    home = tmp_path_factory.mktemp("jupyter")
    for relative, values in LAB_SETTINGS.items():
        target = home / "settings" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    command, how = lab_command()
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # tests/conftest.py sets Agg; a person's kernel draws plots inline
    if command[0].startswith(str(ROOT / ".venv")):
        # The README's path must find `helpers` through the project's own install, not through a
        # PYTHONPATH that a developer's shell happens to carry.
        env.pop("PYTHONPATH", None)
    env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTER_DATA_DIR=str(home / "data"))
    # As root (CI, containers) Jupyter refuses to start without --allow-root; the README says so too.
    root_flag = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    port, token = _free_port(), secrets.token_hex(16)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "jupyterlab.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [*command, *root_flag, "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT}",
             f"--LabApp.user_settings_dir={home / 'settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}"],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = LabServer(f"http://127.0.0.1:{port}", token, how, process, log)
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            pytest.fail(f"`{how}` exited with code {process.returncode} before serving:\n{server.log_tail()}")
        try:
            server.api("status")
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"`{how}` did not answer on {server.url} within 120 s:\n{server.log_tail()}")
            time.sleep(0.25)
    yield server
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright makes a fresh, temporary user-data-dir for each launch.
        launched = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def lab_page(browser, lab_server):
    """A page with JupyterLab loaded and its file browser listed."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(f"{lab_server.url}/lab?reset&token={lab_server.token}")  # no tabs restored from a workspace
    page.locator(".jp-DirListing-content").wait_for(timeout=120_000)
    yield page
    context.close()
