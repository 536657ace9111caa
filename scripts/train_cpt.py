#!/usr/bin/env python3
"""The training recipe of notebooks 01-05 as one script, on one device or on N GPUs (DDP), resumable.

    python scripts/train_cpt.py                                    # one GPU (or the CPU)
    accelerate launch --num_processes 2 scripts/train_cpt.py       # two GPUs, data parallel (DDP)
    accelerate launch --config_file configs/ddp.yaml scripts/train_cpt.py --profile gpu-mistral7b --check-sync
    python scripts/train_cpt.py --tiny                             # CPU self-test: tiny random Llama, 2 steps

It reads the same profiles as the notebooks (``CPT_PROFILE``, or ``--profile`` which wins) and builds
everything through the notebooks' helpers: ``load_model_and_tokenizer``, ``add_lora``,
``load_raw_dataset`` + ``append_eos`` + ``build_train_dataset``, ``build_resumable_trainer`` +
``train_resumable`` (checkpoints, and the unsloth #3108 guard that keeps the embedding learning-rate
group intact on resume), ``assert_embeddings_trained`` and ``save_adapter``. What several processes
need lives in ``helpers.lab.distributed``, the measuring in ``helpers.lab.throughput``; ``docs/multi-gpu.md``
explains both.

Killed and started again with the same command, it continues from its last complete checkpoint
(``--save-steps``, in ``<output-dir>/checkpoints``), on one process or on several; ``--fresh``
starts over.

The last line rank 0 prints is ``RESULT {json}``: ``workload: "scale"``, ``gpus`` (the world size),
steady-state ``tokens_per_s`` (real tokens of all ranks over the optimizer steps after the first
two), per-step ``losses``, ``sync_check``, ``resumed_from``, versions, date and device.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python scripts/train_cpt.py` from a checkout without `pip install -e .`

try:
    from helpers.errors import MIN_SEQ_LENGTH, SettingsError, check_training_settings
    from helpers.profiles import CPU_SMOLLM2, GPU_SMOKE, PROFILE_ENV_VAR, PROFILES, Profile, select_profile
except KeyboardInterrupt:  # Ctrl-C while Python imports the helpers: nothing started, nothing to save
    print("train_cpt.py: stopped by Ctrl-C while starting; nothing was started or saved.", file=sys.stderr)
    raise SystemExit(130) from None

# --tiny: the CPU self-test of this script (tests/e2e/test_train_script.py): the CPU profile's settings
# (fp32, plain transformers + PEFT, r=16) on the smoke profile's random Llama (built from a config,
# SmolLM2 tokenizer shipped in data/), 2 optimizer steps of 2 x 2 rows of 64 tokens.
TINY_PROFILE = CPU_SMOLLM2.replace(
    name="tiny-cpu",
    description="Self-test of scripts/train_cpt.py: the random smoke Llama on the CPU, 2 steps of 2 x 2 rows of 64 tokens.",
    model_name=GPU_SMOKE.model_name, max_seq_length=64, max_steps=2, eval_stories=4, eval_max_tokens=64,
)


# --- arguments and profile ----------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; settings that cannot train stop here with a message (exit code 2)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--profile", choices=sorted(PROFILES),
        help=f"profile name (overrides ${PROFILE_ENV_VAR}; default: as the notebooks choose)")
    add("--tiny", action="store_true", help="self-test: tiny random Llama on the CPU, 2 steps of 64-token rows")
    add("--backend", choices=("unsloth", "transformers"), help="replace the profile's backend")
    add("--max-steps", type=int, help="optimizer steps (default: the profile's)")
    add("--max-seq-length", type=int, help="replace the profile's max_seq_length (block length)")
    add("--per-device-batch", type=int, help="replace the profile's per_device_train_batch_size")
    add("--grad-accum", type=int, help="replace the profile's gradient_accumulation_steps, i.e. the ONE-GPU "
                                       "recipe's; on N GPUs it is divided by N")
    add("--repeat-data", type=int, default=1, help="repeat the training rows this many times (throughput runs)")
    add("--eval-stories", type=int, help="held-out stories for rank 0's perplexity (default: the profile's; 0: skip)")
    add("--seed", type=int, help="replace the profile's seed")
    add("--output-dir", type=Path, default=Path("outputs/train_cpt"),
        help="checkpoints/, adapter/ and result.json go here (relative paths start at the project root)")
    add("--save-steps", type=int, help="write a checkpoint every N optimizer steps (default: about 4 per run)")
    add("--fresh", action="store_true", help="start over instead of resuming from the last complete checkpoint")
    add("--no-save", action="store_true", help="do not save the adapter")
    add("--check-sync", action="store_true", help="after the first two optimizer steps and at the end, assert that "
                                                  "the trainable weights are bit-identical on every rank")
    add("--trace-step", type=int, default=0, help="profile this optimizer step on every rank with torch.profiler "
                                                 "(helpers.lab.step_trace): device busy/idle time and top kernels go into "
                                                 "the RESULT, each rank's trace into OUTPUT_DIR/step-trace/rank<N>/")
    add("--result-json", type=Path, help="also write the RESULT object to this file (rank 0)")
    add("--baseline-result", type=Path, help="RESULT json of a one-GPU run with the same settings: adds speedup, "
                                             "scaling_efficiency and the per-step loss comparison")
    add("--allow-overwrite", action="store_true", help="let --output-dir / --result-json point into the notebooks' "
                                                       "outputs, at a saved folder or at a file that is not a RESULT")
    args = parser.parse_args(argv)
    for name in ("output_dir", "result_json", "baseline_result"):  # "--output-dir=~/runs": no shell expands it
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).expanduser())
    for problem in refused_settings(args):
        parser.error(problem)
    return args


# the range of every numeric argument, checked at parse time (issue 40): (flag, lowest, highest, why the top)
LIMITS = {
    "max_steps": ("--max-steps", 1, 10_000_000, "use the epochs of the profile for longer runs"),
    "max_seq_length": ("--max-seq-length", MIN_SEQ_LENGTH, 1 << 20, "no model here trains on longer rows"),
    "per_device_batch": ("--per-device-batch", 1, 4096, "raise --grad-accum instead"),
    "grad_accum": ("--grad-accum", 1, 100_000, "more rows a step than any data set here holds"),
    "repeat_data": ("--repeat-data", 1, 100_000, "a run uses only the rows its steps take; repeating more only "
                                                 "fills memory"),
    "eval_stories": ("--eval-stories", 0, 100_000, "the held-out sets here are smaller"),
    "seed": ("--seed", 0, 2**32 - 1, "numpy and torch take seeds from 0 to 2**32 - 1"),
    "save_steps": ("--save-steps", 1, 10_000_000, "a larger one writes no checkpoint either"),
    "trace_step": ("--trace-step", 0, 10_000_000, "at most --max-steps"),
}


def refused_settings(args: argparse.Namespace) -> list[str]:
    """Return why the command line cannot train (empty when it can): every numeric argument outside
    its range (:data:`LIMITS`: sizes that would give no rows, no steps or no batch, which would end in
    a meaningless "final loss 0.0"; a seed numpy refuses deep inside; sizes that only fill memory), and
    a ``--trace-step`` past ``--max-steps`` (that step never comes, so nothing would be traced)."""
    problems = []
    if args.max_seq_length is not None and args.max_seq_length < MIN_SEQ_LENGTH:
        problems.append(f"--max-seq-length {args.max_seq_length}: rows need at least {MIN_SEQ_LENGTH} tokens to "
                        "learn anything; the recipe uses 2048 (the CPU profile 256)")
    if args.trace_step < 0:
        problems.append(f"--trace-step {args.trace_step}: 0 (off) or an optimizer step after the warm-up, e.g. 4")
    for flag, value in (("--max-steps", args.max_steps), ("--per-device-batch", args.per_device_batch),
                        ("--grad-accum", args.grad_accum), ("--save-steps", args.save_steps),
                        ("--repeat-data", args.repeat_data)):
        if value is not None and value < 1:
            problems.append(f"{flag} {value}: must be at least 1")
    if args.eval_stories is not None and args.eval_stories < 0:
        problems.append(f"--eval-stories {args.eval_stories}: use 0 to skip the evaluation")
    if args.seed is not None and args.seed < 0:
        problems.append(f"--seed {args.seed}: use a seed from 0 to {2**32 - 1} (numpy and torch take no negative seed)")
    for name, (flag, _, highest, why) in LIMITS.items():
        value = getattr(args, name)
        if value is not None and value > highest:
            problems.append(f"{flag} {value}: at most {highest:,} ({why})")
    if args.max_steps is not None and args.max_steps >= 1:
        if args.trace_step > args.max_steps:
            problems.append(f"--trace-step {args.trace_step} with --max-steps {args.max_steps}: that step never comes, "
                            f"so nothing would be traced; use a step of at most {args.max_steps}")
    return problems


def settings_notes(args: argparse.Namespace) -> list[str]:
    """Return what the command line will do that a user may not expect, said before the run starts:
    a ``--save-steps`` past ``--max-steps`` writes no checkpoint (throughput runs want that), so a run
    stopped before its end starts over."""
    notes = []
    if args.max_steps is not None and args.save_steps is not None and args.save_steps > args.max_steps:
        notes.append(f"--save-steps {args.save_steps} with --max-steps {args.max_steps}: no checkpoint will be written, "
                     "so a run stopped before its end starts over from step 0 (use --save-steps "
                     f"{max(1, args.max_steps // 4)} to be able to resume).")
    return notes


def notebook_owner(path: Path) -> str | None:
    """Return what of the notebooks' outputs ``path`` would write into, or None: the outputs folder itself
    or a file directly in it, a notebook's artifact (``02_dataset``, ``05_adapter``), anything named like
    one (``05_result.json``), its manifests, the model cache, notebook 05's checkpoints or the executed
    copies (``$CPT_OUTPUTS`` counts)."""
    from helpers.support.paths import ARTIFACTS, outputs_location

    outputs = outputs_location().resolve()
    path = path.resolve()
    if path == outputs:
        return "the notebooks' outputs folder itself"
    try:
        inside = path.relative_to(outputs)
    except ValueError:
        return None
    top = inside.parts[0]
    for name, (artifact, notebook) in ARTIFACTS.items():
        if top == artifact:
            return f"notebook {notebook}'s {name} ({artifact})"
    if top[:3].rstrip("_").isdigit() and top[2:3] == "_":
        notebooks = sorted({nb for _, nb in ARTIFACTS.values() if nb.startswith(top[:3])})
        return f"the results of notebook {notebooks[0] if notebooks else top[:2]} (a file named like its results)"
    if top in ("manifests", "cache", "executed"):
        return f"the notebooks' {top}/ folder"
    if len(inside.parts) == 1 and not path.is_dir() and path.suffix:
        return "the top of the notebooks' outputs folder, where their results live"
    return None


def saved_folder(path: Path) -> Path | None:
    """Return the folder at or above ``path`` that records its own files (``files.sha256.json``: a saved
    adapter, a checkpoint), or None: writing into it would make its record wrong."""
    from helpers.support.files import FOLDER_MANIFEST

    for folder in (path, *path.parents):
        if (folder / FOLDER_MANIFEST).is_file():
            return folder
    return None


def overwrite_problems(args: argparse.Namespace, output_dir: Path) -> list[str]:
    """Return why ``--output-dir`` or ``--result-json`` would overwrite something that is not this run's
    (issue 40): a path into the notebooks' outputs (:func:`notebook_owner`; ``--result-json
    outputs/05_result.json`` replaced notebook 05's result, which later notebooks then called cut off),
    a folder that records its own files (:func:`saved_folder`), the ``--baseline-result`` itself, or an
    existing file that is not a RESULT of this script. Empty with ``--allow-overwrite``."""
    from helpers.support.paths import relative

    if args.allow_overwrite:
        return []
    told = "or pass --allow-overwrite if you mean it"
    problems = []
    for flag, path in (("--output-dir", output_dir), ("--result-json", args.result_json)):
        if path is None:
            continue
        if (owner := notebook_owner(path)) is not None:
            problems.append(f"{flag} {getattr(args, flag[2:].replace('-', '_'))}: that is {owner}; this run would "
                            "overwrite what a notebook wrote, and the later notebooks would find it changed. Give "
                            "it a folder of its own (e.g. outputs/train_cpt, the default), "
                            f"{told}.")
        elif (folder := saved_folder(path)) is not None:
            problems.append(f"{flag} {getattr(args, flag[2:].replace('-', '_'))}: that is inside {relative(folder)}, "
                            "a saved folder that records the size and hash of its files (files.sha256.json); "
                            f"writing there would make it fail its check. Name another place, {told}.")
    result = args.result_json
    if result is not None and args.baseline_result is not None and result.resolve() == args.baseline_result.resolve():
        problems.append(f"--result-json {result}: it is the --baseline-result this run compares with; writing it "
                        f"would replace the baseline by this run. Name another file, {told}.")
    elif result is not None and result.is_file() and not any(p.startswith("--result-json") for p in problems):
        try:
            earlier = json.loads(result.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            earlier = None
        if not (isinstance(earlier, dict) and all(k in earlier for k in BASELINE_KEYS)):
            problems.append(f"--result-json {result}: that file exists and is not the RESULT of a train_cpt.py run; "
                            f"writing it would replace it. Name a new file (or an earlier RESULT), {told}.")
    return problems


def path_problems(args: argparse.Namespace, output_dir: Path) -> list[str]:
    """Return what is wrong with the paths given on the command line, checked before any training:
    a ``--output-dir`` (or one of its parents) that is a file, a ``--result-json`` that is a folder,
    a ``--baseline-result`` that is missing or not JSON. Each used to fail only after the whole run
    was trained, with a raw error, and the run's output was lost."""
    problems = []
    for parent in (output_dir, *output_dir.parents):
        if parent.exists():
            if not parent.is_dir():
                problems.append(f"--output-dir {args.output_dir}: {parent} is a file, not a folder; "
                                "name a folder (it is created if missing)")
            elif not os.access(parent, os.W_OK | os.X_OK):
                problems.append(f"--output-dir {args.output_dir}: {parent} is not writable; name a folder you can write to")
            break
    if args.result_json is not None and args.result_json.is_dir():
        problems.append(f"--result-json {args.result_json}: is a folder; name a file, e.g. {args.result_json / 'result.json'}")
    elif args.result_json is not None:
        for parent in args.result_json.parents:  # a parent that is a file fails only when the result is written
            if parent.exists():
                if not parent.is_dir():
                    problems.append(f"--result-json {args.result_json}: {parent} is a file, not a folder; "
                                    "name a file in a folder")
                break
    if args.baseline_result is not None:
        try:
            baseline = json.loads(args.baseline_result.read_text(encoding="utf-8"))
        except FileNotFoundError:
            problems.append(f"--baseline-result {args.baseline_result}: no such file; give the result.json of an earlier run")
        except (OSError, ValueError) as err:
            problems.append(f"--baseline-result {args.baseline_result}: not a readable JSON file ({err}); "
                            "give the result.json of an earlier run")
        else:  # another JSON file (adapter_config.json, a notebook's output) failed after the run, in compare_runs
            missing = [k for k in BASELINE_KEYS if not isinstance(baseline, dict) or k not in baseline]
            if missing:
                problems.append(f"--baseline-result {args.baseline_result}: not the result.json of a train_cpt.py run "
                                f"(it has no {', '.join(missing)}); give the result.json of an earlier run")
    return problems


