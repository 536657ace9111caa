"""Checkpointed, resumable training, and saves that survive interruptions and full disks.

A run of :func:`build_resumable_trainer` writes a checkpoint every ``save_steps`` optimizer steps
into ``outputs/05_trainer`` (or a given folder): the adapter, the optimizer and scheduler state, the
random-number generators and the trainer state, everything ``Trainer`` needs to continue exactly
where it was. :func:`train_resumable` starts from the last *complete* checkpoint when there is one,
so after a Ctrl-C, a crash or a killed process, running the same cell again continues the run
rather than restarting it, and reaches the same weights and losses as an uninterrupted run.

**Same run only.** Every checkpoint also records the run it belongs to (``run.json``): a hash of the
training rows, the model, and the settings that shape the result (learning rates, batch, steps,
schedule, LoRA). :func:`train_resumable` refuses to resume a checkpoint of another run (other data,
another learning rate, another model) and says how to start fresh or keep the old run, so two runs
never share a checkpoint folder silently. A checkpoint without its optimizer or scheduler state, with
a cut-off file, or without its run record counts as incomplete and is set aside like a half-written
one; the run resumes from the one before.

It also turns three failures into messages that say what to do: Ctrl-C (where the last checkpoint
is, how to resume), CUDA out of memory (which knobs to lower, see
:func:`helpers.errors.explain_oom`) and a full disk (which folder, how much space is free).

**unsloth issue #3108.** Resuming a PEFT model that trains ``embed_tokens`` / ``lm_head`` as full
copies (``modules_to_save``) can fail with ``ValueError: loaded state dict contains a parameter group
that doesn't match the size of optimizer's group``: when the model is rebuilt or reloaded for the
resumed run, those copies may come back frozen (``requires_grad=False``), so the new optimizer's
embedding group is smaller (or missing) than the one whose state was saved. Each checkpoint here
also records the trainable parameter set and the optimizer's groups (``trainable_set.json``); before
the optimizer state is loaded, :func:`repair_trainable_set` makes exactly those parameters trainable
again and :func:`check_param_groups` confirms the groups match, or stops with an explanation.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
from pathlib import Path

from .artifacts import differences, run_identity, save_outputs
from .errors import DiskFullError, check_training_settings, disk_full_explained, out_of_memory_explained
from .profiles import Profile, select_profile
from .support.files import (
    FOLDER_MANIFEST,
    FolderInUseError,
    exclusive_use,
    file_problem,
    folder_manifest_problem,
    read_json,
    save_directory_atomically,
    write_folder_manifest,
    write_json,
)
from .support.paths import artifact_path, outputs_dir, relative
from .training import build_trainer, check_trainer_state, describe_param_groups

TRAINER_DIR_NAME = "05_trainer"
TRAINABLE_SET_FILE = "trainable_set.json"
TRAINER_STATE_FILE = "trainer_state.json"  # transformers writes it last in a checkpoint
RUN_FILE = "run.json"  # the run a checkpoint belongs to (written by the recorder callback)
STATE_FILES = ("optimizer.pt", "scheduler.pt")  # without them a resume restarts Adam and the warm-up
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors")
PREVIOUS_SUFFIX = ".previous"
INCOMPLETE_DIR = "incomplete"  # subfolder of the output folder for checkpoints set aside  # where the checkpoints of a replaced run are kept
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


class TrainingInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C, the notebook's stop button); the message says where the last
    checkpoint is and how to resume. A ``KeyboardInterrupt``, so it stops a notebook like one."""


class ResumeMismatchError(RuntimeError):
    """The model to resume does not train the same parameters as the checkpoint it resumes from."""


def default_output_dir() -> Path:
    """Return ``outputs/05_trainer``, where notebook 05's trainer writes its checkpoints."""
    return outputs_dir() / TRAINER_DIR_NAME


# --- which parameters train ---------------------------------------------------------------------


