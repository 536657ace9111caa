"""Artifacts that know where they came from: manifests, checked on every read, committed as a unit.

The notebooks hand results to each other through ``outputs/``. A result is only right when every
input it was made from belongs to the same run: the same profile, model, data and settings. So
every artifact gets a small **manifest** in ``outputs/manifests/<artifact>.json``:

- ``run``: the profile, the model (id and revision, or the package version of the embedded GGUF),
  the data asked for (TinyStories slice, or the text folder with a hash of its files), and the
  profile settings that shape this notebook's results (:data:`SHAPING_FIELDS`);
- ``data``: what the notebook actually read (source, rows, a hash of the text), when it says so;
- ``inputs``: the artifacts it was made from (those it read through :func:`helpers.artifacts.require`
  or wrote before in the same process), each by the digest of its manifest;
- ``notebook``, ``written``, and ``files``: the size and SHA-256 of each of its files.

:func:`verify` (which :func:`helpers.artifacts.require` calls, so no notebook can forget it) checks that
the files are whole and unchanged, that the run matches the current profile, and that each input is
still the one it was made from; otherwise it stops with a message that names what differs and which
notebook to re-run.

:func:`save_outputs` writes all artifacts of one notebook (e.g. 02's dataset, text dataset and
stats) as **one unit**: into a hidden staging folder first, then renamed to ``.commit-NB.ready`` (the
commit point), then moved into place. A process killed before the commit point leaves the previous
set untouched (its staging folder is removed on the next run); one killed after it is rolled forward
by the next call of :func:`recover_commits`. Either way no mix of old and new files is ever read.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .data import text_folder_files
from .errors import check_adapter_folder, check_model_weights_content, disk_full_explained
from .profiles import Profile, select_profile
from .support.files import (
    clean_stale_temp,
    describe_files,
    file_problem,
    file_sha256,
    folder_lock,
    list_files,
    read_json,
    text_sha256,
    token_sha256,
    write_json,
)
from .support.gguf import EMBEDDED_PACKAGE, model_weights_fingerprint
from .support.paths import ARTIFACTS, OUTPUTS_ENV_VAR, artifact_path, outputs_dir, outputs_shown, relative


class MissingArtifactError(FileNotFoundError):
    """An input a notebook needs is missing: the message names the notebook that writes it."""


MANIFEST_DIR = "manifests"
READY_SUFFIX = ".ready"

# Notebooks whose artifacts are all written through save_outputs: an artifact of theirs without a
# manifest was written by an older version or by hand, and is refused. Artifacts of other notebooks
# are checked when they have a manifest and passed through (with a note) when they have none.
CHECKED_PRODUCERS = frozenset({
    "01_load_quantized_model", "02_data_prep", "03_inference_before_training", "04_lora", "05_training",
    "06_inference_after_training", "07_learning_and_forgetting", "08_save_merge_export", "09_your_own_text",
})

# Which profile fields shape which notebook's results (besides the run's identity and the data).
IDENTITY_FIELDS = ("name", "model_name", "backend", "load_in_4bit", "dtype")
DATA_PREP_FIELDS = ("max_seq_length", "packing")
GENERATION_FIELDS = ("prompt", "max_new_tokens", "story_tokens", "repetition_penalty", "eval_stories", "eval_max_tokens",
                     "cpu_bf16", "seed")
LORA_FIELDS = ("lora_r", "lora_alpha", "use_rslora", "lora_dropout", "bias", "target_modules", "seed")
TRAINING_FIELDS = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps",
                   "learning_rate", "embedding_learning_rate", "lr_scheduler_type", "warmup_ratio", "optim",
                   "weight_decay", "seed")
SHAPING_FIELDS: dict[str, tuple[str, ...]] = {
    "01_load_quantized_model": ("max_seq_length",),
    "02_data_prep": DATA_PREP_FIELDS,
    "03_inference_before_training": GENERATION_FIELDS,
    "04_lora": LORA_FIELDS,
    "05_training": DATA_PREP_FIELDS + LORA_FIELDS + TRAINING_FIELDS,
    "06_inference_after_training": DATA_PREP_FIELDS + LORA_FIELDS + TRAINING_FIELDS + GENERATION_FIELDS,
}
DATA_FREE = frozenset({"01_load_quantized_model", "04_lora"})  # results that do not depend on the text

# artifacts read or written in this process: (outputs folder, name) -> manifest digest
_seen: dict[tuple[str, str], str] = {}


class ProvenanceError(RuntimeError):
    """An artifact belongs to another run (profile, model, data or settings differ) or was made from
    inputs that have changed since; the message names the difference and the notebook to re-run."""


class CorruptArtifactError(OSError):
    """An artifact's file is missing, cut off or changed since it was written; the message names it."""

    def __str__(self) -> str:
        return self.args[0]