BASELINE_KEYS = ("workload", "gpus", "tokens_per_s", "global_batch", "losses", "final_loss")


def lock_output_dir(output_dir: Path):
    """Take ``<output-dir>/.train_cpt.lock`` for this run (rank 0 of a launch), or stop saying which
    process holds it: two runs writing checkpoints, an adapter and a result into one folder at once
    would mix them. Returns the open lock file (held until the process ends)."""
    import fcntl

    if int(os.environ.get("RANK", "0")) != 0:
        return None
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = open(output_dir / ".train_cpt.lock", "a+")  # noqa: SIM115  (held for the whole run)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise SystemExit(f"train_cpt.py: --output-dir {output_dir} is in use by another train_cpt.py run ({holder}); "
                         "two runs in one folder would mix their checkpoints. Wait for it to end, or give this run "
                         "another --output-dir.") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}, started {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}\n")
    lock.flush()
    return lock


def tiny_profile(env: dict | None = None) -> tuple[Profile, str]:
    """Return the ``--tiny`` profile and why, with the environment's data, model and batching
    switches applied as the notebooks apply them (``CPT_TEXT_DIR``, ``CPT_MODEL``, ``CPT_PACKING``,
    ``CPT_EMBEDDING_DTYPE``; an invalid value stops here): ``--tiny`` used to ignore them and train the
    shipped sample on the random Llama while the user believed their own text or model was tested.
    ``CPT_PROFILE`` alone is replaced (``--tiny`` is a profile of its own), and the reason says so."""
    from helpers.profiles import with_embedding_dtype, with_own_model, with_own_text, with_packing

    env = os.environ if env is None else env
    reason = "--tiny (self-test)"
    if env.get(PROFILE_ENV_VAR, "").strip():
        reason += f"; {PROFILE_ENV_VAR}={env[PROFILE_ENV_VAR].strip()} is not used (--tiny is a profile of its own)"
    profile, reason = with_embedding_dtype(*with_packing(TINY_PROFILE, reason, env), env)
    return with_own_model(*with_own_text(profile, reason, env), env)


