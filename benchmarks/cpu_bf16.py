"""bf16 mixed precision on the CPU: its speed, beside its quality, on notebook 05's own training run.

    python benchmarks/cpu_bf16.py                 # seeds 3407 1 2, fp32 and bf16 each: about 7 minutes on 2 cores
    python benchmarks/cpu_bf16.py --seeds 3407    # one pair
    python benchmarks/cpu_bf16.py --test-mode     # 2 steps, 4 stories: checks the script, measures nothing

Each run is the offline CPU profile's training (``cpu-smollm2``: the real SmolLM2-135M-Instruct, notebook 02's
packed rows, 12 steps of 4 blocks of 256 tokens, LoRA plus the embedding copies) through
``helpers.training.build_trainer``, once with ``bf16=False`` (fp32) and once with ``bf16=True`` (autocast;
the weights, their updates and Adam's state stay fp32), from the same seed. After training the model's
forward is its own again, so the held-out perplexity (the profile's 24 validation stories, 256 tokens each)
is computed in fp32 for both. Prints one line per run and the mean of each precision. Needs notebook 02's
rows in outputs/02_dataset (``make run``, or notebooks 00-02). The numbers of record are in
benchmarks/RESULTS.md, with the run they come from.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def one_run(bf16: bool, seed: int, steps: int | None, stories: int | None) -> dict:
    """Train once; return ``{"bf16", "seed", "seconds", "first_loss", "last_loss", "perplexity"}``."""
    from datasets import load_from_disk
    from transformers import set_seed

    from helpers.artifacts import require
    from helpers.data import load_raw_dataset
    from helpers.evaluation import perplexity
    from helpers.modeling import load_model_and_tokenizer
    from helpers.profiles import CPU_SMOLLM2
    from helpers.training import add_lora, build_trainer

    profile = CPU_SMOLLM2.replace(seed=seed, **({"max_steps": steps} if steps else {}))
    set_seed(seed)
    model, tokenizer = load_model_and_tokenizer(profile)
    model = add_lora(model, profile)
    rows = load_from_disk(str(require("dataset")))
    with tempfile.TemporaryDirectory(prefix="cpu-bf16-") as folder:
        trainer = build_trainer(profile, model, tokenizer, rows, output_dir=folder, bf16=bf16, disable_tqdm=True)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    assert "_original_forward" not in model.__dict__, "the model should compute in fp32 again after training"
    validation, _ = load_raw_dataset(profile, split="validation")
    texts = validation["text"][: stories or profile.eval_stories]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"bf16": bf16, "seed": seed, "seconds": seconds, "first_loss": losses[0], "last_loss": losses[-1],
            "perplexity": perplexity(model, tokenizer, texts, max_tokens=profile.eval_max_tokens, progress=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3407, 1, 2])
    parser.add_argument("--test-mode", action="store_true", help="2 steps and 4 stories per run")
    args = parser.parse_args()
    from helpers.training import cpu_computes_bf16

    steps, stories = (2, 4) if args.test_mode else (None, None)
    print(f"this CPU computes bf16 in hardware: {cpu_computes_bf16()}")
    runs = []
    for seed in args.seeds:
        for bf16 in (False, True):
            run = one_run(bf16, seed, steps, stories)
            runs.append(run)
            print(f"{'bf16' if bf16 else 'fp32'} seed {seed}: train {run['seconds']:.1f} s, "
                  f"loss {run['first_loss']:.3f} -> {run['last_loss']:.3f}, held-out perplexity {run['perplexity']:.4f}",
                  flush=True)
    for bf16 in (False, True):
        mine = [r for r in runs if r["bf16"] is bf16]
        print(f"{'bf16' if bf16 else 'fp32'}: mean {statistics.mean(r['seconds'] for r in mine):.1f} s, "
              f"mean perplexity {statistics.mean(r['perplexity'] for r in mine):.4f}")


if __name__ == "__main__":
    main()