# --- what identifies a run ----------------------------------------------------------------------


def model_identity(profile: Profile) -> dict:
    """Return the model's id and what pins its weights: the package version of the embedded GGUF,
    the hub revision found in the local cache, or None when it cannot be known offline. A local model
    (``CPT_MODEL``) whose weights are zero-filled raises :class:`helpers.profiles.OwnModelError`
    (:func:`helpers.errors.check_model_weights_content`)."""
    identity = {"id": profile.model_name, "revision": None}
    if profile.is_embedded_model:

        try:
            identity["revision"] = f"{EMBEDDED_PACKAGE} {importlib.metadata.version(EMBEDDED_PACKAGE)}"
        except importlib.metadata.PackageNotFoundError:
            identity["revision"] = f"{EMBEDDED_PACKAGE} (not installed)"
    elif profile.is_smoke_model:
        identity["revision"] = f"random init, seed {profile.seed}"
    elif profile.is_local_path_model and Path(profile.model_name).exists():
        # a folder or .gguf file of the user's (CPT_MODEL): its path says nothing about its weights,
        # so they are identified by their content (hashed once per size and modification time); weights
        # that are present but zero-filled are refused first (issue 40: they load without a word)
        check_model_weights_content(profile.model_name, profile.own_model)
        identity["revision"] = model_weights_fingerprint(profile.model_name)
    else:
        try:
            from huggingface_hub import try_to_load_from_cache  # deferred: heavy

            found = try_to_load_from_cache(profile.model_name, "config.json")
            if isinstance(found, str) and "/snapshots/" in found:
                identity["revision"] = found.split("/snapshots/")[1].split("/")[0]
        except Exception:  # no huggingface_hub, a local folder as model name: no revision known
            pass
    return identity


def data_request(profile: Profile) -> dict:
    """Return the data the profile asks for: the TinyStories slice, or the text folder (its name,
    how it is split into documents, and a hash of the files the loader reads)."""
    if profile.text_dir:
        digest = hashlib.sha256()
        files, _ = text_folder_files(profile.text_dir)
        for name, file in files:
            digest.update(name.encode("utf-8") + b"\0")
            digest.update(file.read_bytes())
        return {"kind": "text folder", "folder": Path(profile.text_dir).name, "files": len(files),
                "files_sha256": digest.hexdigest(), "split_on_blank_lines": profile.split_on_blank_lines}
    return {"kind": "TinyStories", "dataset": profile.dataset_name, "split": profile.dataset_split,
            "offline_sample": profile.local_data_dir}


def data_fingerprint(dataset) -> dict:
    """Return the rows and a SHA-256 of a training set: of its token ids, or of its text."""
    if "input_ids" in dataset.column_names:
        return {"rows": len(dataset), "token_sha256": token_sha256(dataset)}
    return {"rows": len(dataset), "text_sha256": text_sha256(dataset["text"])}


