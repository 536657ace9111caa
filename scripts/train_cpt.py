#!/usr/bin/env python3
"""The training recipe of notebooks 01-05 as one script, on one device or on N GPUs (DDP).

    python scripts/train_cpt.py                                    # one GPU (or the CPU)
    accelerate launch --num_processes 2 scripts/train_cpt.py       # two GPUs, data parallel (DDP)
    python scripts/train_cpt.py --profile gpu-smoke --max-steps 30 --check-sync
    python scripts/train_cpt.py --tiny                             # CPU self-test: tiny random Llama, 2 steps

It reads the same profiles as the notebooks (``CPT_PROFILE``, or ``--profile`` which wins) and calls
the same helpers: ``load_model_and_tokenizer``, ``add_lora``, ``load_raw_dataset`` + ``append_eos`` +
``build_train_dataset``, ``build_trainer``, ``describe_param_groups``. Nothing of the recipe is
re-implemented here; the script adds only what running on several processes needs.

Multi-GPU (DDP). Every process holds a whole copy of the model (4-bit base + LoRA + the embedding
copies) on its own GPU and trains on its own share of each batch; after every backward pass DDP
averages the gradients of the trainable parameters over the GPUs, so every copy takes the same
optimizer step. ``transformers.Trainer`` (and ``UnslothTrainer`` on top of it) sets DDP up by itself
when started by ``accelerate launch`` or ``torchrun``; this script only makes sure that

* each process loads its model onto its own GPU (unsloth does this itself under a launcher; the
  plain transformers branch of the helpers asks for ``device_map={"": 0}``, which the script turns
  into the process's local rank);
* the **global batch stays the recipe's**: global = per-device batch x gradient accumulation x GPUs.
  The profile's numbers describe one GPU, so on N GPUs the script divides gradient accumulation by
  N (when it divides evenly; otherwise it rounds up and says that the global batch changed). With
  the global batch unchanged the learning rates stay the profile's and N GPUs take the same
  optimizer steps on the same rows as one GPU, only faster;
* only rank 0 prints, evaluates and saves; ``--check-sync`` proves that the trainable weights are
  bit-identical on every rank after the first optimizer step, after the second (under a warm-up the
  first step runs at learning rate 0, so the second is the first that moves the weights), and at
  the end.

Rows. Both backends train on the rows of ``helpers.data.build_train_dataset`` (packed blocks of
``max_seq_length`` tokens for the packed profiles), so one GPU and N GPUs see the same rows in the
same steps. ``--repeat-data K`` repeats them K times, for throughput runs longer than the small
shipped sample.

The last line rank 0 prints is ``RESULT {json}``: ``workload: "scale"``, ``gpus`` (the world size),
steady-state ``tokens_per_s`` (real, non-padding tokens of all ranks over the optimizer steps after
the first two), ``train_runtime_s``, ``final_loss``, ``global_batch``, versions, date and device.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python scripts/train_cpt.py` from a checkout without `pip install -e .`

from helpers.profiles import GPU_SMOKE, PROFILE_ENV_VAR, PROFILES, Profile, select_profile  # noqa: E402

WARMUP_STEPS_EXCLUDED = 2  # steady-state throughput leaves out the first optimizer steps (compilation, caches)

# --tiny: the CPU self-test of this script (tests/test_train_script.py). The smoke profile's random
# Llama (built from a config, SmolLM2 tokenizer shipped in data/), in fp32 through plain transformers +
# PEFT, 2 optimizer steps of 2 x 2 rows of 64 tokens.
TINY_PROFILE = GPU_SMOKE.replace(
    name="tiny-cpu",
    description="Self-test of scripts/train_cpt.py: the random smoke Llama on the CPU, 2 steps of 2 x 2 rows of 64 tokens.",
    backend="transformers",
    device="cpu",
    load_in_4bit=False,
    dtype="float32",
    optim="adamw_torch",
    use_gradient_checkpointing=False,
    max_seq_length=64,
    max_steps=2,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=2,
    eval_stories=4,
    eval_max_tokens=64,
)


class SyncCheckFailed(AssertionError):
    """The trainable weights differ between ranks: the processes are not training one model."""


# --- arguments and profile ----------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        help=f"profile name (overrides ${PROFILE_ENV_VAR}; default: as the notebooks choose)")
    parser.add_argument("--tiny", action="store_true",
                        help="self-test: tiny random Llama on the CPU, 2 steps of 64-token rows (ignores --profile)")
    parser.add_argument("--backend", choices=("unsloth", "transformers"),
                        help="replace the profile's backend (e.g. plain transformers + PEFT on a CUDA profile)")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (default: the profile's)")
    parser.add_argument("--max-seq-length", type=int, help="replace the profile's max_seq_length (block length)")
    parser.add_argument("--per-device-batch", type=int, help="replace the profile's per_device_train_batch_size")
    parser.add_argument("--grad-accum", type=int,
                        help="replace the profile's gradient_accumulation_steps, i.e. the ONE-GPU recipe's; "
                             "on N GPUs it is divided by N")
    parser.add_argument("--repeat-data", type=int, default=1,
                        help="repeat the training rows this many times (throughput runs on the small sample)")
    parser.add_argument("--eval-stories", type=int,
                        help="held-out stories for rank 0's perplexity after training (default: the profile's; 0: skip)")
    parser.add_argument("--seed", type=int, help="replace the profile's seed")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/train_cpt"),
                        help="where the adapter and result.json go (relative paths start at the project root)")
    parser.add_argument("--no-save", action="store_true", help="do not save the adapter")
    parser.add_argument("--check-sync", action="store_true",
                        help="after optimizer steps 1 and 2 and at the end, assert that the trainable weights "
                             "are bit-identical on every rank")
    parser.add_argument("--result-json", type=Path, help="also write the RESULT object to this file (rank 0)")
    parser.add_argument("--baseline-result", type=Path,
                        help="RESULT json of a one-GPU run with the same settings: adds speedup, scaling_efficiency "
                             "and the loss comparison (see compare_runs) to this run's RESULT")
    return parser.parse_args(argv)


def choose_profile(args: argparse.Namespace) -> tuple[Profile, str]:
    """Return the profile this run uses, with the command line's replacements applied, and why."""
    if args.tiny:
        profile, reason = TINY_PROFILE, "--tiny (self-test)"
    elif args.profile:
        profile, reason = select_profile(env={**os.environ, PROFILE_ENV_VAR: args.profile})
        reason = f"--profile {args.profile}"
    else:
        profile, reason = select_profile()
    changes = {}
    if args.backend:
        changes["backend"] = args.backend
    if args.max_steps is not None:
        changes["max_steps"] = args.max_steps
    if args.max_seq_length is not None:
        changes["max_seq_length"] = args.max_seq_length
    if args.per_device_batch is not None:
        changes["per_device_train_batch_size"] = args.per_device_batch
    if args.grad_accum is not None:
        changes["gradient_accumulation_steps"] = args.grad_accum
    if args.seed is not None:
        changes["seed"] = args.seed
    if changes:
        profile = profile.replace(**changes)
        reason += "; command line: " + ", ".join(f"{k}={v}" for k, v in changes.items())
    return profile, reason