def choose_profile(args: argparse.Namespace) -> tuple[Profile, str]:
    """Return the profile this run uses, with the command line's replacements applied, and why."""
    if args.tiny:
        profile, reason = tiny_profile()
    elif args.profile:
        profile, _ = select_profile(env={**os.environ, PROFILE_ENV_VAR: args.profile})
        reason = f"--profile {args.profile}"
    else:
        profile, reason = select_profile()
    flags = {"backend": "backend", "max_steps": "max_steps", "max_seq_length": "max_seq_length",
             "per_device_batch": "per_device_train_batch_size", "grad_accum": "gradient_accumulation_steps",
             "seed": "seed"}
    changes = {field: getattr(args, flag) for flag, field in flags.items() if getattr(args, flag) is not None}
    if changes:
        profile = profile.replace(**changes)
        reason += "; command line: " + ", ".join(f"{k}={v}" for k, v in changes.items())
    return profile, reason


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Processes:
    """This process's place among the launched ones (one process: rank 0 of 1)."""

    state: object  # accelerate.PartialState
    main: bool
    world: int
    local_rank: int

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def say(self, *parts) -> None:
        if self.main:
            print(*parts, flush=True)


def start_processes(profile: Profile) -> Processes:
    """Check the profile can run here, join the launcher's process group (if any) and silence every
    rank but 0. Returns the :class:`Processes`. Refuses an FSDP launch (``configs/fsdp_qlora.yaml``)
    of a 4-bit profile: ``helpers.modeling`` does not store the 4-bit weights in a float dtype, which
    FSDP needs to shard them."""
    from helpers.session import check_runnable

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and profile.load_in_4bit:
        raise SystemExit(f"FSDP with the 4-bit profile {profile.name!r} is not wired up: FSDP-QLoRA needs "
                         "bnb_4bit_quant_storage=torch.bfloat16, which helpers.modeling does not set. Launch with "
                         "configs/ddp.yaml instead (a 7B model in 4-bit fits one GPU; docs/multi-gpu.md).")
    check_runnable(profile)
    if profile.uses_unsloth:
        import unsloth  # noqa: F401  (before transformers, which it patches)
    from accelerate import PartialState

    state = PartialState(cpu=profile.device == "cpu")  # starts the process group under a launcher
    procs = Processes(state, state.is_main_process, state.num_processes, state.local_process_index)
    if not procs.main:  # rank 0 alone speaks (errors still reach stderr)
        import datasets
        import transformers

        transformers.utils.logging.set_verbosity_error()
        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the rest of the process)
    return procs


def device_name(profile: Profile, local_rank: int) -> str:
    import platform

    import torch

    if profile.device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(local_rank)
    return f"cpu ({platform.machine()})"