def training_settings(trainer, profile: Profile) -> dict:
    """Return the settings that shape a training run's result, read from the trainer's arguments (so
    that overrides count)."""
    args = trainer.args
    embedding_lr = getattr(args, "embedding_learning_rate", None)
    if embedding_lr is None:
        embedding_lr = getattr(trainer, "embedding_learning_rate", None)

    def plain(value):
        return str(getattr(value, "value", value))

    return {
        "learning_rate": args.learning_rate,
        "embedding_learning_rate": embedding_lr,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "max_steps": args.max_steps,
        "num_train_epochs": args.num_train_epochs,
        "lr_scheduler_type": plain(args.lr_scheduler_type),
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "optim": plain(args.optim),
        "seed": args.seed,
        "max_seq_length": profile.max_seq_length,
        "packing": profile.packing,
        "isolate_documents": profile.isolate_documents,
        "lora": [profile.lora_r, profile.lora_alpha, profile.use_rslora, list(profile.target_modules)],
    }


def run_identity(profile: Profile, notebook: str | None = None, *, trainer=None, dataset=None) -> dict:
    """Return what identifies a run of ``profile``: the model, the data and the settings that shape
    the result. One identity, two uses:

    - an artifact of ``notebook`` (its manifest's ``run``): the data the profile asks for, and the
      profile's settings that shape that notebook's results;
    - a training run (``trainer`` and the ``dataset`` it trains on; every checkpoint's ``run.json``,
      see :mod:`helpers.checkpoints`): the profile's name, a fingerprint of the rows trained on, and
      the settings read from the trainer (:func:`training_settings`).
    """
    if trainer is not None:
        return {
            "profile": profile.name,
            "model": model_identity(profile),
            "data": data_fingerprint(dataset),
            "settings": training_settings(trainer, profile),
        }
    fields = IDENTITY_FIELDS + SHAPING_FIELDS.get(notebook, ())
    settings = {}
    for name in dict.fromkeys(fields):
        value = getattr(profile, name)
        settings[name] = list(value) if isinstance(value, tuple) else value
    return {
        "model": model_identity(profile),
        "data": None if notebook in DATA_FREE else data_request(profile),
        "settings": settings,
    }


def describe_data(data: dict | None) -> str:
    """Return a data request as a short phrase (for messages)."""
    if not data:
        return "none"
    if data.get("kind") == "text folder":
        unit = "one document per paragraph" if data.get("split_on_blank_lines") else "one document per file"
        return (f"text folder {data['folder']!r} ({data['files']} .txt files, {unit}, "
                f"sha256 {data['files_sha256'][:12]})")
    return f"{data.get('dataset')} {data.get('split')}"


def differences(recorded: dict, now: dict, then: str = "then") -> list[str]:
    """Return one line per difference between two run identities (:func:`run_identity`), as
    "what: then X, now Y" (``then`` names the recorded side: "checkpoint" for a checkpoint's run).

    An artifact's data is described in words; a training run's (it names its profile) is its
    fingerprint, as "training data". A setting the recorded side has and the current one no longer
    records counts for a training run only.
    """
    training = "profile" in now
    lines = []
    if recorded.get("model") != now.get("model"):
        lines.append(f"model: {then} {recorded.get('model')}, now {now.get('model')}")
    if recorded.get("data") != now.get("data"):
        if training:
            lines.append(f"training data: {then} {recorded.get('data')}, now {now.get('data')}")
        else:
            lines.append(f"data: {then} {describe_data(recorded.get('data'))}, now {describe_data(now.get('data'))}")
    old, new = recorded.get("settings", {}), now.get("settings", {})
    for key in sorted(set(old) | set(new)):
        if (key in new or training) and old.get(key) != new.get(key):
            lines.append(f"{key}: {then} {old.get(key, 'not recorded')!r}, now {new.get(key, 'not set')!r}")
    return lines


# --- manifests ----------------------------------------------------------------------------------


def manifest_path(name: str, outputs: Path | None = None) -> Path:
    """Return ``outputs/manifests/<name>.json``."""
    return (outputs or outputs_dir()) / MANIFEST_DIR / f"{name}.json"