def batch_policy(per_device: int, grad_accum: int, world_size: int) -> dict:
    """Split the one-GPU recipe's batch over ``world_size`` processes, keeping the global batch.

    The profile's ``per_device_train_batch_size`` x ``gradient_accumulation_steps`` is the global batch
    of the recipe on one GPU. On N GPUs the per-device batch stays (same memory per GPU) and gradient
    accumulation becomes ``grad_accum / N``, so that per_device x accumulation x N, the rows behind
    one optimizer step, is unchanged and so are the learning rates. When N does not divide it, the
    accumulation is rounded up and ``kept`` is False: the global batch grows, the learning rates are
    NOT rescaled, and the caller should say so.
    """
    if per_device < 1 or grad_accum < 1 or world_size < 1:
        raise ValueError("batch sizes and world size must be positive")
    reference = per_device * grad_accum
    accum = max(1, math.ceil(grad_accum / world_size))
    return {
        "reference_global_batch": reference,
        "per_device_batch": per_device,
        "grad_accum": accum,
        "world_size": world_size,
        "global_batch": per_device * accum * world_size,
        "kept": per_device * accum * world_size == reference,
    }


# --- model placement under a launcher -------------------------------------------------------------


@contextlib.contextmanager
def load_on_local_device(profile: Profile, local_rank: int, distributed: bool):
    """While loading, make the plain transformers branch place the model on this process's GPU.

    ``helpers.modeling.load_model_and_tokenizer`` loads CUDA profiles with ``device_map={"": 0}``,
    which is right for one GPU, but under DDP would put every rank's copy on GPU 0. (``set_device``
    does not help: an integer in a device map names a GPU explicitly.) Here that request is turned
    into ``{"": local_rank}``. The unsloth branch needs nothing: its loader pins each rank to its
    own GPU itself when it sees a launcher's LOCAL_RANK / WORLD_SIZE.
    """
    if not (distributed and profile.device == "cuda" and not profile.uses_unsloth):
        yield
        return
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained  # a bound classmethod

    def on_local_rank(*args, **kwargs):
        if kwargs.get("device_map") == {"": 0}:
            kwargs["device_map"] = {"": local_rank}
        return original(*args, **kwargs)

    AutoModelForCausalLM.from_pretrained = on_local_rank
    try:
        yield
    finally:
        AutoModelForCausalLM.from_pretrained = original