def trainable_names(model) -> list[str]:
    """Return the names of the parameters that require gradients, in model order."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def _active_adapters(model) -> list[str]:
    active = getattr(model, "active_adapters", None) or getattr(model, "active_adapter", None) or "default"
    return [active] if isinstance(active, str) else list(active)


def adapter_parameter_names(model) -> list[str]:
    """Return the parameters a PEFT model must train: the LoRA matrices and the ``modules_to_save``
    copies (embed_tokens, lm_head) of its active adapter(s)."""
    adapters = _active_adapters(model)
    names = []
    for name, _ in model.named_parameters():
        is_adapter = ".modules_to_save." in name or re.search(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)\.", name)
        if is_adapter and any(f".{adapter}." in f"{name}." for adapter in adapters):
            names.append(name)
    return names


def record_trainable_set(folder: Path | str, model, optimizer=None) -> Path:
    """Write ``trainable_set.json`` into a checkpoint folder: the trainable parameter names and the
    optimizer's groups (:func:`helpers.training.describe_param_groups`). :func:`train_resumable`
    checks a resumed model against it."""
    record = {"trainable": trainable_names(model)}
    if optimizer is not None:
        record["param_groups"] = describe_param_groups(optimizer, model)
    return write_json(Path(folder) / TRAINABLE_SET_FILE, record)


def _recorder_callback(run: dict | None = None):
    """Return a ``TrainerCallback`` that records the trainable set and ``run`` (see
    :func:`helpers.artifacts.run_identity`) into every checkpoint (built lazily so that importing helpers does not import
    transformers). ``run.json`` is written last: a checkpoint without it is incomplete."""
    from transformers import TrainerCallback  # deferred: heavy

    class TrainableSetRecorder(TrainerCallback):
        def on_save(self, args, state, control, model=None, optimizer=None, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if model is not None and folder.is_dir():
                record_trainable_set(folder, model, optimizer)
                if state.is_world_process_zero:  # the size and hash of every file, checked before a resume
                    write_folder_manifest(folder)
                if run is not None:
                    write_json(folder / RUN_FILE, run)

    return TrainableSetRecorder()


# --- which run a checkpoint belongs to ----------------------------------------------------------


def set_aside_run(output_dir: Path | str) -> Path | None:
    """Move every ``checkpoint-*`` of ``output_dir`` into ``<output_dir>.previous``, so that a new run
    starts in a clean folder; return that folder (None if there was nothing to move).

    Nothing is deleted: a ``.previous`` folder already there (the run set aside before, e.g. a killed
    run's only checkpoint when ``--fresh`` runs twice) is first renamed ``<output_dir>.previous-<UTC time
    of its newest file>`` (:func:`rotate_previous`). The printed message says where each went and how
    to resume one."""
    output_dir = Path(output_dir)
    found = sorted(output_dir.glob("checkpoint-*")) if output_dir.is_dir() else []
    if not found:
        return None
    previous = output_dir.with_name(output_dir.name + PREVIOUS_SUFFIX)
    kept = rotate_previous(previous)
    previous.mkdir(parents=True)
    for folder in found:
        os.replace(folder, previous / folder.name)
    earlier = (f" The run set aside before it was kept, as {relative(kept)}." if kept is not None else "")
    print(f"Moved the {len(found)} checkpoint folder(s) of the previous run to {relative(previous)}: this run starts "
          f"from step 0 in a clean folder.{earlier} To resume one of them later, move its checkpoint-* folders back "
          f"into {relative(output_dir)} and resume with the settings it was made with (train_resumable(trainer), or "
          "scripts/train_cpt.py without --fresh); delete them when you no longer need them.")
    return previous


def rotate_previous(previous: Path) -> Path | None:
    """Rename an existing ``<output_dir>.previous`` folder to ``<output_dir>.previous-<UTC time of its
    newest file>`` (``-2``, ``-3`` … when that name is taken) and return the new path; None when there
    is none (an empty one is removed). Used by :func:`set_aside_run`, which used to delete it."""
    import datetime

    if not previous.exists():
        return None
    files = [p for p in previous.rglob("*") if p.is_file()]
    if not files:
        shutil.rmtree(previous)
        return None
    newest = max(p.stat().st_mtime for p in files)
    stamp = datetime.datetime.fromtimestamp(newest, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    target, n = previous.with_name(f"{previous.name}-{stamp}"), 1
    while target.exists():
        n += 1
        target = previous.with_name(f"{previous.name}-{stamp}-{n}")
    os.replace(previous, target)
    return target


def repair_trainable_set(model, checkpoint: Path | str | None = None) -> list[str]:
    """Make the parameters that were trained when ``checkpoint`` was saved trainable again (unsloth
    #3108: reloaded ``modules_to_save`` copies of embed_tokens / lm_head can come back frozen).

    The expected set is the one recorded in the checkpoint's ``trainable_set.json``, or, without that
    file, every LoRA matrix and ``modules_to_save`` copy of the active adapter. Returns the names
    that had to be unfrozen. Raises :class:`ResumeMismatchError` when, after the repair, the model
    still trains a different set than the checkpoint recorded (another model or another LoRA set-up).
    """
    record_file = Path(checkpoint) / TRAINABLE_SET_FILE if checkpoint is not None else None
    recorded = read_json(record_file)["trainable"] if record_file is not None and record_file.is_file() else None
    expected = set(recorded) if recorded is not None else set(adapter_parameter_names(model))
    repaired = []
    for name, param in model.named_parameters():
        if name in expected and not param.requires_grad:
            param.requires_grad_(True)
            repaired.append(name)
    if recorded is not None:
        current = set(trainable_names(model))
        missing, extra = sorted(expected - current), sorted(current - expected)
        if missing or extra:
            raise ResumeMismatchError(
                f"The model does not match the checkpoint {relative(checkpoint)}: "
                f"{len(missing)} parameter(s) trained then are missing now (e.g. {missing[:3]}), "
                f"{len(extra)} are trainable now but were not then (e.g. {extra[:3]}). Resume with the same "
                f"model and LoRA settings, or delete {relative(Path(checkpoint).parent)} to start a fresh run."
            )
    return repaired


def check_param_groups(optimizer, model, checkpoint: Path | str) -> None:
    """Raise :class:`ResumeMismatchError` unless ``optimizer`` has the same groups (names and sizes)
    as when ``checkpoint`` was saved; loading its state would otherwise fail with the opaque
    "parameter group that doesn't match the size of optimizer's group" (unsloth #3108) or, worse,
    apply the saved Adam statistics to the wrong tensors. Does nothing without a recorded set."""
    record_file = Path(checkpoint) / TRAINABLE_SET_FILE
    if not record_file.is_file():
        return
    saved = read_json(record_file).get("param_groups")
    if saved is None:
        return
    now = describe_param_groups(optimizer, model)
    shape_saved = [(_group_name(g), g["tensors"]) for g in saved]
    shape_now = [(_group_name(g), g["tensors"]) for g in now]
    if shape_saved != shape_now:
        raise ResumeMismatchError(
            f"The optimizer's parameter groups {shape_now} differ from those saved in {relative(checkpoint)} "
            f"{shape_saved}, so its saved state cannot be loaded. Usually a module that trained then is frozen "
            "now (unsloth #3108: embed_tokens / lm_head copies reloaded with requires_grad=False). Rebuild the "
            "model the same way as for the interrupted run."
        )


def _group_name(row: dict) -> str:
    """Return a recorded group's name (``"group"``; checkpoints written before the record used
    :func:`helpers.training.describe_param_groups` called it ``"name"``)."""
    return row.get("group", row.get("name"))


def _unwrapped(optimizer):
    """Return the torch optimizer inside accelerate's wrapper (a previous ``train()`` wraps it)."""
    return getattr(optimizer, "optimizer", optimizer)


def _optimizer_params_match(optimizer, model) -> bool:
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}


# --- checkpoints --------------------------------------------------------------------------------


def checkpoint_step(folder: Path | str) -> int:
    """Return the step number of a ``checkpoint-N`` folder."""
    match = CHECKPOINT_NAME.match(Path(folder).name)
    if not match:
        raise ValueError(f"{folder} is not a checkpoint-N folder")
    return int(match.group(1))


def checkpoint_problem(folder: Path | str) -> str | None:
    """Return why a checkpoint folder cannot be resumed from exactly, or None when it is complete.

    transformers writes a checkpoint's files one after the other, straight into ``checkpoint-N``,
    ``trainer_state.json`` near the end, and this module's ``run.json`` last; a process killed while
    saving leaves a folder without some of them, or with a cut-off one. Complete means:
    ``trainer_state.json`` parses and names this step; ``optimizer.pt`` and ``scheduler.pt`` are whole
    (without them a resume would restart Adam's statistics and the warm-up, and end elsewhere); the
    weights file is whole; ``run.json`` parses.
    """
    folder = Path(folder)
    try:
        state = read_json(folder / TRAINER_STATE_FILE)
        if not isinstance(state, dict) or state.get("global_step") != checkpoint_step(folder):
            return f"{TRAINER_STATE_FILE} does not name step {checkpoint_step(folder)}"
    except (OSError, ValueError) as err:
        return f"{TRAINER_STATE_FILE} {'missing' if isinstance(err, FileNotFoundError) else 'unreadable'}"
    for name in STATE_FILES:
        if (problem := file_problem(folder / name)) is not None:
            return f"{name} {problem}"
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).exists()]
    if not weights:
        return "no weights file"
    if (problem := file_problem(weights[0])) is not None:
        return f"{weights[0].name} {problem}"
    if (problem := file_problem(folder / RUN_FILE)) is not None:
        return f"{RUN_FILE} {problem} (no record of which run it belongs to)"
    return damage_problem(folder)