def read_manifest(name: str, outputs: Path | None = None) -> dict | None:
    """Return the manifest of artifact ``name`` (None when there is none)."""
    path = manifest_path(name, outputs)
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (ValueError, OSError) as err:
        raise CorruptArtifactError(f"{relative(path)} is unreadable ({err}); re-run notebooks/"
                                   f"{ARTIFACTS[name][1]}.ipynb to write it again.") from None


def manifest_digest(manifest: dict) -> str:
    """Return a short digest identifying an artifact's content (its files' hashes)."""
    return hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()[:16]


def check_files(name: str, path: Path, manifest: dict) -> None:
    """Raise :class:`CorruptArtifactError` naming the first file of ``path`` that is missing, cut off
    or changed compared with ``manifest`` (files added since, like datasets' cache files, are allowed)."""
    producer = ARTIFACTS[name][1]
    redo = f"Re-run notebooks/{producer}.ipynb to write it again."
    files = {rel: path if path.is_file() and rel == path.name else path / rel for rel in manifest["files"]}
    for rel, recorded in manifest["files"].items():  # cheap checks first: missing or cut-off files
        file = files[rel]
        shown = relative(file)
        if not file.is_file():
            raise CorruptArtifactError(f"{shown} is missing: {relative(path)} is incomplete (the file was "
                                       f"deleted or never written). {redo}")
        size = file.stat().st_size
        if size != recorded["bytes"]:
            state = "cut off" if size < recorded["bytes"] else "longer than written"
            raise CorruptArtifactError(f"{shown} is {state}: {size} bytes, {recorded['bytes']} when it was "
                                       f"written (an interrupted copy or a full disk?). {redo}")
    for rel, recorded in manifest["files"].items():
        if file_sha256(files[rel]) != recorded["sha256"]:
            raise CorruptArtifactError(f"{relative(files[rel])} has changed since it was written (its SHA-256 differs from "
                                       f"the manifest's): corrupted or overwritten by something else. {redo}")


def verify(name: str, path: Path, profile: Profile | None = None) -> dict | None:
    """Check that artifact ``name`` at ``path`` is whole and belongs to the run of ``profile`` (default:
    the profile the environment selects, as in every notebook's first cell). Returns its manifest, or
    None for an artifact of an unchecked notebook that has none.

    Raises :class:`CorruptArtifactError` (a file missing, cut off or changed) or
    :class:`ProvenanceError` (no manifest; another profile, model, data or setting; an input that
    changed since), each naming the notebook to re-run.
    """
    if profile is None:
        profile = select_profile()[0]
    producer = ARTIFACTS[name][1]
    shown = relative(path)
    manifest = read_manifest(name)
    if manifest is None:
        if producer not in CHECKED_PRODUCERS:
            print(f"note: {shown} has no manifest, so where it came from is not checked")
            return None
        raise ProvenanceError(
            f"{shown} has no manifest ({relative(manifest_path(name))}), so it cannot be checked to belong to this "
            f"run: it was written by an older version of the helpers, or copied in by hand. Re-run "
            f"notebooks/{producer}.ipynb to write it again, with its manifest.")
    check_files(name, path, manifest)
    diff = differences(manifest["run"], run_identity(profile, producer))
    if diff:
        raise ProvenanceError(
            f"{shown} belongs to another run than the current one (profile {profile.name!r}):\n  "
            + "\n  ".join(diff)
            + f"\nRe-run notebooks/{producer}.ipynb with the current settings (and then the notebooks after it), "
              "or go back to the settings it was made with.")
    if path.is_dir() and (path / "adapter_config.json").is_file():
        check_adapter_folder(path, profile)
    outputs = path.parent
    for input_name, digest in manifest.get("inputs", {}).items():
        current = read_manifest(input_name, outputs) if input_name in ARTIFACTS else None
        if current is not None and manifest_digest(current) != digest:
            input_producer = ARTIFACTS[input_name][1]
            raise ProvenanceError(
                f"{shown} was made from an earlier {ARTIFACTS[input_name][0]} (notebook {input_producer} has run "
                f"again since, on {current.get('written', '?')}), so the two do not belong together. Re-run "
                f"notebooks/{producer}.ipynb (and the notebooks after it).")
    _seen[(str(outputs), name)] = manifest_digest(manifest)
    return manifest