# --- measuring ----------------------------------------------------------------------------------


def count_tokens(collator) -> list[int]:
    """Make ``collator`` record the real (non-padding) tokens of every micro-batch it builds; return
    the list the counts go to (one entry per micro-batch, in order).

    Counting here, on the CPU and in each rank's own process, costs nothing on the GPU and needs no
    collective per step; the counts are summed over the ranks once, at the end. Micro-batches are
    collated in the order they are trained on (``dataloader_num_workers=0``), so ``counts[i]`` is the
    i-th micro-batch this rank trains on, even when the loader fetches ahead. The collator's class is
    swapped for a subclass, so that ``isinstance`` checks of the trainers still hold.
    """
    counts: list[int] = []
    base = type(collator)

    class Counting(base):
        def __call__(self, *args, **kwargs):
            batch = base.__call__(self, *args, **kwargs)
            mask = batch.get("attention_mask") if hasattr(batch, "get") else None
            if mask is not None:
                counts.append(int(mask.sum()))
            else:  # padding-free batches (one flattened row) carry no padding at all
                counts.append(int(batch["input_ids"].numel()))
            return batch

    Counting.__name__ = Counting.__qualname__ = f"Counting{base.__name__}"
    collator.__class__ = Counting
    return counts


def trainable_digest(model) -> dict:
    """Return a SHA-256 over the names and bytes of every trainable parameter, and their float sum."""
    import torch

    digest, total, count = hashlib.sha256(), 0.0, 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        tensor = param.detach().to("cpu").contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
        total += tensor.double().sum().item()
        count += tensor.numel()
    return {"sha256": digest.hexdigest(), "sum": total, "parameters": count}


def gather_objects(obj, world_size: int) -> list:
    """``torch.distributed.all_gather_object`` when several processes run, else ``[obj]``."""
    import torch.distributed as dist

    if world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def check_sync(model, world_size: int, when: str) -> dict:
    """Gather every rank's :func:`trainable_digest` and raise :class:`SyncCheckFailed` unless they
    are all identical. Every rank must call it (it is a collective). Returns a summary."""
    digests = gather_objects(trainable_digest(model), world_size)
    hashes = {d["sha256"] for d in digests}
    summary = {"when": when, "ranks": len(digests), "identical": len(hashes) == 1,
               "sha256": digests[0]["sha256"][:16], "sum": digests[0]["sum"],
               "parameters": digests[0]["parameters"]}
    if len(hashes) != 1:
        lines = [f"rank {i}: sha256 {d['sha256'][:16]} sum {d['sum']!r}" for i, d in enumerate(digests)]
        raise SyncCheckFailed(f"trainable weights differ between ranks {when}:\n  " + "\n  ".join(lines))
    return summary


def make_callback(timer: dict, model, world_size: int, sync: bool, sync_log: list):
    """Return a TrainerCallback that times optimizer steps (CUDA-synchronised), tracks how many
    micro-batches were consumed, and runs the sync check after the first step."""
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            timer["consumed"] = 0
            timer["steps"] = []  # (global_step, perf_counter, micro-batches consumed so far)
            if cuda:
                torch.cuda.synchronize()
            timer["begin"] = time.perf_counter()

        def on_substep_end(self, args, state, control, **kwargs):
            timer["consumed"] += 1

        def on_step_end(self, args, state, control, **kwargs):
            timer["consumed"] += 1
            # Step 1 runs at learning rate 0 under a warm-up (so it proves the start is identical);
            # step 2 is the first that changes the weights. Checked before the clock is read, so that
            # the check's time falls into the (excluded) first two steps.
            if sync and state.global_step in (1, 2):
                sync_log.append(check_sync(model, world_size, f"after optimizer step {state.global_step}"))
            if cuda:
                torch.cuda.synchronize()
            timer["steps"].append((state.global_step, time.perf_counter(), timer["consumed"]))

    return StepTimer()