def describe_run(procs: Processes, profile: Profile, reason: str, policy: dict) -> None:
    """Print (rank 0) the profile, the processes, the batch split and the learning rates."""
    say = procs.say
    say(f"profile  : {profile.name} ({reason})\n           {profile.description}")
    say(f"model    : {profile.model_label} (backend: {profile.backend}, 4-bit: {profile.load_in_4bit})")
    say(f"processes: {procs.world} ({procs.state.distributed_type}, backend {procs.state.backend}); "
        f"device of rank 0: {device_name(profile, procs.local_rank)}")
    say(f"batch    : global {policy['global_batch']} rows = {policy['per_device_batch']} per device x "
        f"{policy['grad_accum']} accumulation x {procs.world} process(es) (one-GPU recipe: "
        f"{policy['reference_global_batch']}), {profile.max_seq_length}-token rows")
    lrs = f"{profile.learning_rate:g} (adapters), {profile.embedding_learning_rate:g} (embed_tokens, lm_head)"
    if policy["kept"]:
        say(f"lr       : {lrs}: the recipe's, since the global batch is the recipe's")
    else:
        say(f"WARNING  : {procs.world} does not divide gradient_accumulation_steps={profile.gradient_accumulation_steps}; "
            f"the global batch is {policy['global_batch']} instead of {policy['reference_global_batch']} rows "
            f"and the learning rates ({lrs}) are NOT rescaled")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and profile.device == "cpu":
        say("NOTE     : FSDP was asked for, but accelerate shards only on GPUs: on the CPU this runs as "
            "data parallel over gloo (strategy in RESULT)")


# --- model, data, trainer -----------------------------------------------------------------------


def load_model_and_rows(procs: Processes, profile: Profile, repeat: int, policy: dict):
    """Load the model with LoRA and the training rows the notebooks' way; rank 0 first (it converts
    or builds the local model and fills the datasets cache, the others reuse them).

    Before any text is tokenized, a micro-batch's memory is estimated against what this device has
    (:func:`check_step_memory`); once the rows are known, ``repeat`` is cut to what the steps use
    (:func:`useful_repeat`) and a step that would need more rows than the data gives is refused
    (:func:`rows_problem`).

    Returns ``(model, tokenizer, train_dataset, text_dataset, repeat)``: the tokenized rows, the
    stories with EOS that the unsloth branch packs itself (best-fit, each story attending only to
    itself) when the profile packs (``text_dataset`` is None otherwise), and the repeat that ran.
    Raises ``helpers.data.DataError`` when the data gives fewer rows than one optimizer step needs,
    ``helpers.errors.SettingsError`` when a micro-batch cannot fit the memory."""
    import datasets

    from helpers.data import DataError, append_eos, build_train_dataset, load_raw_dataset, text_for_unsloth
    from helpers.lab.distributed import load_on_local_device
    from helpers.modeling import load_model_and_tokenizer
    from helpers.session import seed_everything
    from helpers.training import add_lora

    seed_everything(profile.seed)
    with procs.state.main_process_first(), load_on_local_device(profile, procs.local_rank, procs.distributed):
        model, tokenizer = load_model_and_tokenizer(profile)
    # before any text is tokenized; on every rank, outside main_process_first (a refusal inside it would
    # leave the other ranks waiting at its barrier)
    check_step_memory(procs, profile, model, policy["per_device_batch"])
    with procs.state.main_process_first():
        raw, source = load_raw_dataset(profile, "train")
        with_eos = append_eos(raw, tokenizer.eos_token)
        rows, stats = build_train_dataset(with_eos, tokenizer, profile)
    text = with_eos if profile.uses_unsloth and profile.packing else None  # unsloth packs the text itself
    if text is not None and stats.get("special_token_text"):
        # unsloth tokenizes the text itself, matching '<|im_end|>' / '</s>' inside a document as control
        # tokens (issue 40): train on the rows tokenized here instead, where they stay text
        text = text_for_unsloth(text, tokenizer) if procs.main else None
    asked, repeat = repeat, useful_repeat(repeat, len(rows), profile, policy, procs.world)
    if repeat < asked:
        procs.say(f"NOTE     : --repeat-data {asked} would give {len(rows) * asked:,} rows, but {profile.max_steps} "
                  f"steps of {policy['global_batch']} rows use {profile.max_steps * policy['global_batch']:,}: "
                  f"repeating {repeat} time(s) (recorded as repeat_data {repeat}, repeat_data_asked {asked}).")
    if repeat > 1:
        rows = datasets.concatenate_datasets([rows] * repeat)
        if text is not None:
            text = datasets.concatenate_datasets([text] * repeat)
    if (problem := rows_problem(len(rows), repeat, profile, policy, procs.world)) is not None:
        raise DataError(problem)
    procs.say(f"data     : {source}: {stats['documents']} documents, {stats['tokens']} tokens -> "
              f"{stats['rows']} rows x {repeat} = {len(rows)} rows")
    note_memory("model loaded", procs.local_rank)
    seed_everything(profile.seed)  # the same adapter initialisation on every rank (DDP also broadcasts rank 0's)
    model = add_lora(model, profile)
    note_memory("LoRA added", procs.local_rank)
    return model, tokenizer, rows, text, repeat


