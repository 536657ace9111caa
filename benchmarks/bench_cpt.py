#!/usr/bin/env python3
"""Benchmark the project's own training code on the walkthrough's epoch: unsloth vs the plain twin.

Everything that trains comes from ``helpers/``, the code the notebooks and ``scripts/train_cpt.py``
run: the model from ``helpers.modeling.load_model_and_tokenizer``, LoRA from
``helpers.training.add_lora``, the stories from ``helpers.data`` and the trainer from
``helpers.training.build_trainer`` (``UnslothTrainer`` with its embedding learning rate, or the
plain ``EmbeddingLRTrainer`` with the same one). Tokens and steps are measured with
``helpers.lab.throughput``. What is left here is the choice of batching mode and micro-batch, the
timing loop and the driver.

Arms (each in its own process: unsloth patches transformers when imported), plain first:
  unsloth  the profile as it is (gpu-mistral7b: unsloth, 4-bit, r=128 rsLoRA + embed_tokens/lm_head)
  plain    the same profile with backend "transformers": transformers + PEFT + bitsandbytes, with
           identical LoRA, learning rates (embedding learning rate included), optimizer, scheduler
           and seed

Modes (--modes):
  padded        one document per row, padded to the longest row of its micro-batch (the walkthrough);
                unsloth with padding_free=False, so its per-block compile runs
  padding_free  each micro-batch's documents flattened into one row, positions restarting at every
                document (unsloth padding_free=True; plain: transformers' DataCollatorWithFlattening,
                whose position_ids give a block-diagonal causal mask)
  packing       unsloth's (TRL's) best-fit packing into max_seq_length rows (unsloth arm only)
  packing_varlen       packing with torch's varlen_attn behind unsloth's attention
                       (helpers.support.varlen_attention; unsloth arm only): one flash call per row instead
                       of one SDPA call per document on torch 2.11 without flash-attn
  padding_free_varlen  padding_free the same way (unsloth arm only)
                The varlen modes enable the swap for their job alone and restore unsloth's route
                after it (CPT_TORCH_VARLEN=0 keeps it off); every unsloth RESULT names the
                attention route in "attention_route" (and for varlen modes "torch_varlen").
  chunk         concatenate-and-chunk into max_seq_length blocks (HF run_clm style, the packing of
                helpers.data); documents attend across their EOS
Micro-batches (--micro-batches 2,4,8) keep the global batch (--global-batch 16): accumulation = 16 / mb.

Workload: --documents (default 2,500, the walkthrough's slice) stories from
``helpers.data.load_raw_dataset`` (the hub slice when it is reachable, else the shipped sample,
cycled to the count), with EOS, tokenized by the profile's own tokenizer: Mistral's v3 tokenizer for
gpu-mistral7b (on a machine without network, the fake hub of
../shared/tools/device-fake-hub-mistral7b.sh), SmolLM2's in --test-mode. Each job trains one epoch
(--max-steps caps it; a capped job says ``"extrapolated": true`` and how).

Memory levers (issue 17's peak-reserved target), each recorded in every RESULT: --cuda-alloc-conf
(e.g. expandable_segments:True, against allocator fragmentation), --lora-dtype bfloat16 (the adapters
stored in 16 bits, ``helpers.training.cast_lora_weights``) and --optim (e.g. paged_adamw_8bit, the
optimizer states in paged memory).

Every job prints ``RESULT {json}``; the driver ends with a table and repeats the RESULT lines.

    python benchmarks/bench_cpt.py                                   # GPU: every arm, mode and micro-batch
    python benchmarks/bench_cpt.py --arms unsloth --modes padded --micro-batches 2
    python benchmarks/bench_cpt.py --test-mode                       # CPU check of the driver (seconds)
    python benchmarks/bench_cpt.py --quality [--test-mode] ...       # held-out perplexity of each batching
                                                                     # beside the walkthrough's (quality_gate.py)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from helpers.profiles import CPU_SMOLLM2, GPU_SMOKE, PROFILES, Profile  # noqa: E402
from helpers.training import LORA_DTYPES  # noqa: E402

MODES = ("padded", "padding_free", "packing", "chunk", "packing_varlen", "padding_free_varlen")
VARLEN_MODES = {"packing_varlen": "packing", "padding_free_varlen": "padding_free"}  # -> the mode they patch
ARMS = ("plain", "unsloth")
WALKTHROUGH = {"train_runtime_s": 536.0, "gpu": "A100-40GB", "steps": 156, "documents": 2500}

# --test-mode: the random smoke Llama on the CPU in fp32, through the plain arm (unsloth needs a GPU).
TEST_PROFILE = CPU_SMOLLM2.replace(name="bench-test-cpu", model_name=GPU_SMOKE.model_name)  # fp32, 256-token rows


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def emit(record: dict) -> None:
    print("RESULT " + json.dumps(record), flush=True)


# --- one arm, in its own process ----------------------------------------------------------------


# --gradient-checkpointing: "unsloth" recomputes each layer and keeps its saved input in CPU memory
# (copies to the host and back); "true" recomputes too, with the input kept on the GPU; "false" keeps
# every activation (fastest, the most memory).
GRADIENT_CHECKPOINTING = {"unsloth": "unsloth", "true": True, "false": False, "auto": "auto"}


def arm_profile(args, arm: str) -> Profile:
    """Return the profile of one arm: the chosen profile, with only the backend differing (and the
    optimizer or the gradient checkpointing, when ``--optim`` / ``--gradient-checkpointing`` replace
    them for both arms)."""
    profile = TEST_PROFILE if args.test_mode else PROFILES[args.profile]
    overrides = {"optim": args.optim} if getattr(args, "optim", None) else {}
    if getattr(args, "gradient_checkpointing", None):
        overrides["use_gradient_checkpointing"] = GRADIENT_CHECKPOINTING[args.gradient_checkpointing]
    return profile.replace(backend="unsloth" if arm == "unsloth" else "transformers", **overrides)


def epoch_rows(profile: Profile, tokenizer, documents: int, mode: str):
    """Return the epoch's training rows for ``mode`` (a ``datasets.Dataset`` of ``input_ids``) and
    the counts of :func:`helpers.data.build_train_dataset`: ``documents`` stories with EOS, one per
    row (cut at max_seq_length) or, for ``chunk``, concatenated into full blocks."""
    from helpers.data import append_eos, build_train_dataset, load_raw_dataset

    raw, source = load_raw_dataset(profile, "train")
    raw = raw.select([i % raw.num_rows for i in range(documents)])  # cycled when the source has fewer
    rows, stats = build_train_dataset(append_eos(raw, tokenizer.eos_token), tokenizer,
                                      profile.replace(packing=mode == "chunk"))
    return rows, {**stats, "source": source, "cycled": raw.num_rows > len(set(raw["text"]))}


def mode_settings(arm: str, mode: str, unsloth_padding_free: str) -> dict:
    """Return the training-argument overrides that select ``mode`` on ``arm``."""
    if arm != "unsloth":
        return {}
    mode = VARLEN_MODES.get(mode, mode)
    if mode == "packing":
        return {"packing": True}
    if mode == "padding_free":
        return {"padding_free": True}
    return {} if unsloth_padding_free == "auto" else {"padding_free": unsloth_padding_free == "on"}


def time_limit_callback(seconds: float | None):
    """Return a callback that stops training once ``seconds`` have passed (None: no limit)."""
    from transformers import TrainerCallback

    class TimeLimit(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if seconds is not None and time.perf_counter() - self.start > seconds:
                control.should_training_stop = True

    return TimeLimit()


@contextlib.contextmanager
def attention_route(profile: Profile, mode: str, **enable_kwargs):
    """Yield a dict for the RESULT naming unsloth's attention route (nothing for the plain arm). For a
    varlen mode, enable torch's varlen_attn behind unsloth's attention for the block only and put the
    previous route back on leaving, even after an error, so the arm's other jobs run unsloth as it is."""
    if not profile.uses_unsloth:
        yield {}
        return
    from helpers.support import varlen_attention

    if mode not in VARLEN_MODES:
        yield {"attention_route": varlen_attention.unsloth_attention_route(enable_kwargs.get("dispatch"))}
        return
    with varlen_attention.torch_varlen_for_unsloth(**enable_kwargs) as enabled:
        yield {"torch_varlen": enabled}