def steady_state(timer: dict, counts: list[int]) -> dict:
    """This rank's tokens and seconds over the optimizer steps after the first
    :data:`WARMUP_STEPS_EXCLUDED` (all steps when there are too few)."""
    steps = timer["steps"]
    if not steps:
        return {"tokens": 0, "seconds": 0.0, "steps": 0, "steady": False, "step_s": []}
    skip = WARMUP_STEPS_EXCLUDED if len(steps) > WARMUP_STEPS_EXCLUDED else 0
    if skip:
        _, t0, c0 = steps[skip - 1]
    else:
        t0, c0 = timer["begin"], 0
    _, t1, c1 = steps[-1]
    times = [timer["begin"]] + [t for _, t, _ in steps]
    return {"tokens": sum(counts[c0:c1]), "seconds": t1 - t0, "steps": len(steps) - skip, "steady": bool(skip),
            "step_s": [round(b - a, 4) for a, b in zip(times, times[1:], strict=False)]}


def all_reduce_sum(value: float, device) -> float:
    """Sum a number over all ranks (returns it unchanged in a single process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


def device_name(profile: Profile, local_rank: int) -> str:
    import platform

    import torch

    if profile.device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(local_rank)
    return f"cpu ({platform.machine()})"


LOSS_TOLERANCE_REL = 0.01  # 1 GPU vs N GPUs at the same global batch: same rows, same steps, so the same losses
TARGET_EFFICIENCY = 0.9  # issue 8's target: N GPUs give at least 0.9 x N the tokens/s of one (1.8x on 2)


def compare_runs(baseline: dict, result: dict, tolerance_rel: float = LOSS_TOLERANCE_REL) -> dict:
    """Compare a RESULT with the RESULT of a one-GPU baseline run of the same settings.

    Returns ``speedup`` (tokens/s ratio), ``scaling_efficiency`` (speedup / GPUs, 1.0 = linear) and
    the loss comparison: with the global batch unchanged both runs train on the same rows in the same
    optimizer steps, so their losses may differ only by floating-point rounding (bf16 reductions in a
    different order, an all-reduce instead of local accumulation); ``loss_match`` allows
    ``tolerance_rel`` of the loss at every step.
    """
    speedup = result["tokens_per_s"] / baseline["tokens_per_s"]
    pairs = list(zip(baseline["losses"], result["losses"], strict=False))
    diffs = [abs(a - b) for a, b in pairs]
    same_batch = baseline["global_batch"] == result["global_batch"] and len(pairs) > 0
    return {
        "baseline_gpus": baseline["gpus"],
        "baseline_tokens_per_s": baseline["tokens_per_s"],
        "speedup": round(speedup, 3),
        "scaling_efficiency": round(speedup * baseline["gpus"] / result["gpus"], 3),
        "target_efficiency": TARGET_EFFICIENCY,
        "target_met": speedup * baseline["gpus"] / result["gpus"] >= TARGET_EFFICIENCY,
        "same_global_batch": baseline["global_batch"] == result["global_batch"],
        "final_loss_abs_diff": abs(baseline["final_loss"] - result["final_loss"]),
        "loss_max_abs_diff": max(diffs) if diffs else None,
        "loss_tolerance_rel": tolerance_rel,
        "loss_match": same_batch and all(d <= tolerance_rel * abs(a) for d, (a, _) in zip(diffs, pairs, strict=False)),
    }


# --- the run ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile, reason = choose_profile(args)
    if args.tiny:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from helpers.session import check_runnable, library_versions

    check_runnable(profile)
    if profile.uses_unsloth:
        import unsloth  # noqa: F401  (before transformers, which it patches)

    from accelerate import PartialState

    state = PartialState(cpu=profile.device == "cpu")  # starts the process group under a launcher
    main_proc, world = state.is_main_process, state.num_processes
    local_rank, distributed = state.local_process_index, state.num_processes > 1

    import datasets
    import torch
    import transformers

    if not main_proc:  # rank 0 alone speaks
        transformers.utils.logging.set_verbosity_error()
        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()

    def say(*parts):
        if main_proc:
            print(*parts, flush=True)

    from helpers.data import append_eos, build_train_dataset, load_raw_dataset
    from helpers.modeling import load_model_and_tokenizer
    from helpers.paths import project_root, relative
    from helpers.session import seed_everything
    from helpers.storage import save_directory_atomically, write_json
    from helpers.training import add_lora, build_trainer, describe_param_groups

    policy = batch_policy(profile.per_device_train_batch_size, profile.gradient_accumulation_steps, world)
    say(f"profile  : {profile.name} ({reason})")
    say(f"           {profile.description}")
    say(f"model    : {profile.model_name} (backend: {profile.backend}, 4-bit: {profile.load_in_4bit})")
    say(f"processes: {world} ({state.distributed_type}, backend {state.backend}); "
        f"device of rank 0: {device_name(profile, local_rank)}")
    say(f"batch    : global {policy['global_batch']} rows = {policy['per_device_batch']} per device x "
        f"{policy['grad_accum']} accumulation x {world} process(es) "
        f"(one-GPU recipe: {profile.per_device_train_batch_size} x {profile.gradient_accumulation_steps} = "
        f"{policy['reference_global_batch']}), {profile.max_seq_length}-token rows")
    if policy["kept"]:
        say(f"lr       : {profile.learning_rate:g} (adapters), {profile.embedding_learning_rate:g} (embed_tokens, "
            "lm_head): the recipe's, since the global batch is the recipe's")
    else:
        say(f"WARNING  : {world} does not divide gradient_accumulation_steps={profile.gradient_accumulation_steps}; "
            f"the global batch is {policy['global_batch']} instead of {policy['reference_global_batch']} rows "
            f"and the learning rates ({profile.learning_rate:g} / {profile.embedding_learning_rate:g}) are NOT rescaled")

    # Rank 0 first: it builds/converts the local model and fills the datasets cache; the others reuse them.
    seed_everything(profile.seed)
    quiet = contextlib.nullcontext() if main_proc else contextlib.redirect_stdout(open(os.devnull, "w"))
    with state.main_process_first(), quiet:
        with load_on_local_device(profile, local_rank, distributed):
            model, tokenizer = load_model_and_tokenizer(profile)
        raw, source = load_raw_dataset(profile, "train")
        text_dataset = append_eos(raw, tokenizer.eos_token)
        train_dataset, stats = build_train_dataset(text_dataset, tokenizer, profile)
    seed_everything(profile.seed)  # the same adapter initialisation on every rank (DDP also broadcasts rank 0's)
    model = add_lora(model, profile)
    if args.repeat_data > 1:
        train_dataset = datasets.concatenate_datasets([train_dataset] * args.repeat_data)
    say(f"data     : {source}: {stats['documents']} documents, {stats['tokens']} tokens -> {stats['rows']} rows"
        f"{f' x {args.repeat_data} repeats' if args.repeat_data > 1 else ''} = {len(train_dataset)} rows")
    if main_proc:
        model.print_trainable_parameters()

    output_dir = args.output_dir if args.output_dir.is_absolute() else project_root() / args.output_dir
    overrides = dict(
        gradient_accumulation_steps=policy["grad_accum"],
        ddp_find_unused_parameters=False,  # every trainable tensor is used; True breaks reentrant checkpointing
    )
    if profile.uses_unsloth:
        overrides["max_length"] = profile.max_seq_length  # SFTConfig: keep whole blocks (its default cuts at 1024)
    trainer = build_trainer(profile, model, tokenizer, train_dataset, output_dir=str(output_dir / "trainer"),
                            **overrides)
    counts = count_tokens(trainer.data_collator)
    timer: dict = {}
    sync_log: list = []
    trainer.add_callback(make_callback(timer, model, world, args.check_sync, sync_log))

    trainer.create_optimizer()
    groups = describe_param_groups(trainer.optimizer, model)
    for group in groups:
        say(f"optimizer: {group['group']:<36} lr={group['lr']:.1e} tensors={group['tensors']:4d} "
            f"parameters={group['parameters'] / 1e6:.2f} M")

    if profile.device == "cuda":
        torch.cuda.reset_peak_memory_stats(local_rank)
    train_output = trainer.train()
    steady = steady_state(timer, counts)
    tokens_all = all_reduce_sum(steady["tokens"], state.device)
    tokens_total = all_reduce_sum(sum(counts[: timer["steps"][-1][2]]) if timer["steps"] else 0,
                                  state.device)
    if args.check_sync:
        sync_log.append(check_sync(model, world, "after training"))
    peaks = gather_objects(round(torch.cuda.max_memory_reserved(local_rank) / 2**30, 3)
                           if profile.device == "cuda" else None, world)

    result = None
    if main_proc:
        losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
        tokens_per_s = tokens_all / steady["seconds"] if steady["seconds"] > 0 else float("nan")
        versions = library_versions()
        versions["cuda"] = torch.version.cuda
        result = {
            "workload": "scale",
            "gpus": world,
            "device": device_name(profile, local_rank),
            "profile": profile.name,
            "backend": profile.backend,
            "load_in_4bit": profile.load_in_4bit,
            "optim": profile.optim,
            "seq_len": profile.max_seq_length,
            "per_device_batch": policy["per_device_batch"],
            "grad_accum": policy["grad_accum"],
            "global_batch": policy["global_batch"],
            "reference_global_batch": policy["reference_global_batch"],
            "global_batch_kept": policy["kept"],
            "learning_rate": profile.learning_rate,
            "embedding_learning_rate": profile.embedding_learning_rate,
            "steps": trainer.state.global_step,
            "tokens_per_s": round(tokens_per_s, 1),
            "steady_state": f"optimizer steps {WARMUP_STEPS_EXCLUDED + 1}..{len(timer['steps'])}"
                            if steady["steady"] else "all steps (too few to leave out the first two)",
            "steady_tokens": int(tokens_all),
            "steady_s": round(steady["seconds"], 4),
            "tokens_trained": int(tokens_total),
            "step_s_median": round(statistics.median(steady["step_s"][WARMUP_STEPS_EXCLUDED:] or steady["step_s"]), 4)
                             if steady["step_s"] else None,
            "step_s": steady["step_s"],
            "train_runtime_s": round(train_output.metrics["train_runtime"], 3),
            "final_loss": losses[-1][1] if losses else None,
            "losses": [round(loss, 5) for _, loss in losses],
            "sync_check": ("passed" if all(s["identical"] for s in sync_log) else "failed") if sync_log else "not run",
            "sync": sync_log,
            "peak_reserved_gib_per_rank": peaks if profile.device == "cuda" else None,
            "param_groups": [{k: g[k] for k in ("group", "lr", "tensors", "parameters")} for g in groups],
            "repeat_data": args.repeat_data,
            "train_rows": len(train_dataset),
            "versions": versions,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        n_eval = profile.eval_stories if args.eval_stories is None else args.eval_stories
        if n_eval > 0:  # rank 0 only; a failure here is recorded, not allowed to hide the training result
            try:
                from helpers.evaluation import perplexity

                if profile.uses_unsloth:
                    from unsloth import FastLanguageModel

                    FastLanguageModel.for_inference(model)
                val, _ = load_raw_dataset(profile, "validation")
                texts = [t for t in val["text"] if t and t.strip()][:n_eval]
                result["eval_perplexity"] = round(perplexity(model, tokenizer, texts, profile.eval_max_tokens,
                                                             progress=False), 3)
                result["eval_stories"] = len(texts)
            except Exception as err:  # noqa: BLE001
                result["eval_error"] = f"{type(err).__name__}: {err}"[:300]
        if not args.no_save:
            def write_adapter(folder):
                model.save_pretrained(folder)
                tokenizer.save_pretrained(folder)

            adapter = save_directory_atomically(output_dir / "adapter", write_adapter)
            result["adapter"] = relative(adapter)
        if args.baseline_result:
            result.update(compare_runs(json.loads(args.baseline_result.read_text()), result))
        write_json(output_dir / "result.json", result)
        if args.result_json:
            write_json(args.result_json, result)
    state.wait_for_everyone()
    if main_proc:
        print(f"{trainer.state.global_step} steps; {result['tokens_per_s']:.1f} tokens/s over {result['steady_state']} "
              f"on {world} process(es); final loss {result['final_loss']}; sync check: {result['sync_check']}")
        print("RESULT " + json.dumps(result), flush=True)
    if distributed:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