def useful_repeat(repeat: int, rows: int, profile: Profile, policy: dict, world: int) -> int:
    """Return the part of ``--repeat-data`` that the run can use: with ``max_steps`` set, the repeats
    that give the rows its steps take (``max_steps * global batch``), at least 1; otherwise (the
    epochs decide) ``repeat`` itself. ``--repeat-data 100000000`` used to concatenate every copy and
    grow to gigabytes with no output."""
    if profile.max_steps is None or profile.max_steps < 1 or rows < 1:
        return repeat
    needed = profile.max_steps * policy["per_device_batch"] * policy["grad_accum"] * world
    return max(1, min(repeat, -(-needed // rows)))


def rows_problem(rows: int, repeat: int, profile: Profile, policy: dict, world: int) -> str | None:
    """Return why ``rows`` training rows cannot make one optimizer step as asked, or None: fewer rows
    than one micro-batch on every process, or fewer than ``per-device batch x accumulation x
    processes`` (the trainer would then take what there is and record the larger global batch, e.g.
    ``global_batch 2000`` for steps of 14 rows)."""
    per_device, accumulation = policy["per_device_batch"], policy["grad_accum"]
    data = f"the training data gives {rows} row(s) of {profile.max_seq_length} tokens (x --repeat-data {repeat})"
    if rows < per_device * world:
        return (f"{data}, fewer than the {per_device * world} one optimizer step needs on every process. Lower "
                "--max-seq-length or the batch, add text, or repeat the rows with --repeat-data.")
    if rows < per_device * accumulation * world:
        most = rows // (per_device * world) * world  # the one-GPU recipe's accumulation, split over the processes
        return (f"--grad-accum {profile.gradient_accumulation_steps}: one optimizer step would take {per_device} row(s) x "
                f"{accumulation} accumulation x {world} process(es) = {per_device * accumulation * world} rows, but "
                f"{data}; each step would silently train on fewer rows than the global batch recorded. Use "
                f"--grad-accum {most} or less, add text, or repeat the rows with --repeat-data.")
    return None


def available_memory(profile: Profile, procs: Processes) -> tuple[int, str] | None:
    """Return ``(bytes available to this process, where)``: the free memory of this rank's GPU, or on
    the CPU the kernel's ``MemAvailable`` (and a cgroup's limit, when lower) shared by this host's
    processes; None when it cannot be read."""
    if profile.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(procs.local_rank)
        return int(free), f"GPU {procs.local_rank}"
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:  # a container's limit (cgroup v2)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    local = int(os.environ.get("LOCAL_WORLD_SIZE", procs.world) or 1)
    return available // max(1, local), "this CPU's memory" + (f" (shared by {local} processes)" if local > 1 else "")


def planned_trainable(model, profile: Profile) -> int:
    """Return about how many parameters ``add_lora`` will train on ``model``: ``lora_r x (in + out)``
    for each targeted linear layer, and the full matrix of each trained embedding (``embed_tokens``,
    ``lm_head``)."""
    targets, total = set(profile.target_modules), 0
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in targets:
            continue
        if leaf in ("embed_tokens", "lm_head"):
            total += sum(p.numel() for p in module.parameters(recurse=False))
        elif hasattr(module, "in_features") and hasattr(module, "out_features"):
            total += profile.lora_r * (module.in_features + module.out_features)
    return total


def check_step_memory(procs: Processes, profile: Profile, model, micro_batch: int) -> None:
    """Refuse (``helpers.errors.SettingsError``), before any text is tokenized, a micro-batch that
    cannot fit this device's memory (:func:`helpers.errors.training_memory_estimate` on the plain
    transformers path; unsloth computes the loss in chunks and offloads, so it is not estimated):
    ``--max-seq-length 8192`` on the CPU used to grow to 15 GB with only a context warning."""
    from helpers.errors import SettingsError, memory_refusal, training_memory_estimate

    if profile.uses_unsloth or (found := available_memory(profile, procs)) is None:
        return
    available, where = found
    if profile.device == "cpu":
        from helpers.modeling import cpu_computes_bf16

        half = bool(profile.cpu_bf16) and cpu_computes_bf16()
    else:
        half = profile.dtype not in ("float32", "fp32")
    block_mask = profile.packing and profile.isolate_documents
    estimate = training_memory_estimate(
        model.config, micro_batch=micro_batch, seq_len=profile.max_seq_length, activation_bytes=2 if half else 4,
        gradient_checkpointing=bool(profile.use_gradient_checkpointing), trainable=planned_trainable(model, profile),
        block_mask=block_mask, attention_scores=block_mask and profile.device == "cpu")
    procs.say(f"memory   : a micro-batch of {micro_batch} x {profile.max_seq_length} tokens needs about "
              f"{estimate['total'] / 1e9:.1f} GB to train beside the model; {where} has {available / 1e9:.1f} GB available")
    if (problem := memory_refusal(estimate, available, where, micro_batch=micro_batch,
                                  seq_len=profile.max_seq_length)) is not None:
        raise SettingsError(problem)


MEMORY_STAGES: list[dict] = []  # this process's readings, in order (one process, as in the walkthrough)


def note_memory(stage: str, local_rank: int) -> None:
    """Append nvidia-smi's and torch's reading of this GPU at ``stage`` to :data:`MEMORY_STAGES`
    (nothing on the CPU): the walkthrough read nvidia-smi at its stages of one process."""
    from helpers.memory import nvidia_smi_memory, torch_cuda_memory

    cuda = torch_cuda_memory()
    if cuda is None:
        return
    smi = nvidia_smi_memory(local_rank)
    MEMORY_STAGES.append({"stage": stage, "nvidia_smi_used_gib": smi["used_gib"] if smi else None,
                          "torch_reserved_gib": round(cuda["reserved_gib"], 3)})


def build_trainer(profile: Profile, model, tokenizer, rows, policy: dict, checkpoints: Path, save_steps: int | None,
                  text_dataset=None):
    """Return the notebooks' resumable trainer (``helpers.checkpoints.build_resumable_trainer``) with
    this run's gradient accumulation and checkpoint interval; given ``text_dataset``, the unsloth
    branch packs the stories itself, as in notebook 05."""
    from helpers.checkpoints import build_resumable_trainer

    overrides = {
        "gradient_accumulation_steps": policy["grad_accum"],
        "ddp_find_unused_parameters": False,  # every trainable tensor is used; True breaks reentrant checkpointing
    }
    if profile.uses_unsloth:
        overrides["max_length"] = profile.max_seq_length  # SFTConfig: keep whole blocks (its default cuts at 1024)
    return build_resumable_trainer(profile, model, tokenizer, rows, output_dir=checkpoints, save_steps=save_steps,
                                   text_dataset=text_dataset, **overrides)


def settle_checkpoints(procs: Processes, checkpoints: Path) -> None:
    """Let rank 0 look for the last complete checkpoint first: it alone sets an incomplete one aside
    (a process killed while saving), so that every rank then resumes from the same one."""
    from helpers.checkpoints import last_complete_checkpoint

    with procs.state.main_process_first():
        last_complete_checkpoint(checkpoints)


def unsaved_after(output_dir: Path) -> bool:
    """True when the last complete checkpoint in ``<output-dir>/checkpoints`` was written after this
    folder's ``result.json`` (or there is none): the run that wrote it was stopped before its adapter
    and result were saved, so a checkpoint that ends the run is loaded and saved, not trained again
    (issue 31, case 14). False when the result is newer: that run finished, and a new one starts."""
    from helpers.checkpoints import RUN_FILE, last_complete_checkpoint

    last = last_complete_checkpoint(output_dir / "checkpoints")
    if last is None:
        return False
    result = output_dir / "result.json"
    return not result.is_file() or result.stat().st_mtime < (last / RUN_FILE).stat().st_mtime


# --- training, measured -------------------------------------------------------------------------


def train_measured(procs: Processes, trainer, profile: Profile, check_sync: bool, resume: bool,
                   trace_step: int = 0, trace_dir: Path | None = None, load_finished: bool = False) -> dict:
    """Train with ``helpers.checkpoints.train_resumable`` (resuming when ``resume``), timing every
    optimizer step and counting real tokens; check that the embeddings trained (and, with
    ``check_sync``, that the ranks agree after the first two steps and at the end). With
    ``trace_step``, every rank profiles that optimizer step (:class:`helpers.lab.step_trace.StepTrace`,
    trace files under ``trace_dir/rank<N>``); the traced step stays in the timings, as one of many.

    Returns the measurements: ``steady`` (this rank's :func:`helpers.lab.throughput.steady_state`),
    ``tokens_steady`` / ``tokens_trained`` (summed over all ranks), ``sync`` (the checks),
    ``runtime_s``, ``peaks`` (GiB reserved per rank) and ``embeddings`` (what changed)."""
    import torch

    from helpers.checkpoints import train_resumable
    from helpers.lab.distributed import check_sync as sync_check
    from helpers.lab.distributed import gather_objects, plain_cpu_map_location, sum_over_ranks
    from helpers.lab.throughput import StepClock, count_tokens, steady_state
    from helpers.training import (
        EmbeddingsNotTrained,
        assert_embeddings_trained,
        embedding_change_report,
        snapshot_embeddings,
    )

    model, sync = trainer.model, []

    def check_first_steps(state):
        if check_sync and len(clock.steps) < 2:
            sync.append(sync_check(model, f"after optimizer step {state.global_step}"))

    counts = count_tokens(trainer.model)
    clock = StepClock(on_step=check_first_steps)
    trainer.add_callback(clock.callback())
    tracer = None
    if trace_step:
        from helpers.lab.step_trace import StepTrace

        rank = procs.state.process_index
        tracer = StepTrace(trace_step, None if trace_dir is None else trace_dir / f"rank{rank}", clock=clock)
        trainer.add_callback(tracer.callback())
    before = snapshot_embeddings(model)
    cuda = profile.device == "cuda"
    from helpers.memory import training_memory_end, training_memory_start

    memory_start = training_memory_start()  # the walkthrough's start_gpu_memory: peak reserved so far
    if cuda:
        torch.cuda.reset_peak_memory_stats(procs.local_rank)
    with plain_cpu_map_location(procs.distributed and profile.device == "cpu"):  # a transformers 5.17 bug
        output = train_resumable(trainer, profile, resume=resume, load_finished=load_finished)
    counts.stop()
    training_memory = training_memory_end(memory_start) if cuda else None  # peak - start, as the walkthrough
    note_memory("after training", procs.local_rank)
    try:
        embeddings, embeddings_check = assert_embeddings_trained(
            model, before, trainer.optimizer, profile.embedding_learning_rate), "passed"
    except EmbeddingsNotTrained as err:  # still measured and reported; main() exits 1 after the RESULT
        embeddings, embeddings_check = embedding_change_report(model, before), str(err)
    if check_sync:
        sync.append(sync_check(model, "after training"))
    steady = steady_state(clock, counts.real)
    peak = round(torch.cuda.max_memory_reserved(procs.local_rank) / 2**30, 3) if cuda else None
    from helpers.lab.throughput import matmul_parameters, mfu, peak_tflops

    per_s = sum_over_ranks(steady["tokens"]) / steady["seconds"] if steady["seconds"] > 0 else 0.0
    base = getattr(model, "get_base_model", lambda: model)()
    utilisation = (mfu(per_s / procs.world, matmul_parameters(base.config), peak_tflops(device_name(profile, procs.local_rank)))
                   if cuda and per_s else None)
    traces = gather_objects(None if tracer is None or tracer.summary is None
                            else {**tracer.summary, "top": tracer.summary["top"][:10]}) if tracer else None
    return {"step_traces": traces, "steady": steady, "tokens_steady": sum_over_ranks(steady["tokens"]),
            "tokens_trained": sum_over_ranks(steady["tokens_all"]), "sync": sync,
            "step_s": [round(s, 4) for s in clock.step_seconds()], "runtime_s": output.metrics["train_runtime"],
            "peaks": gather_objects(peak), "embeddings": embeddings, "start_step": clock.start_step,
            "training_memory": training_memory, "mfu": round(utilisation, 4) if utilisation else None,
            "embeddings_check": embeddings_check, "loaded_from": output.metrics.get("loaded_from"),
            "gradient_checkpointing": repr(getattr(model, "_unsloth_gradient_checkpointing",
                                                   profile.use_gradient_checkpointing))}


def evaluate(model, tokenizer, profile: Profile, stories: int) -> dict:
    """Return rank 0's held-out perplexity on ``stories`` validation stories; a failure is recorded
    as ``eval_error`` rather than allowed to hide the training result."""
    try:
        from helpers.data import load_raw_dataset
        from helpers.evaluation import perplexity

        if profile.uses_unsloth:
            from unsloth import FastLanguageModel

            FastLanguageModel.for_inference(model)
        val, _ = load_raw_dataset(profile, "validation")
        texts = [t for t in val["text"] if t and t.strip()][:stories]
        return {"eval_perplexity": round(perplexity(model, tokenizer, texts, profile.eval_max_tokens, progress=False), 3),
                "eval_stories": len(texts)}
    except Exception as err:  # noqa: BLE001
        return {"eval_error": f"{type(err).__name__}: {err}"[:300]}


def result_record(procs: Processes, profile: Profile, policy: dict, trainer, measured: dict, extra: dict) -> dict:
    """Return the RESULT object of this run (see the module docstring)."""
    import torch

    from helpers.lab.throughput import WARMUP_STEPS_EXCLUDED
    from helpers.session import library_versions
    from helpers.training import describe_param_groups, parameter_kind

    steady = measured["steady"]
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    window = (f"optimizer steps {steady['first_step']}..{steady['last_step']}" if steady["steady"]
              else "all steps (too few to leave out the first two)")
    step_s = measured["step_s"]
    return {
        "workload": "scale", "gpus": procs.world, "device": device_name(profile, procs.local_rank),
        "profile": profile.name, "model": profile.model_label, "backend": profile.backend,
        "load_in_4bit": profile.load_in_4bit, "optim": profile.optim, "seq_len": profile.max_seq_length,
        **{k: policy[k] for k in ("per_device_batch", "grad_accum", "global_batch", "reference_global_batch")},
        "global_batch_kept": policy["kept"],
        "learning_rate": profile.learning_rate, "embedding_learning_rate": profile.embedding_learning_rate,
        "strategy": str(trainer.accelerator.distributed_type).split(".")[-1],
        "steps": trainer.state.global_step,
        "resumed_from": f"checkpoint-{measured['start_step']}" if measured["start_step"] else None,
        # set when the run's steps were all done before (killed while saving): loaded, not trained again
        "loaded_from": measured.get("loaded_from"),
        "tokens_per_s": round(measured["tokens_steady"] / steady["seconds"], 1) if steady["seconds"] > 0 else None,
        "steady_state": window, "steady_tokens": int(measured["tokens_steady"]), "steady_s": round(steady["seconds"], 4),
        "tokens_trained": int(measured["tokens_trained"]),
        "step_s_median": round(statistics.median(step_s[WARMUP_STEPS_EXCLUDED:] or step_s), 4) if step_s else None,
        "step_s": step_s, "train_runtime_s": round(measured["runtime_s"], 3),
        "final_loss": losses[-1] if losses else None, "losses": [round(loss, 5) for loss in losses],
        "sync_check": "passed" if measured["sync"] else "not run", "sync": measured["sync"],
        "peak_reserved_gib_per_rank": measured["peaks"] if profile.device == "cuda" else None,
        "training_memory": measured["training_memory"], "memory_stages": MEMORY_STAGES,
        "param_groups": [{k: g[k] for k in ("group", "lr", "tensors", "parameters")}
                         for g in describe_param_groups(getattr(trainer.optimizer, "optimizer", trainer.optimizer),
                                                        trainer.model)],
        "embeddings_trained": {parameter_kind(name): v["max_change"] for name, v in measured["embeddings"].items()},
        "embeddings_check": measured["embeddings_check"],
        # what the epoch did to each trainable embedding matrix: stored dtype, share of entries changed,
        # of rows touched, and of entries changed within the touched rows (16-bit copies round updates away)
        "embedding_change": {parameter_kind(name): {k: (round(v[k], 5) if isinstance(v[k], float) else v[k])
                                                    for k in ("dtype", "changed_share", "rows_touched_share",
                                                              "changed_in_touched_rows")}
                             for name, v in measured["embeddings"].items()},
        "embedding_dtype": profile.embedding_dtype or "the library's", "packing": profile.packing,
        "gradient_checkpointing": measured.get("gradient_checkpointing"),
        "mfu": measured.get("mfu"),
        **({"step_traces": measured["step_traces"]} if measured.get("step_traces") else {}),
        "versions": {**library_versions(), "cuda": torch.version.cuda},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **extra,
    }


# --- the run ------------------------------------------------------------------------------------


FINISHED_FILES = ("adapter", "result.json")  # what a finished run leaves in --output-dir
EARLIER_RUNS = "earlier-runs"


def keep_finished_run(output_dir: Path) -> Path | None:
    """Move a finished run's ``adapter/`` and ``result.json`` out of the way, into
    ``<output-dir>/earlier-runs/<UTC time it finished>/``, before this run writes its own: a run never
    destroys another run's adapter or result (issue 31, case 12). Returns that folder, or None when
    there was nothing to keep."""
    from helpers.support.paths import relative

    found = [output_dir / name for name in FINISHED_FILES if (output_dir / name).exists()]
    if not found:
        return None
    finished = max(path.stat().st_mtime for path in found)
    stamp = datetime.datetime.fromtimestamp(finished, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    keep = output_dir / EARLIER_RUNS / stamp
    n = 1
    # a folder of this time that lacks these files is this run's, begun by a process killed between
    # the two moves: finish it there, so adapter and result.json stay together
    while keep.exists() and any((keep / path.name).exists() for path in found):
        n += 1
        keep = output_dir / EARLIER_RUNS / f"{stamp}-{n}"
    keep.mkdir(parents=True, exist_ok=True)
    for path in found:
        os.replace(path, keep / path.name)
    print(f"Kept the earlier run's {' and '.join(p.name for p in found)} in {relative(keep)}: this run writes its own "
          f"into {relative(output_dir)} (delete {relative(output_dir / EARLIER_RUNS)} when you no longer need them).")
    return keep


def write_results(paths: list[Path], result: dict) -> str | None:
    """Write ``result`` to each of ``paths``; return None, or what went wrong (a full disk, a folder
    that cannot be written) and that the RESULT line holds the whole result: the caller prints that
    line anyway and exits 1, instead of ending in a raw OSError after the adapter was saved."""
    from helpers.errors import explain_disk_full, is_disk_full
    from helpers.support.files import write_json
    from helpers.support.paths import relative

    for path in paths:
        try:
            write_json(path, result)
        except OSError as err:
            reason = explain_disk_full(path.parent, relative(path)).strerror if is_disk_full(err) else str(err)
            return (f"{relative(path)} could not be written: {reason}\nThe whole result is the RESULT line below; "
                    "the adapter is saved. Save that line, free space, and keep it as the run's result.json.")
    return None


def save_final_adapter(model, tokenizer, output_dir: Path, extra: dict) -> str | None:
    """Keep the finished run found in ``output_dir`` (:func:`keep_finished_run`), then save this run's
    adapter, recording its folder in ``extra["adapter"]``. Returns None, or, when either fails (a full
    disk, a folder that cannot be written), what happened and how to save it without training again:
    the RESULT is then still printed (it used to end in a raw error, the measurements lost)."""
    from helpers.checkpoints import save_adapter
    from helpers.support.paths import relative

    try:
        keep_finished_run(output_dir)
        extra["adapter"] = relative(save_adapter(model, tokenizer, output_dir / "adapter"))
    except OSError as err:
        extra["adapter"] = None
        extra["adapter_error"] = str(err)[:500]
        return (f"the adapter was not saved: {err}\nThe weights are in the run's last checkpoint: free space (or fix "
                "the folder), then run the same command again, and it saves them without training again. The "
                "measurements are in the RESULT line below; no result.json was written.")
    return None


def report(args, procs: Processes, profile: Profile, policy: dict, trainer, measured: dict, rows, output_dir: Path,
           repeat: int | None = None):
    """Rank 0: evaluate, save the adapter (``helpers.checkpoints.save_adapter``), compare with a
    baseline, write ``result.json`` and print the RESULT line."""
    from helpers.lab.distributed import compare_runs

    model, tokenizer = trainer.model, trainer.processing_class
    stories = profile.eval_stories if args.eval_stories is None else args.eval_stories
    repeat = args.repeat_data if repeat is None else repeat
    extra = {"repeat_data": repeat, **({"repeat_data_asked": args.repeat_data} if repeat != args.repeat_data else {}),
             "train_rows": len(rows),
             **(evaluate(model, tokenizer, profile, stories) if stories > 0 else {})}
    unsaved = None if args.no_save else save_final_adapter(model, tokenizer, output_dir, extra)
    result = result_record(procs, profile, policy, trainer, measured, extra)
    if args.baseline_result and result["tokens_per_s"]:
        result.update(compare_runs(json.loads(args.baseline_result.read_text()), result))
    elif args.baseline_result:  # a run loaded from its finished checkpoint timed no step: nothing to compare
        result["baseline_comparison"] = "not made: no optimizer step was timed in this process"
    unwritten = unsaved or write_results(
        [output_dir / "result.json"] + ([args.result_json] if args.result_json else []), result)
    resumed = f" resumed from {result['resumed_from']}" if result["resumed_from"] else ""
    if result["loaded_from"]:
        resumed = f" (all trained before: loaded from {result['loaded_from']}, no step run now)"
    print(f"{result['steps']} steps on {procs.world} process(es){resumed}; {result['tokens_per_s']} tokens/s over "
          f"{result['steady_state']}; final loss {result['final_loss']}; sync check: {result['sync_check']}")
    if unwritten is not None:
        print(f"ERROR    : {unwritten}", file=sys.stderr, flush=True)
    print("RESULT " + json.dumps(result), flush=True)
    if unwritten is not None:
        raise SystemExit(1)


STAGE = {"now": "starting", "output_dir": None}  # what main() is doing, for the message of a Ctrl-C


def last_saved_checkpoint(checkpoints: Path) -> Path | None:
    """Return the last ``checkpoint-N`` in ``checkpoints`` that holds its run record (written last, see
    ``helpers.checkpoints``), or None; reads file names only, so it is quick at any moment."""
    found = []
    for folder in checkpoints.glob("checkpoint-*") if checkpoints.is_dir() else []:
        step = folder.name.removeprefix("checkpoint-")
        if step.isdigit() and (folder / "run.json").is_file():
            found.append((int(step), folder))
    return max(found)[1] if found else None


def stopped_message(stage: str, output_dir: Path | None, err: BaseException) -> str:
    """Return the one line (two for an interrupted training) a Ctrl-C at ``stage`` ends with: where it
    stopped, what of the run is saved (the last checkpoint, or nothing yet) and the command that goes on."""
    from helpers.support.paths import relative

    head = f"train_cpt.py: stopped by Ctrl-C while {stage}."
    if type(err).__name__ == "TrainingInterrupted" and str(err):
        return f"{head} {err}"
    checkpoint = last_saved_checkpoint(output_dir / "checkpoints") if output_dir is not None else None
    if checkpoint is None:
        where = f" in {relative(output_dir / 'checkpoints')}" if output_dir is not None else ""
        saved = f" Nothing of this run was saved yet (no checkpoint{where}); run the same command again to start it."
    else:
        step = checkpoint.name.removeprefix("checkpoint-")
        saved = (f" The last checkpoint is {relative(checkpoint)} (step {step}); run the same command again to "
                 "resume from it.")
        if stage.startswith("saving"):
            saved += " It saves the adapter and result.json from that checkpoint without training again."
    return head + saved


def run(argv: list[str] | None = None) -> int:
    """Run :func:`main` and return its exit code; a Ctrl-C at any point ends quietly with exit code 130
    and one message on stderr (rank 0 only) saying what was saved (:func:`stopped_message`), never a
    bare ``KeyboardInterrupt`` traceback; an outputs or cache folder that cannot be made or written
    (``CPT_OUTPUTS`` on a read-only mount, below a file) ends in its one-line message, exit code 1."""
    from helpers.support.paths import OutputsNotAFolderError, OutputsNotWritableError

    try:
        return main(argv)
    except (OutputsNotAFolderError, OutputsNotWritableError) as err:  # CPT_OUTPUTS read-only, below a file, ...
        print(f"train_cpt.py: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as err:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the message
        if int(os.environ.get("RANK", "0")) == 0:
            try:
                message = stopped_message(STAGE["now"], STAGE["output_dir"], err)
            except Exception:  # noqa: BLE001  (the message must never fail the exit)
                message = f"train_cpt.py: stopped by Ctrl-C while {STAGE['now']}."
            print(message, file=sys.stderr, flush=True)
        return 130


def main(argv: list[str] | None = None) -> int:
    STAGE.update(now="checking the settings", output_dir=None)
    args = parse_args(argv)
    try:  # a CPT_* switch or path that cannot work (CPT_PACKING=2, CPT_MODEL=missing/, CPT_PROFILE=typo)
        profile, reason = choose_profile(args)
        if profile.is_local_path_model:  # weights present but zero-filled load without a word (issue 40)
            from helpers.errors import check_model_weights_content

            check_model_weights_content(profile.model_name, profile.own_model)
    except (KeyError, ValueError, OSError) as err:
        raise SystemExit(f"train_cpt.py: {err.args[0] if isinstance(err, KeyError) else err}") from None
    try:  # the notebooks' rule for settings that cannot train, before any process or model starts
        check_training_settings(profile)
    except SettingsError as err:
        raise SystemExit(f"train_cpt.py: {err}") from None
    from helpers.support.paths import project_root

    output_dir = args.output_dir if args.output_dir.is_absolute() else project_root() / args.output_dir
    if problems := path_problems(args, output_dir) + overwrite_problems(args, output_dir):
        raise SystemExit("train_cpt.py: " + "\ntrain_cpt.py: ".join(problems))
    lock = lock_output_dir(output_dir)  # noqa: F841  (held until the process ends)
    STAGE.update(now="starting the processes", output_dir=output_dir)
    if args.tiny:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    procs = start_processes(profile)
    from helpers.lab.distributed import batch_policy

    policy = batch_policy(profile.per_device_train_batch_size, profile.gradient_accumulation_steps, procs.world)
    describe_run(procs, profile, reason, policy)
    for note in settings_notes(args):
        procs.say(f"NOTE     : {note}")
    from helpers.data import DataError

    STAGE["now"] = "loading the model and the data"
    try:  # data that cannot make a step, a micro-batch that cannot fit: one line, before any training
        model, tokenizer, rows, text, repeat = load_model_and_rows(procs, profile, args.repeat_data, policy)
    except (DataError, SettingsError) as err:
        raise SystemExit(f"train_cpt.py: {err}") from None
    STAGE["now"] = "building the trainer"
    trainer = build_trainer(profile, model, tokenizer, rows, policy, output_dir / "checkpoints", args.save_steps, text)
    procs.say(f"attention: {trainer.cpt_attention_route}")
    # what helpers.checkpoints tells a script user (not a notebook user) to do (issue 31, case 16)
    trainer.cpt_resume_how = "run the same scripts/train_cpt.py command again: it continues from that checkpoint"
    trainer.cpt_fresh_how = "run scripts/train_cpt.py again with --fresh"
    trainer.cpt_other_dir_how = "give this run another --output-dir"
    settle_checkpoints(procs, output_dir / "checkpoints")
    STAGE["now"] = "training"
    measured = train_measured(procs, trainer, profile, args.check_sync, resume=not args.fresh,
                              trace_step=args.trace_step, trace_dir=output_dir / "step-trace",
                              load_finished=not args.fresh and unsaved_after(output_dir))
    STAGE["now"] = "saving the adapter and the result"
    if procs.main:
        report(args, procs, profile, policy, trainer, measured, rows, output_dir, repeat)
    procs.state.wait_for_everyone()
    procs.state.destroy_process_group()
    if measured["embeddings_check"] != "passed":
        print(f"FAILED: {measured['embeddings_check']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