# --- writing a notebook's outputs as one unit ------------------------------------------------------


def _is_file_artifact(name: str) -> bool:
    return Path(ARTIFACTS[name][0]).suffix != ""


def _write_one(name: str, value, dest: Path) -> None:
    if callable(value):
        if not _is_file_artifact(name):
            dest.mkdir(parents=True)
        value(dest)
    elif _is_file_artifact(name):
        write_json(dest, value)
    else:
        raise TypeError(f"{name} is a folder: pass a function that writes it into the folder it is given")


def _check_written(name: str, dest: Path) -> None:
    """Refuse to commit an empty or unreadable artifact (the good one it would replace is kept)."""
    problem = None
    if not dest.exists():
        problem = "nothing was written"
    elif dest.is_dir() and not list_files(dest):
        problem = "the folder is empty"
    elif dest.is_file() and dest.stat().st_size == 0:
        problem = "the file is empty"
    else:
        for rel, file in list_files(dest).items():
            if (problem := file_problem(file)) is not None:
                problem = f"{rel}: {problem}"
                break
    if problem:
        raise ValueError(f"Not saving {ARTIFACTS[name][0]}: {problem}. The previous version, if any, is kept.")
    if _is_file_artifact(name) and dest.suffix == ".json":
        content = read_json(dest)
        if content in ({}, [], None):
            raise ValueError(f"Not saving {ARTIFACTS[name][0]}: it holds no data. The previous version, if any, is kept.")


def save_outputs(profile: Profile, outputs: Mapping[str, object], data: dict | None = None,
                 what: str | None = None) -> dict[str, Path]:
    """Write the artifacts of one notebook, each with its manifest, as one unit; return their paths.

    ``outputs`` maps artifact names (from :data:`helpers.support.paths.ARTIFACTS`, all of one notebook) to a
    JSON-serialisable object (file artifacts) or a function ``write(path)`` that writes the artifact
    at the path it is given (a folder that exists, or a file path). ``data``: what the notebook read
    (source, rows, text hash...), recorded in each manifest. ``what``: how a disk-full message names
    them (default: "the outputs of <notebook>").

    Nothing replaces the current artifacts until every new one is written and checked (not empty,
    each file readable): an error, Ctrl-C or a full disk (:class:`helpers.errors.DiskFullError`)
    leaves the previous set as it was.
    """
    if not outputs:
        raise ValueError("save_outputs needs at least one artifact")
    producers = {ARTIFACTS[name][1] for name in outputs}  # KeyError for an unknown name
    if len(producers) != 1:
        raise ValueError(f"save_outputs writes the artifacts of one notebook at a time; got {sorted(producers)}")
    notebook = producers.pop()
    folder = outputs_dir()
    recover_commits(folder)
    inputs = {n: d for (f, n), d in _seen.items() if f == str(folder) and n not in outputs}
    staging = Path(tempfile.mkdtemp(prefix=f".commit-{notebook}.tmp-{os.getpid()}-", dir=folder))
    try:
        shown = folder / ARTIFACTS[next(iter(outputs))][0] if len(outputs) == 1 else folder
        with disk_full_explained(shown, what or f"the outputs of {notebook}"):
            written = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            for name, value in outputs.items():
                dest = staging / "artifacts" / ARTIFACTS[name][0]
                dest.parent.mkdir(parents=True, exist_ok=True)
                _write_one(name, value, dest)
                _check_written(name, dest)
                manifest = {
                    "artifact": name, "path": ARTIFACTS[name][0], "notebook": notebook, "written": written,
                    "run": run_identity(profile, notebook), "data": data, "inputs": inputs,
                    "files": describe_files(dest),
                }
                write_json(staging / MANIFEST_DIR / f"{name}.json", manifest)
        ready = folder / f".commit-{notebook}{READY_SUFFIX}"
        with folder_lock(folder):  # another process saving into outputs/ waits its turn
            recover_commits(folder, quiet=True)  # a unit committed meanwhile by another process
            os.replace(staging, ready)  # the commit point: from here on the new set is what counts
            _roll_forward(ready, folder)
            paths = {}
            for name in outputs:
                paths[name] = folder / ARTIFACTS[name][0]
                _seen[(str(folder), name)] = manifest_digest(read_json(manifest_path(name, folder)))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return paths


