"""Own the Colab parts of every notebook in one place (like unslothai/notebooks' generator).

For each notebooks/py/NN_*.py (the jupytext sources), this makes sure that:

* the first cell is a markdown cell holding an "Open in Colab" badge for that notebook (the GitHub
  path form of the URL, built from REPOSITORY below), followed by the notebook's title;
* the first code cell starts with the Colab-only block (:data:`INSTALL`, a few lines): on Colab, and
  only there, it clones the repository (once per runtime) and runs this file's :func:`bootstrap`
  from the clone; then the cell calls `helpers.session.start`.

:func:`bootstrap` prints every step it takes, with the seconds since it started:

1. the project: updated with ``git pull --ff-only`` (a newer bootstrap then takes over), at which commit;
2. the install: the GPU extra with the project's pins, keeping Colab's preinstalled torch when it lies
   in unsloth's range (``torch>=...`` in pyproject.toml); skipped when this runtime already did it;
3. the outputs folder: ``$CPT_OUTPUTS`` if set; else Google Drive is offered (``drive.mount``, folder
   ``MyDrive/cpt-raw-text/outputs``), so that every notebook can run in a runtime of its own; declined,
   it says plainly that the notebooks must then share one runtime. ``CPT_DRIVE=1`` / ``0`` answers
   without the prompt. The one-notebook walkthrough (one runtime by design) is not asked;
4. the GPU, its compute capability and free memory, the dtype and the attention route
   (:func:`helpers.session.gpu_plan`); a GPU of less than 20 GiB gets the lean profile
   (``gpu-mistral7b-lean``) unless ``CPT_PROFILE`` says otherwise.

    python scripts/colab_cells.py          # rewrite the sources in place
    python scripts/colab_cells.py --check  # exit 1 if any source is out of date (run by the tests)

Forks: change REPOSITORY and BRANCH, run this script, then `make notebooks`.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
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
DRIVE_MOUNT = "/content/drive"
DRIVE_OUTPUTS = "MyDrive/cpt-raw-text/outputs"  # under the mount point
SMALL_GPU_GIB = 20  # below this, the Colab path takes the lean profile (a T4 has 15 GB)
LEAN_PROFILE = "gpu-mistral7b-lean"
YES = ("y", "yes", "1", "true", "on")
# The first code cell of every notebook: on Colab (only there) clone the repository, then run
# bootstrap() below from the clone. Everything else (update, install, Drive, GPU report) lives here.
# {run_name} is "colab_bootstrap", or "colab_bootstrap_one_runtime" for the one-notebook walkthrough.
INSTALL = '''import sys

if "google.colab" in sys.modules:  # Colab only: clone the repository; its scripts/colab_cells.py installs it
    import runpy
    import subprocess
    subprocess.run("test -d {clone} || git clone -q --depth 1 -b {branch} https://github.com/{repo}.git {clone}", shell=True, check=True)
    runpy.run_path("{clone}/scripts/colab_cells.py", run_name="{run_name}")

'''
BADGE_LINE = re.compile(r"^# \[!\[Open In Colab\].*\n#\n", re.M)
INSTALL_BLOCK = re.compile(r'import sys\n\nif "google\.colab" in sys\.modules:.*?\n\n(?=\S)', re.S)


def install_block(one_runtime: bool = False) -> str:
    """Return the Colab-only block of a first code cell (``one_runtime``: the walkthrough's)."""
    return INSTALL.format(repo=REPOSITORY, branch=BRANCH, clone=CLONE_DIR,
                          run_name="colab_bootstrap_one_runtime" if one_runtime else "colab_bootstrap")


def badge(name: str) -> str:
    """Return the badge line (and its blank comment line) of notebook ``name``."""
    return BADGE.format(repo=REPOSITORY, branch=BRANCH, name=name)


def render(path: Path) -> str:
    """Return the source of one notebook with the badge and install block in place."""
    text = path.read_text(encoding="utf-8")
    text = BADGE_LINE.sub("", text, count=1)
    text = text.replace("# %% [markdown]\n", "# %% [markdown]\n" + badge(path.stem), 1)
    text = INSTALL_BLOCK.sub("", text, count=1)
    first_code = text.index("# %%\n")
    return text[: first_code + len("# %%\n")] + install_block() + text[first_code + len("# %%\n"):]


# --- the bootstrap: runs on Colab, from the clone ------------------------------------------------


def pins(root: Path) -> tuple[str, list[str]]:
    """Return ``(torch's range, the pinned requirements of the GPU path)`` from ``root``'s pyproject.toml."""
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [r.split(";")[0].strip() for r in project["dependencies"] + project["optional-dependencies"]["gpu"]]
    torch_range = next(r for r in requirements if re.match(r"torch\b", r))[len("torch"):]
    return torch_range, [r for r in requirements if "==" in r]


def torch_accepted(version: str | None, torch_range: str) -> bool:
    """Return True when torch ``version`` (e.g. ``2.8.0+cu126``) lies in ``torch_range`` (``>=2.4,<2.15``)."""
    if not version:
        return False
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    return Version(version) in SpecifierSet(torch_range)


def installed_version(package: str) -> str | None:
    """Return the installed version of ``package`` (None when it is not installed)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


class Steps:
    """Prints one line per step: ``[seconds since the start] step     : what happened``."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.started = clock()

    def say(self, step: str, text: str) -> None:
        print(f"[{self.clock() - self.started:6.1f} s] {step:<9}: {text}", flush=True)


def _git(run, clone_dir: str, *args: str) -> str:
    result = run(["git", "-C", clone_dir, *args], capture_output=True, text=True)
    return (result.stdout or "").strip() if result.returncode == 0 else ""


def update(clone_dir: str, steps: Steps, run=subprocess.run) -> tuple[str, str]:
    """``git pull --ff-only`` the clone; return ``(commit before, commit after)`` and say which."""
    before = _git(run, clone_dir, "rev-parse", "--short", "HEAD")
    pulled = run(["git", "-C", clone_dir, "pull", "-q", "--ff-only"], capture_output=True, text=True)
    after = _git(run, clone_dir, "rev-parse", "--short", "HEAD")
    if pulled.returncode != 0:
        reason = ((pulled.stderr or "").strip().splitlines() or ["git pull failed"])[-1]
        steps.say("project", f"{clone_dir} at {before}; the update failed ({reason}), so this commit is used")
    elif after != before:
        steps.say("project", f"{clone_dir} updated {before} -> {after}")
    else:
        steps.say("project", f"{clone_dir} at {after} (up to date with {BRANCH})")
    return before, after


def install(clone_dir: str, steps: Steps, run=subprocess.run, torch_version: str | None = None) -> list[str]:
    """Install the clone with the GPU extra and the project's pins, once per runtime; return the pip
    command (empty when this runtime had done it). Colab's torch is kept when unsloth accepts it."""
    root = Path(clone_dir)
    torch_range, pinned = pins(root)
    torch_version = torch_version or installed_version("torch")
    command = [sys.executable, "-m", "pip", "install", "-q", "-e", f"{clone_dir}[gpu]"]
    if torch_accepted(torch_version, torch_range):
        command.append(f"torch=={torch_version}")
        steps.say("torch", f"keeping Colab's torch {torch_version} (unsloth accepts torch{torch_range})")
    else:
        steps.say("torch", f"Colab's torch {torch_version or '(none)'} is outside unsloth's torch{torch_range}: pip "
                           "installs one inside it (restart the runtime if Colab asks, then run this cell again)")
    marker = root / ".colab-installed"
    wanted = " ".join(command[3:])
    if marker.is_file() and marker.read_text(encoding="utf-8") == wanted:
        steps.say("install", "done earlier in this runtime: pip " + wanted)
        return []
    steps.say("install", f"pip {wanted}  (pins: {', '.join(pinned)}; takes minutes) ...")
    run(command, check=True)
    marker.write_text(wanted, encoding="utf-8")
    steps.say("install", "done")
    return command


def choose_outputs(clone_dir: str, steps: Steps, one_runtime: bool = False, env=None, ask=input,
                   mount=None) -> str:
    """Set ``CPT_OUTPUTS`` for this runtime and return the folder the artifacts go to (see the module
    docstring, step 3). ``mount`` defaults to ``google.colab.drive.mount``."""
    env = os.environ if env is None else env
    local = f"{clone_dir}/outputs"
    if env.get("CPT_OUTPUTS", "").strip():
        steps.say("outputs", f"{env['CPT_OUTPUTS']} (CPT_OUTPUTS is set)")
        return env["CPT_OUTPUTS"]
    if one_runtime:
        steps.say("outputs", f"{local}: this notebook runs the whole walkthrough in one runtime (set CPT_OUTPUTS "
                             "to keep its outputs elsewhere)")
        return local
    drive_folder = f"{DRIVE_MOUNT}/{DRIVE_OUTPUTS}"
    mounted = Path(f"{DRIVE_MOUNT}/MyDrive").is_dir()
    answer = env.get("CPT_DRIVE", "").strip().lower() or ("yes" if mounted else "")
    if not answer:
        try:
            answer = ask(f"Keep the outputs on Google Drive ({DRIVE_OUTPUTS}), so that each notebook can run in a "
                         "runtime of its own? [Y/n] ").strip().lower() or "yes"
        except (EOFError, OSError):  # no way to ask
            answer = "no"
    if answer in YES:
        if not mounted:
            if mount is None:
                from google.colab import drive

                mount = drive.mount
            steps.say("drive", f"drive.mount({DRIVE_MOUNT!r}): Colab asks you to allow access ...")
            mount(DRIVE_MOUNT)
        Path(drive_folder).mkdir(parents=True, exist_ok=True)
        env["CPT_OUTPUTS"] = drive_folder
        steps.say("outputs", f"{drive_folder} on Google Drive (CPT_OUTPUTS): every notebook, in any runtime, "
                             "reads and writes there")
        return drive_folder
    steps.say("outputs", f"{local}, in this runtime only. Without Drive the notebooks must share one runtime: "
                         "Colab gives each notebook a runtime of its own, and a later notebook does not see what this "
                         "one writes (05 rebuilds 02's data itself; 06 needs 05's adapter). Use notebooks/"
                         "walkthrough.ipynb (00-06 in one notebook), or run this cell again and choose Drive.")
    return local


def report_gpu(steps: Steps, env=None) -> list[str]:
    """Say which GPU this runtime has, with its compute capability and free memory, and the dtype and
    attention route the profile will use; a GPU under SMALL_GPU_GIB gets the lean profile."""
    env = os.environ if env is None else env
    import torch

    from helpers.profiles import select_profile
    from helpers.session import gpu_plan

    if not torch.cuda.is_available():
        steps.say("gpu", "none. Choose Runtime > Change runtime type > a GPU (T4 on free Colab) and run this cell "
                         "again; without one the notebooks run the small CPU profile")
        return []
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    if total_gib < SMALL_GPU_GIB and not env.get("CPT_PROFILE", "").strip():
        env["CPT_PROFILE"] = LEAN_PROFILE
        steps.say("profile", f"{LEAN_PROFILE}, since this GPU has {total_gib:.1f} GiB (under {SMALL_GPU_GIB}): 1 packed "
                             "row x 2 steps with offloaded checkpointing, 13.1 GiB peak in the project's H200 run "
                             "(set CPT_PROFILE before this cell to choose another)")
    else:
        profile, reason = select_profile(env)
        steps.say("profile", f"{profile.name} ({reason})")
    profile, _ = select_profile(env)
    lines = gpu_plan(profile)
    for line in lines:
        step, text = line.split(":", 1)
        steps.say(step.strip(), text.strip())
    return lines


def bootstrap(clone_dir: str = CLONE_DIR, one_runtime: bool = False, run=subprocess.run, ask=input, mount=None,
              env=None, steps: Steps | None = None, updated: bool = False) -> None:
    """Colab only (the first cell runs this file from the clone): update the clone, install it with
    the GPU extra and the project's pins (once per runtime), choose the outputs folder, make
    ``helpers`` importable, move into ``notebooks/`` and report the GPU. Every step is printed."""
    steps = steps or Steps()
    if not updated:
        before, after = update(clone_dir, steps, run)
        if after and after != before:  # the new bootstrap takes over
            import runpy

            fresh = runpy.run_path(f"{clone_dir}/scripts/colab_cells.py", run_name="colab_cells_updated")
            fresh["bootstrap"](clone_dir, one_runtime=one_runtime, run=run, ask=ask, mount=mount, env=env,
                               steps=steps, updated=True)
            return
    install(clone_dir, steps, run)
    if clone_dir not in sys.path:
        sys.path.insert(0, clone_dir)
    os.chdir(f"{clone_dir}/notebooks")
    choose_outputs(clone_dir, steps, one_runtime=one_runtime, env=env, ask=ask, mount=mount)
    report_gpu(steps, env)
    steps.say("ready", "set up; the notebook's own header follows")


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


if __name__ in ("colab_bootstrap", "colab_bootstrap_one_runtime"):  # runpy.run_path from a first cell
    bootstrap(one_runtime=__name__.endswith("one_runtime"))
elif __name__ == "__main__":
    sys.exit(main())