DAMAGED = "damaged after it was written: "


def damage_problem(folder: Path | str) -> str | None:
    """Return how a checkpoint's files differ from the sizes and SHA-256 hashes recorded when it was
    saved (``files.sha256.json``, see :func:`helpers.support.files.write_folder_manifest`), or None.
    A checkpoint saved before the record existed passes."""
    problem = folder_manifest_problem(folder)
    return None if problem is None else DAMAGED + problem


def remove_incomplete_checkpoints(output_dir: Path | str) -> list[str]:
    """Delete the ``checkpoint-*`` folders of ``output_dir`` that were not written to the end (see
    :func:`checkpoint_problem`); return their names. Used after a full disk stopped a checkpoint save,
    where setting the half-written folder aside would keep the disk full."""
    output_dir = Path(output_dir)
    removed = []
    if not output_dir.is_dir():
        return removed
    for folder in sorted(output_dir.glob("checkpoint-*")):
        if folder.is_dir() and re.fullmatch(r"checkpoint-\d+", folder.name) and checkpoint_problem(folder) is not None:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def last_complete_checkpoint(output_dir: Path | str) -> Path | None:
    """Return the newest complete checkpoint under ``output_dir`` (None when there is none).

    Finds the newest with ``transformers.trainer_utils.get_last_checkpoint``; an incomplete one (see
    :func:`checkpoint_problem`) is moved to ``incomplete/checkpoint-N`` (kept, not deleted, and no
    longer picked up) and the next newest is tried.
    """
    from transformers.trainer_utils import get_last_checkpoint  # deferred: heavy

    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    while (found := get_last_checkpoint(str(output_dir))) is not None:
        folder = Path(found)
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        # kept in a subfolder: transformers' rotation would delete a "checkpoint-4.incomplete" beside
        # the others (it counts every name matching checkpoint-<digits>)
        aside = output_dir / INCOMPLETE_DIR / folder.name
        if aside.exists():
            shutil.rmtree(aside)
        aside.parent.mkdir(exist_ok=True)
        folder.rename(aside)
        if problem.startswith(DAMAGED):
            print(f"{relative(folder)} is {problem} ({FOLDER_MANIFEST} records each file's size and hash); "
                  f"set aside as {INCOMPLETE_DIR}/{aside.name} and not used: the run resumes from the checkpoint "
                  "before it, if any.")
        else:
            print(f"{relative(folder)} was not written to the end ({problem}); "
                  f"set aside as {INCOMPLETE_DIR}/{aside.name} and not used.")
    return None