def _roll_forward(ready: Path, folder: Path) -> None:
    """Move a committed unit's artifacts and manifests into place (idempotent: each item still in
    ``ready`` is moved, the version it replaces goes to ``ready/old`` and is removed at the end)."""
    for kind, destination in (("artifacts", folder), (MANIFEST_DIR, folder / MANIFEST_DIR)):
        source = ready / kind
        if not source.is_dir():
            continue
        destination.mkdir(parents=True, exist_ok=True)
        for item in sorted(source.iterdir()):
            target = destination / item.name
            if target.exists() or target.is_symlink():
                old = ready / "old" / kind / item.name
                old.parent.mkdir(parents=True, exist_ok=True)
                if old.exists():
                    shutil.rmtree(old) if old.is_dir() else old.unlink()
                os.replace(target, old)
            os.replace(item, target)
    shutil.rmtree(ready)


def recover_commits(folder: Path | None = None, quiet: bool = False) -> list[str]:
    """Finish what a killed save left in ``outputs/``: roll forward every committed unit
    (``.commit-NB.ready``) and remove staging folders of processes that are gone. Returns the
    notebooks whose unit was rolled forward. Runs under the folder's lock (:func:`helpers.support.files.folder_lock`),
    so it never rolls forward a unit that another process is moving into place."""
    folder = folder or outputs_dir()
    done = []
    if not folder.is_dir():
        return done
    with folder_lock(folder):
        for ready in sorted(folder.glob(f".commit-*{READY_SUFFIX}")):
            _roll_forward(ready, folder)
            notebook = ready.name[len(".commit-"): -len(READY_SUFFIX)]
            print(f"Finished saving the outputs of {notebook}, which an interrupted run had written completely "
                  "but not yet moved into place.")
            done.append(notebook)
        clean_stale_temp(folder, quiet=quiet)
    return done


def missing_message(name: str, path: Path) -> str:
    """Return what :func:`require` says when an artifact is missing: the notebook that writes it, the
    folder it was looked for in, and how notebooks in separate runtimes share that folder."""
    producer, file = ARTIFACTS[name][1], ARTIFACTS[name][0]
    if os.environ.get(OUTPUTS_ENV_VAR, "").strip():
        return (f"{file} is missing from {outputs_shown()}. Run notebooks/{producer}.ipynb first, with the same "
                f"{OUTPUTS_ENV_VAR}; it writes {file} there.")
    return (f"{relative(path)} is missing. Run notebooks/{producer}.ipynb first; it writes {file} into outputs/. "
            f"The notebooks pass results to each other through that folder, so they must share it: run them in "
            f"one runtime, or set {OUTPUTS_ENV_VAR} to a folder they all reach, such as Google Drive (on Colab "
            f"the first cell offers it).")


def require(name: str, profile=None) -> Path:
    """Return the path of an artifact that must already exist and belong to the current run.

    Raises :class:`MissingArtifactError` naming the notebook to run first when it is missing, and
    (see :func:`helpers.artifacts.verify`) ``CorruptArtifactError`` when one of its files is
    missing, cut off or changed, ``ProvenanceError`` when it was made for another profile, model,
    data or settings than ``profile`` (default: the profile the environment selects) or from inputs
    that changed since. Each message names the notebook to re-run.
    """
    path = artifact_path(name)
    recover_commits(path.parent)
    if not path.exists():
        raise MissingArtifactError(missing_message(name, path))
    verify(name, path, profile)
    return path
