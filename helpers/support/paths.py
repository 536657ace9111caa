"""Where things live: the project root, ``outputs/``, and the artifacts notebooks hand to each other.

Every notebook runs in its own kernel, so state passes through files under ``outputs/``, or under the
folder ``$CPT_OUTPUTS`` names (:func:`outputs_location`): one that outlives a runtime, such as a Google
Drive folder on Colab, where every notebook gets a fresh runtime of its own. Each
artifact is registered in :data:`ARTIFACTS` with the notebook that writes it, so a notebook run out of
order can say exactly which notebook to run first (:func:`require`). :func:`require` also checks,
through :mod:`helpers.artifacts`, that the artifact is whole and belongs to the current run.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .files import clean_stale_temp

ROOT_ENV_VAR = "CPT_ROOT"
OUTPUTS_ENV_VAR = "CPT_OUTPUTS"  # the artifacts' folder, if not <root>/outputs (e.g. on Google Drive)

# artifact name -> (path relative to outputs/, notebook that writes it)
ARTIFACTS: dict[str, tuple[str, str]] = {
    "model_info": ("01_model_info.json", "01_load_quantized_model"),
    "dataset": ("02_dataset", "02_data_prep"),
    "text_dataset": ("02_text_dataset", "02_data_prep"),
    "data_stats": ("02_data_stats.json", "02_data_prep"),
    "before": ("03_before.json", "03_inference_before_training"),
    "lora_info": ("04_lora_info.json", "04_lora"),
    "adapter": ("05_adapter", "05_training"),
    "train_result": ("05_train_result.json", "05_training"),
    "after": ("06_after.json", "06_inference_after_training"),
    "forgetting": ("07_forgetting.json", "07_learning_and_forgetting"),
    "merged": ("08_merged", "08_save_merge_export"),
    "save_and_merge": ("08_save_and_merge.json", "08_save_merge_export"),
    "own_text": ("09_own_text.json", "09_your_own_text"),
    "packing_vs_padding": ("09_packing_vs_padding.json", "09_your_own_text"),
    "memory_stages": ("memory_stages.json", "any notebook"),
}


class OutputsNotAFolderError(NotADirectoryError):
    """``outputs`` (or the cache folder) exists but is not a folder; the message says what to do."""


class OutputsNotWritableError(PermissionError):
    """``outputs`` (or the cache folder) cannot be created or written (a read-only mount, no
    permission); the message says what to do. A ``PermissionError``, like the error it explains."""

    def __str__(self) -> str:
        return self.args[0] if len(self.args) == 1 else super().__str__()


_cleaned: set[str] = set()  # folders already cleaned of interrupted saves in this process


def _how_to_move(path: Path) -> str:
    """Return what to set to put ``path`` elsewhere: the variable that named it (``CPT_OUTPUTS``,
    ``CPT_CACHE_DIR``), or ``CPT_OUTPUTS`` / ``CPT_ROOT`` for the default ``outputs/``."""
    if os.environ.get("CPT_CACHE_DIR", "").strip() and path == Path(os.environ["CPT_CACHE_DIR"]):
        return "set CPT_CACHE_DIR to a folder you can write to (or unset it for the cache in the outputs folder)"
    if os.environ.get(OUTPUTS_ENV_VAR, "").strip():
        return f"set {OUTPUTS_ENV_VAR} to a folder you can write to (or unset it for {project_root() / 'outputs'})"
    return f"set {OUTPUTS_ENV_VAR} to a folder you can write to (or {ROOT_ENV_VAR} to another project root)"


def _folder(path: Path, what: str) -> Path:
    """Create ``path`` as a folder (explaining a file or a dangling link in the way, a file above it,
    a read-only or forbidden place) and, once per process, finish or remove what interrupted saves
    left in it. Raises :class:`OutputsNotAFolderError` / :class:`OutputsNotWritableError` with one
    sentence of what happened and what to set."""
    if path == outputs_location() and os.environ.get(OUTPUTS_ENV_VAR, "").strip():
        shown = f"{path} ({OUTPUTS_ENV_VAR})"
    else:
        shown = path.name if path.parent == project_root() else f"{relative(path.parent)}/{path.name}"  # not resolved
    if path.is_symlink() and not path.exists():
        raise OutputsNotAFolderError(
            f"{what} {shown} is a link to a folder that does not exist. Create the folder it points to, "
            f"or remove the link (a real folder is then made).")
    if path.exists() and not path.is_dir():
        raise OutputsNotAFolderError(
            f"{what} {shown} is a file, not a folder, so nothing can be saved there. Rename or remove "
            f"that file (the notebooks then create the folder), or {_how_to_move(path)}.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except NotADirectoryError:
        above = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise OutputsNotAFolderError(
            f"{what} {shown} cannot be made: {above} above it is a file, not a folder. "
            f"{_how_to_move(path)[0].upper()}{_how_to_move(path)[1:]}.") from None
    except OSError as err:
        reason = "the file system is read-only" if err.errno == errno.EROFS else (err.strerror or str(err)).lower()
        raise OutputsNotWritableError(
            f"{what} {shown} cannot be created: {reason} ({err.filename or path}). "
            f"{_how_to_move(path)[0].upper()}{_how_to_move(path)[1:]}.") from None
    if str(path) not in _cleaned:
        _cleaned.add(str(path))

        clean_stale_temp(path)
    return path


def project_root() -> Path:
    """Return the repository root: ``$CPT_ROOT`` if set, else the nearest parent of the current
    directory holding ``pyproject.toml`` and ``helpers/``, else the parent of this package."""
    if os.environ.get(ROOT_ENV_VAR):
        return Path(os.environ[ROOT_ENV_VAR]).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file() and (candidate / "helpers").is_dir():
            return candidate
    return Path(__file__).resolve().parents[2]  # helpers/support/paths.py -> the root


def outputs_location() -> Path:
    """Return the folder the artifacts live in, without creating it: ``$CPT_OUTPUTS`` when set (``~``
    expanded; a relative path is taken from the project root), else ``<root>/outputs``."""
    value = os.environ.get(OUTPUTS_ENV_VAR, "").strip()
    if not value:
        return project_root() / "outputs"
    path = Path(value).expanduser()
    return path if path.is_absolute() else project_root() / path


def outputs_shown() -> str:
    """Return how messages name the outputs folder: ``outputs/``, or ``$CPT_OUTPUTS`` with its path."""
    if os.environ.get(OUTPUTS_ENV_VAR, "").strip():
        return f"{outputs_location()} (from {OUTPUTS_ENV_VAR})"
    return "outputs/"


def outputs_dir() -> Path:
    """Return the outputs folder (:func:`outputs_location`, created if missing); every notebook writes
    its results there."""
    return _folder(outputs_location(), "The outputs folder")


def cache_dir() -> Path:
    """Return the folder for converted models (``$CPT_CACHE_DIR`` or ``outputs/cache``), created if missing."""
    return _folder(Path(os.environ.get("CPT_CACHE_DIR") or outputs_dir() / "cache"), "The cache folder")


def artifact_path(name: str) -> Path:
    """Return the path of a registered artifact (it may not exist yet)."""
    if name not in ARTIFACTS:
        raise KeyError(f"Unknown artifact {name!r}; known: {', '.join(ARTIFACTS)}")
    return outputs_dir() / ARTIFACTS[name][0]


def relative(path: Path | str) -> str:
    """Return ``path`` relative to the project root when it lies inside it (for printing without
    absolute local paths), as ``$CPT_OUTPUTS/...`` when it lies in that folder, else its name only."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(project_root()))
    except ValueError:
        pass
    if os.environ.get(OUTPUTS_ENV_VAR, "").strip():
        try:
            inside = path.relative_to(outputs_location().resolve())
        except ValueError:
            pass
        else:
            return f"${OUTPUTS_ENV_VAR}" + ("" if str(inside) == "." else f"/{inside}")
    return f".../{path.name}"


SWITCH_ON, SWITCH_OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def read_switch(name: str, default: bool, env=None) -> bool:
    """Return the yes/no ``CPT_*`` switch ``name`` from ``env`` (default: ``os.environ``).

    Unset or blank: ``default``. Accepted (any case): 1/true/yes/on and 0/false/no/off. Anything else
    (``2``, ``flase``, ``disable``) raises ``ValueError`` naming the switch and the values it takes,
    instead of silently meaning one or the other (issue 31, case 8)."""
    env = os.environ if env is None else env
    value = str(env.get(name, "")).strip().lower()
    if not value:
        return default
    if value in SWITCH_ON:
        return True
    if value in SWITCH_OFF:
        return False
    raise ValueError(f"{name}={env.get(name)!r} is not a yes/no value: use 1 (or true/yes/on) or 0 (or "
                     f"false/no/off), or unset it for the default ({'on' if default else 'off'}).")