def default_save_steps(profile: Profile, train_rows: int) -> int:
    """Return a checkpoint interval giving about four checkpoints over the run (at least 1)."""
    if profile.max_steps > 0:
        steps = profile.max_steps
    else:
        per_step = profile.per_device_train_batch_size * profile.gradient_accumulation_steps
        steps = math.ceil(math.ceil(train_rows / per_step) * profile.num_train_epochs)
    return max(1, steps // 4)


def checkpoint_settings(profile: Profile, train_dataset, text_dataset=None, output_dir: Path | str | None = None,
                        save_steps: int | None = None, save_total_limit: int = 2) -> dict:
    """Return the training arguments that make a run resumable: ``output_dir`` (default
    ``outputs/05_trainer``), ``save_strategy="steps"``, ``save_steps`` (default: about four checkpoints
    over the run, :func:`default_save_steps`) and ``save_total_limit``. Raises
    :class:`helpers.errors.SettingsError` for settings that cannot train."""
    check_training_settings(profile)
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir()
    trained_on = text_dataset if text_dataset is not None and profile.uses_unsloth else train_dataset
    rows = len(train_dataset) if profile.packing else len(trained_on)  # packed: about the rows unsloth packs
    return {"output_dir": str(output_dir), "save_strategy": "steps",
            "save_steps": save_steps or default_save_steps(profile, rows), "save_total_limit": save_total_limit}


def record_checkpoints(trainer, profile: Profile, trained_on) -> None:
    """Give ``trainer`` its run record (``trainer.cpt_run``: profile, trainer settings and the data it
    trains on) and the callback that writes it, with the trainable set, into every checkpoint, so
    that :func:`train_resumable` can check a checkpoint before resuming from it; and make
    ``trainer.train()`` itself :func:`train_resumable` (the walkthrough's call then resumes after an
    interruption; ``trainer.train(resume_from_checkpoint=...)`` with an explicit argument is the
    library's own call, unchanged). Returns None."""
    trainer.cpt_run = run_identity(profile, trainer=trainer, dataset=trained_on)
    trainer.add_callback(_recorder_callback(trainer.cpt_run))
    if "train" not in vars(trainer):  # once: the library's method is kept for train_resumable to call
        library_train = trainer.train

        def train(*args, **kwargs):
            if args or kwargs:
                return library_train(*args, **kwargs)
            return train_resumable(trainer, profile)

        trainer.cpt_library_train = library_train
        trainer.train = train


def build_resumable_trainer(profile: Profile, model, tokenizer, train_dataset, output_dir: Path | str | None = None,
                            save_steps: int | None = None, save_total_limit: int = 2, text_dataset=None,
                            **overrides):
    """Return :func:`helpers.training.build_trainer`'s trainer, set to save a checkpoint every
    ``save_steps`` optimizer steps into ``output_dir`` (default ``outputs/05_trainer``), keeping the
    newest ``save_total_limit``, each with its trainable set and its run record (see the module
    docstring; the record is also ``trainer.cpt_run``): :func:`checkpoint_settings` and
    :func:`record_checkpoints`, the two steps notebook 05 shows around its trainer call. Raises
    :class:`helpers.errors.SettingsError` for settings that cannot train. Train it with
    :func:`train_resumable`."""
    settings = {**checkpoint_settings(profile, train_dataset, text_dataset, output_dir, save_steps, save_total_limit),
                **overrides}
    output_dir = settings.pop("output_dir")
    trainer = build_trainer(profile, model, tokenizer, train_dataset, output_dir=output_dir,
                            text_dataset=text_dataset, **settings)
    record_checkpoints(trainer, profile, text_dataset if text_dataset is not None and profile.uses_unsloth
                       else train_dataset)
    return trainer


def _save_strategy(trainer) -> str:
    strategy = trainer.args.save_strategy
    return str(getattr(strategy, "value", strategy))


def interruption_message(trainer) -> str:
    """Return what to tell the user when training stops early: how far it got, where the last
    complete checkpoint is, and how to resume."""
    output_dir = Path(trainer.args.output_dir)
    step, total = trainer.state.global_step, trainer.state.max_steps or trainer.args.max_steps
    head = f"Training interrupted at step {step} of {total}."
    if _save_strategy(trainer) == "no":
        return (f"{head} This trainer writes no checkpoints (save_strategy='no'), so running it again starts "
                "from step 0. Build it with helpers.checkpoints.build_resumable_trainer to be able to resume.")
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is None:
        return (f"{head} No checkpoint was written yet (the first comes at step {trainer.args.save_steps}), "
                "so running it again starts from step 0.")
    saved = checkpoint_step(checkpoint)
    lost = f"; the {step - saved} step(s) after it are redone" if step > saved else ""
    how = getattr(trainer, "cpt_resume_how", None) or (
        "run the training cell again: trainer.train() continues from it "
        "(helpers.checkpoints.train_resumable; a trainer built without it: trainer.train(resume_from_checkpoint=True))")
    return f"{head} The last complete checkpoint is {relative(checkpoint)} (step {saved}){lost}. To resume, {how}."


def planned_steps(trainer) -> int:
    """Return the number of optimizer steps ``trainer`` will run: ``max_steps`` when set, else the
    batches of one epoch divided by gradient accumulation (rounded up), times the epochs."""
    if trainer.args.max_steps and trainer.args.max_steps > 0:
        return trainer.args.max_steps
    batches = len(trainer.get_train_dataloader())
    per_epoch = math.ceil(batches / trainer.args.gradient_accumulation_steps)
    return per_epoch * math.ceil(trainer.args.num_train_epochs)


class TrainingFolderInUse(RuntimeError):
    """Another live process is training into the same checkpoint folder; the message names it."""


def train_resumable(trainer, profile: Profile | None = None, resume: bool = True, load_finished: bool = False):
    """Train, continuing from the last complete checkpoint; see :func:`_train_resumable`. The
    checkpoint folder is held for this process while it trains (a lock on the folder): a second process
    training into it at the same time (a second kernel running notebook 05) stops at once with
    :class:`TrainingFolderInUse` instead of mixing its checkpoints with the first one's."""
    output_dir = Path(trainer.args.output_dir)
    if not getattr(trainer, "is_world_process_zero", lambda: True)():  # rank 0 holds it for the launch
        return _train_resumable(trainer, profile, resume, load_finished)
    try:
        with exclusive_use(output_dir):
            return _train_resumable(trainer, profile, resume, load_finished)
    except FolderInUseError:
        raise TrainingFolderInUse(
            f"{relative(output_dir)} is being trained into by another process (a second kernel running the same "
            "notebook, or a script): two trainings in one folder "
            "would mix their checkpoints. Wait for it to end (or stop that kernel / process), or give this run "
            f"another folder: {getattr(trainer, 'cpt_other_dir_how', None) or 'build the trainer with another output_dir'}."
        ) from None


def _train_resumable(trainer, profile: Profile | None = None, resume: bool = True, load_finished: bool = False):
    """Train, continuing from the last complete checkpoint in ``trainer.args.output_dir`` if any.

    Before resuming, the checkpoint's run record must match the trainer's (same data, model and
    settings; else :class:`ResumeMismatchError` says how to start fresh or keep the old run), the
    model's trainable set is repaired and the optimizer's groups are checked against the checkpoint
    (unsloth #3108, see the module docstring), so the saved optimizer state loads into the right
    tensors. With ``resume=False``, or when the last checkpoint ends a finished run, the old
    checkpoints are moved to ``<output_dir>.previous`` and training starts from step 0.
    With ``load_finished``, a last checkpoint that ends this very run (its run record matches) is
    loaded instead, training no step: a process killed after the last checkpoint, while it saved the
    adapter, then only saves it (``scripts/train_cpt.py`` passes it when no result was written after
    that checkpoint). Returns ``trainer.train()``'s output.

    Raises :class:`TrainingInterrupted` on Ctrl-C (saying where the last checkpoint is),
    :class:`helpers.errors.TrainingOutOfMemory` on CUDA out-of-memory (listing the knobs, with
    ``profile``'s values) and :class:`helpers.errors.DiskFullError` when a checkpoint does not fit
    on the disk; each is chained to the original error.
    """
    check_trainer_state(trainer)  # another trainer built since this one would re-point it (device, precision)
    output_dir = Path(trainer.args.output_dir)
    checkpoint = last_complete_checkpoint(output_dir) if resume else None
    finished = False
    if checkpoint is not None and checkpoint_step(checkpoint) >= planned_steps(trainer):
        same_run = getattr(trainer, "cpt_run", None) is not None and not differences(
            read_json(checkpoint / RUN_FILE), trainer.cpt_run, then="checkpoint")
        finished = load_finished and same_run
        if finished:
            print(f"{relative(checkpoint)} ends this run (step {checkpoint_step(checkpoint)} of "
                  f"{planned_steps(trainer)}), and what was to be saved after it is missing: loading its weights "
                  "instead of training all steps again.")
        else:
            print(f"{relative(checkpoint)} ends a finished run: nothing to resume, so training starts over.")
            checkpoint = None
    if checkpoint is not None and getattr(trainer, "cpt_run", None) is not None:
        diff = differences(read_json(checkpoint / RUN_FILE), trainer.cpt_run, then="checkpoint")
        if diff:
            raise ResumeMismatchError(
                f"{relative(checkpoint)} belongs to another run than this trainer's, so resuming it would "
                "silently continue that run:\n  " + "\n  ".join(diff) + "\n"
                f"To start this run fresh: {getattr(trainer, 'cpt_fresh_how', None) or 'train_resumable(trainer, resume=False)'} "
                f"(the old checkpoints move to {relative(output_dir)}{PREVIOUS_SUFFIX}). To keep both runs: "
                f"{getattr(trainer, 'cpt_other_dir_how', None) or 'build the trainer with another output_dir'}. "
                "To continue the old run: go back to its settings and data.")
    if checkpoint is None:
        set_aside_run(output_dir)  # a new run never writes into another run's checkpoints
    if checkpoint is not None:
        model = trainer.model
        repaired = repair_trainable_set(model, checkpoint)
        if repaired:
            print(f"Made {len(repaired)} parameter(s) trainable again that the checkpoint trained but the model "
                  f"had frozen (unsloth #3108): {', '.join(repaired[:4])}{' ...' if len(repaired) > 4 else ''}")
        if trainer.optimizer is not None:
            trainer.optimizer = _unwrapped(trainer.optimizer)
            if not _optimizer_params_match(trainer.optimizer, model):
                trainer.optimizer, trainer.lr_scheduler = None, None  # rebuilt for the repaired set
        trainer.create_optimizer()
        check_param_groups(_unwrapped(trainer.optimizer), model, checkpoint)
        if finished:  # trainer.train() would run one more step past the end; load the checkpoint instead
            return _load_finished_checkpoint(trainer, checkpoint)
        print(f"Resuming from {relative(checkpoint)} (step {checkpoint_step(checkpoint)}).")
    try:
        with out_of_memory_explained(profile), disk_full_explained(output_dir, "a checkpoint", previous_kept=False):
            library_train = getattr(trainer, "cpt_library_train", trainer.train)  # see record_checkpoints
            return library_train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    except DiskFullError as err:
        removed = remove_incomplete_checkpoints(output_dir)
        freed = (f"\nRemoved the half-written {', '.join(removed)} (it would only fill the disk); the earlier "
                 "complete checkpoints are kept, and the next run resumes from the last of them."
                 if removed else "")
        raise DiskFullError(errno.ENOSPC, f"{err.strerror}{freed}") from (err.__cause__ or err)
    except KeyboardInterrupt as err:
        message = interruption_message(trainer)
        print(message)
        raise TrainingInterrupted(message) from err


def _load_finished_checkpoint(trainer, checkpoint: Path):
    """Load the weights and the trainer state of a checkpoint that ends the run into ``trainer``;
    return a ``TrainOutput`` of the steps it recorded (no step is run; ``train_runtime`` is 0)."""
    from transformers.trainer_callback import TrainerState  # deferred: heavy
    from transformers.trainer_utils import TrainOutput  # deferred: heavy

    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE_FILE))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return TrainOutput(trainer.state.global_step, losses[-1] if losses else 0.0,
                       {"train_runtime": 0.0, "loaded_from": relative(checkpoint)})