def route_after(dispatch=None) -> dict:
    """Return the RESULT's ``attention_route`` (unsloth only), read while a job's route is in place, and
    with the varlen wrapper installed its eager call count as ``varlen_calls``."""
    if "unsloth" not in sys.modules and dispatch is None:
        return {}
    from helpers.support.varlen_attention import unsloth_attention_route, wrapper_calls

    calls = wrapper_calls(dispatch)
    return {"attention_route": unsloth_attention_route(dispatch), **({} if calls is None else {"varlen_calls": calls})}


def run_job(args, profile: Profile, model, tokenizer, mode: str, micro_batch: int) -> dict:
    """Train one epoch (or up to the caps) of ``mode`` at ``micro_batch`` and return the measurements."""
    import torch

    from helpers.lab.throughput import (
        StepClock,
        count_tokens,
        matmul_parameters,
        mfu,
        peak_tflops,
        steady_state,
    )
    from helpers.training import build_trainer

    if args.global_batch % micro_batch:
        return {"skipped": f"micro-batch {micro_batch} does not divide the global batch {args.global_batch}"}
    if mode == "packing" and not profile.uses_unsloth:
        return {"skipped": "best-fit packing is unsloth's (TRL's) mode; the plain twin's counterparts are "
                           "padding_free and chunk"}
    if mode in VARLEN_MODES and not profile.uses_unsloth:
        return {"skipped": f"{mode} swaps the kernel behind unsloth's attention; the plain twin has no such "
                           "route (its padding_free runs transformers' own attention)"}
    rows, data = epoch_rows(profile, tokenizer, args.documents, mode)
    settings = {"per_device_train_batch_size": micro_batch,
                "gradient_accumulation_steps": args.global_batch // micro_batch,
                "max_steps": args.max_steps or -1, "num_train_epochs": 1, "disable_tqdm": True,
                **({"max_length": profile.max_seq_length} if profile.uses_unsloth else {}),
                **mode_settings("unsloth" if profile.uses_unsloth else "plain", mode, args.unsloth_padding_free)}
    # the rows are already shaped for the mode: ``chunk`` rows are one causal sequence each (documents
    # attend across EOS, as in run_clm); every other mode gives the trainer one document per row
    job_profile = profile.replace(packing=mode == "chunk", isolate_documents=False)
    trainer = build_trainer(job_profile, model, tokenizer, rows, output_dir=str(Path(args.workdir) / "trainer"),
                            **settings)
    if mode == "padding_free" and not profile.uses_unsloth:
        from transformers import DataCollatorWithFlattening

        trainer.data_collator = DataCollatorWithFlattening(return_position_ids=True)
    counts = count_tokens(trainer.model)
    clock = StepClock()
    trainer.add_callback(clock.callback())
    trainer.add_callback(time_limit_callback(args.job_time_limit_s))
    tracer = None
    if args.trace_step:
        from helpers.lab.step_trace import StepTrace

        trace_dir = Path(args.out_dir or args.workdir) / f"trace-{'unsloth' if profile.uses_unsloth else 'plain'}-{mode}-mb{micro_batch}"
        tracer = StepTrace(args.trace_step, trace_dir, clock=clock)
        trainer.add_callback(tracer.callback())
    epoch_steps = math.ceil(math.ceil(len(trainer.train_dataset) / micro_batch) / settings["gradient_accumulation_steps"])
    cuda = profile.device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with attention_route(profile, mode) as route:
        metrics = trainer.train().metrics
        route.update(route_after())  # inside the block: the wrapper's call count, before it is removed
    counts.stop()
    steady = steady_state(clock, counts.real)
    tokens_per_s = steady["tokens"] / steady["seconds"] if steady["seconds"] else None
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    done = len(clock.steps)
    consumed = clock.steps[-1][2] if done else 0
    step_s = clock.step_seconds()
    mean_steady = sum(step_s[-steady["steps"]:]) / steady["steps"] if steady["steps"] else None
    record = {
        "documents": data["documents"], "source": data["source"], "cycled": data["cycled"],
        "epoch_real_tokens": data["tokens"], "train_rows": len(trainer.train_dataset), "epoch_steps": epoch_steps,
        "steps_run": done, "steady_state": f"optimizer steps {steady['first_step']}..{steady['last_step']}",
        "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s else None,
        "real_tokens_trained": sum(counts.real[:consumed]), "processed_tokens_trained": sum(counts.processed[:consumed]),
        "step_s_mean_steady": round(mean_steady, 4) if mean_steady else None,
        "train_runtime_s": round(metrics["train_runtime"], 2), "extrapolated": done < epoch_steps,
        "mfu": round(m, 4) if (m := mfu(tokens_per_s, matmul_parameters(model.config), peak_tflops(device))) else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
        "final_loss": next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), None),
        "device": device, **route,
    }
    if not route.get("torch_varlen", "enabled").startswith(("enabled", "already enabled")):
        record["warning"] = f"unsloth's own attention route ran: {route['torch_varlen']}"
    elif route.get("varlen_calls") == 0:
        record["warning"] = ("torch varlen_attn installed but never called eagerly: unsloth's checks kept "
                             "per-segment SDPA, or every call ran under torch.compile")
    if tracer is not None:  # the traced step runs slower under the profiler and stays in the timings above
        record["step_trace"] = tracer.summary and {**tracer.summary, "top": tracer.summary["top"][:8],
                                                   "note": "the profiled step's slowdown is in tokens_per_s, the "
                                                           "writing of the trace (overhead_s) is not; full list and "
                                                           "trace.json next to the results"}
    if record["extrapolated"] and mean_steady:
        record["epoch_runtime_est_s"] = round(record["train_runtime_s"] + (epoch_steps - done) * mean_steady, 1)
        record["note"] = f"ran {done} of {epoch_steps} steps; the rest estimated at the steady mean step time"
    trainer.optimizer = trainer.lr_scheduler = None  # free the optimizer state before the next job
    return record