# --- saving the adapter -------------------------------------------------------------------------


def save_adapter(model, tokenizer=None, target: Path | str | None = None, profile: Profile | None = None,
                 also: dict | None = None) -> Path:
    """Save a PEFT adapter (and the tokenizer) atomically to ``target`` (default: the ``adapter``
    artifact, ``outputs/05_adapter``, with its manifest for ``profile``, by default the one the
    environment selects: see :func:`helpers.artifacts.save_outputs`); return the folder.

    ``also``: more artifacts of the same notebook (name -> JSON object or writer) committed in the
    same unit as the adapter, so an interrupted save never leaves one without the other.

    Written into a temporary folder and swapped in only when complete
    (:func:`helpers.support.files.save_directory_atomically`): an interrupted save leaves the previous
    adapter, or no folder, never a half-written one. A full disk raises
    :class:`helpers.errors.DiskFullError` naming the folder and the free space. Saved to another
    ``target`` (``scripts/train_cpt.py``'s ``adapter/``), the folder gets ``files.sha256.json``, the size
    and hash of each file, which :func:`helpers.errors.check_adapter_folder` checks before a load.
    """
    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)

    if target is None or Path(target) == artifact_path("adapter"):
        return save_outputs(profile or select_profile()[0], {"adapter": write, **(also or {})},
                            what="the adapter")["adapter"]
    if also:
        raise ValueError("save_adapter(also=...) commits artifacts with the adapter artifact; give no target")
    target = Path(target)

    def write_with_manifest(folder: Path) -> None:  # no artifact manifest here: the folder carries its own
        write(folder)
        write_folder_manifest(folder)

    with disk_full_explained(target, "the adapter"):
        return save_directory_atomically(target, write_with_manifest)