def run_arm(args) -> int:
    """Load the arm's model once through helpers, then run every (mode, micro-batch) job on it."""
    profile = arm_profile(args, args.arm)
    if profile.uses_unsloth:
        import unsloth  # noqa: F401  (before transformers)
    import torch

    from helpers.modeling import load_model_and_tokenizer
    from helpers.session import library_versions, seed_everything
    from helpers.training import add_lora, cast_lora_weights, is_lora_matrix

    seed_everything(profile.seed)
    start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(profile)
    model = add_lora(model, profile)
    if args.lora_dtype:
        cast_lora_weights(model, args.lora_dtype)
    lora_dtypes = sorted({str(p.dtype).removeprefix("torch.") for n, p in model.named_parameters()
                          if p.requires_grad and is_lora_matrix(n)})
    base = {"workload": "epoch", "arm": args.arm, "profile": profile.name, "model": profile.model_name,
            "seq_len": profile.max_seq_length, "global_batch": args.global_batch, "load_in_4bit": profile.load_in_4bit,
            "optim": profile.optim, "gradient_checkpointing": profile.use_gradient_checkpointing,
            "learning_rate": profile.learning_rate,
            "embedding_learning_rate": profile.embedding_learning_rate, "lora_r": profile.lora_r,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "load_s": round(time.perf_counter() - start, 1), "test_mode": args.test_mode,
            "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or None, "lora_dtypes": lora_dtypes,
            "versions": {**library_versions(), "cuda": torch.version.cuda}}
    failures = 0
    for mode in args.modes:
        for micro_batch in args.micro_batches:
            record = {**base, "mode": mode, "per_device_batch": micro_batch,
                      "grad_accum": args.global_batch // micro_batch}
            try:
                record.update(run_job(args, profile, model, tokenizer, mode, micro_batch))
            except Exception as err:  # one failed job must not hide the others' numbers
                failures += 1
                record["error"] = f"{type(err).__name__}: {str(err)[:400]}"
            emit({**record, "date": now()})
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return 1 if failures else 0


# --- driver -------------------------------------------------------------------------------------


def run_child(cmd: list[str], timeout: float | None, alloc_conf: str | None = None) -> tuple[int, list[dict]]:
    """Run one arm's process, echo its output, and return its exit code and RESULT records.
    ``alloc_conf`` becomes the process's ``PYTORCH_CUDA_ALLOC_CONF`` (read when CUDA starts)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if alloc_conf:
        env["PYTORCH_CUDA_ALLOC_CONF"] = alloc_conf
    results = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        deadline = None if timeout is None else time.monotonic() + timeout
        for line in proc.stdout:
            sys.stdout.write(line)
            if line.startswith("RESULT "):
                results.append(json.loads(line[len("RESULT "):]))
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                break
        return proc.wait(), results


def table(results: list[dict]) -> str:
    """Return a markdown table of the job records."""
    def cell(value, digits=1):
        return "-" if value is None else f"{value:,.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| arm | mode | micro-batch x GA | tokens/s | MFU | peak reserved GiB | train_runtime s | steps | epoch s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        epoch = r.get("epoch_runtime_est_s")
        note = r.get("error") or r.get("skipped") or r.get("warning") or ""
        lines.append(f"| {r['arm']} | {r['mode']} | {r['per_device_batch']} x {r['grad_accum']} | "
                     f"{cell(r.get('tokens_per_s'), 0)} | {cell(r.get('mfu'), 3)} | {cell(r.get('peak_reserved_gib'), 2)} | "
                     f"{cell(r.get('train_runtime_s'))} | {r.get('steps_run', '-')}/{r.get('epoch_steps', '-')} | "
                     f"{cell(epoch) + ' (est.)' if epoch else cell(r.get('train_runtime_s'))}"
                     f"{' ' + note[:80] if note else ''} |")
    return "\n".join(lines)


def drive(args) -> int:
    """Run each arm in its own process (plain first), print the table and every RESULT line."""
    results, worst = [], 0
    for arm in args.arms:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--arm", arm, *child_flags(args)]
        rc, records = run_child(cmd, args.arm_timeout_s, args.cuda_alloc_conf)
        worst = max(worst, int(rc != 0))
        results += records or [{"arm": arm, "mode": "-", "per_device_batch": "-", "grad_accum": "-",
                                "error": f"the arm's process exited with {rc} before any RESULT"}]
    print("\n" + table(results) + "\n", flush=True)
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
        (args.out_dir / "table.md").write_text(table(results) + "\n")
    for record in results:
        emit(record)
    return worst


def child_flags(args) -> list[str]:
    flags = ["--profile", args.profile, "--modes", ",".join(args.modes),
             "--micro-batches", ",".join(map(str, args.micro_batches)), "--global-batch", str(args.global_batch),
             "--documents", str(args.documents), "--workdir", str(args.workdir),
             "--unsloth-padding-free", args.unsloth_padding_free]
    flags += ["--max-steps", str(args.max_steps)] if args.max_steps else []
    flags += ["--job-time-limit-s", str(args.job_time_limit_s)] if args.job_time_limit_s else []
    flags += ["--trace-step", str(args.trace_step)] if args.trace_step else []
    flags += ["--lora-dtype", args.lora_dtype] if args.lora_dtype else []
    flags += ["--optim", args.optim] if args.optim else []
    flags += ["--gradient-checkpointing", args.gradient_checkpointing] if args.gradient_checkpointing else []
    flags += ["--out-dir", str(args.out_dir)] if args.out_dir else []
    return flags + (["--test-mode"] if args.test_mode else [])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def csv(kind):
        return lambda text: [kind(x) for x in text.split(",") if x.strip()]

    p.add_argument("--profile", default="gpu-mistral7b", choices=sorted(PROFILES), help="profile (default gpu-mistral7b)")
    p.add_argument("--arms", type=csv(str), default=list(ARMS), help="arms in run order (default plain,unsloth)")
    p.add_argument("--modes", type=csv(str), default=list(MODES), help=f"batching modes (default {','.join(MODES)})")
    p.add_argument("--micro-batches", type=csv(int), default=[2, 4, 8], help="per-device batches (default 2,4,8)")
    p.add_argument("--global-batch", type=int, default=16, help="rows per optimizer step (default 16, the walkthrough's)")
    p.add_argument("--documents", type=int, default=WALKTHROUGH["documents"], help="stories in the epoch (default 2500)")
    p.add_argument("--max-steps", type=int, default=0, help="cap each job at this many optimizer steps (0: the epoch)")
    p.add_argument("--job-time-limit-s", type=float, default=None, help="stop a job after this many seconds")
    p.add_argument("--arm-timeout-s", type=float, default=None, help="kill an arm's process after this many seconds")
    p.add_argument("--unsloth-padding-free", choices=("auto", "on", "off"), default="off",
                   help="unsloth's padding_free in the padded and chunk modes (default off: its block compile runs)")
    p.add_argument("--cuda-alloc-conf", metavar="CONF",
                   help="PYTORCH_CUDA_ALLOC_CONF for the arms' processes, e.g. expandable_segments:True (issue 17's "
                        "peak-memory lever against allocator fragmentation); recorded in every RESULT")
    p.add_argument("--lora-dtype", choices=LORA_DTYPES,
                   help="store the LoRA matrices in this dtype (helpers.training.cast_lora_weights; default: as "
                        "unsloth / PEFT make them, fp32): issue 17's LoRA-dtype memory lever, for both arms")
    p.add_argument("--optim", help="replace the profile's optimizer for both arms (e.g. paged_adamw_8bit: the "
                                   "optimizer states in paged memory), a TrainingArguments `optim` name")
    p.add_argument("--gradient-checkpointing", choices=tuple(GRADIENT_CHECKPOINTING),
                   help="replace the profile's use_gradient_checkpointing for both arms: unsloth (the walkthrough's: "
                        "recompute, saved inputs offloaded to the CPU), true (recompute, inputs kept on the GPU: "
                        "no offload copies), false (keep every activation), auto (the 7B profile's: false when the "
                        "activations fit the free GPU memory, else unsloth)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/cpt-bench"), help="scratch folder for the trainer")
    p.add_argument("--out-dir", type=Path, help="also write results.jsonl and table.md here")
    p.add_argument("--trace-step", type=int, default=0,
                   help="profile this optimizer step of every job with torch.profiler (0: none); the summary "
                        "(device busy / idle time, top kernels) goes into the RESULT, the trace next to --out-dir")
    p.add_argument("--test-mode", action="store_true",
                   help="CPU check: the random smoke Llama in fp32, plain arm, 64 stories in rows of up to 256 tokens, "
                        "micro-batch 2 x 2, 3 steps per job, modes padded, padding_free and chunk")
    p.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if bad := [m for m in args.modes if m not in MODES]:
        p.error(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
    if bad := [b for b in args.micro_batches if b < 1 or args.global_batch % b]:
        p.error(f"micro-batch(es) {bad} must be at least 1 and divide --global-batch {args.global_batch}")
    if args.trace_step < 0:
        p.error("--trace-step must be 0 (off) or an optimizer step, e.g. 3")
    if args.documents < 1 or args.global_batch < 1 or args.max_steps < 0:
        p.error("--documents and --global-batch must be at least 1, --max-steps at least 0")
    if args.test_mode and args.arm is None:
        args.arms = ["plain"]
        if args.modes == list(MODES):
            args.modes = ["padded", "padding_free", "chunk"]
        if args.micro_batches == [2, 4, 8]:
            args.micro_batches = [2]
        args.global_batch, args.documents, args.max_steps = 4, 64, args.max_steps or 3
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--quality" in argv:  # the quality gate of a batching: benchmarks/quality_gate.py, its own options
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from quality_gate import main as quality_main

        return quality_main([a for a in argv if a != "--quality"])
    args = parse_args(argv)
    return run_arm(args) if args.arm else drive(args)


if __name__ == "__main__":
    sys.exit(main())
