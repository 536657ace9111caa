"""bf16 autocast for held-out perplexity on the CPU: its speed, beside what it does to the number.

    python benchmarks/cpu_bf16_eval.py               # 3 rounds: about 1 minute on 2 cores
    python benchmarks/cpu_bf16_eval.py --rounds 1

Scores the offline CPU profile's held-out stories (``cpu-smollm2``: the real SmolLM2-135M-Instruct, its
``eval_stories`` validation stories cut to ``eval_max_tokens``) with ``helpers.evaluation.perplexity``,
in fp32 and with ``cpu_bf16=True`` (bf16 autocast where the CPU computes bf16 in hardware, as notebooks
03, 06, 07, 09 and 10 now score), taking turns, for the base model and, when notebook 05 has run, the
base model with its adapter. Prints each time and value, the mean time of each precision and the
relative change of the perplexity, and the drop from base to trained in each precision (the number
notebook 06 reports). The numbers of record are in benchmarks/RESULTS.md, with the run they come from.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="turns of fp32 and bf16 per model (default 3)")
    args = parser.parse_args(argv)

    from helpers.artifacts import artifact_path
    from helpers.data import load_raw_dataset
    from helpers.evaluation import perplexity
    from helpers.modeling import cpu_computes_bf16, load_model_and_tokenizer, load_trained_model
    from helpers.profiles import CPU_SMOLLM2

    profile = CPU_SMOLLM2
    print(f"this CPU computes bf16 in hardware: {cpu_computes_bf16()}")
    model, tokenizer = load_model_and_tokenizer(profile)
    validation, source = load_raw_dataset(profile, split="validation")
    texts = validation["text"][: profile.eval_stories]
    print(f"{len(texts)} held-out stories from {source}, {profile.eval_max_tokens} tokens each")
    trained = None
    adapter = artifact_path("adapter")
    if adapter.exists():  # the base model is then the trained one with its adapter switched off
        trained, _ = load_trained_model(profile, adapter, model, tokenizer)
    names = ["base", "trained"] if trained is not None else ["base"]
    values: dict[tuple[str, bool], float] = {}
    times: dict[bool, list[float]] = {False: [], True: []}
    for name in names:
        for round_ in range(args.rounds):
            for bf16 in (False, True):
                switched_off = trained is not None and name == "base"
                started = time.perf_counter()
                with trained.disable_adapter() if switched_off else contextlib.nullcontext():
                    value = perplexity(model if trained is None else trained, tokenizer, texts, max_tokens=profile.eval_max_tokens,
                                       progress=False, cpu_bf16=bf16)
                seconds = time.perf_counter() - started
                times[bf16].append(seconds)
                values[(name, bf16)] = value
                print(f"{name:<8} round {round_ + 1} {'bf16' if bf16 else 'fp32'}: perplexity {value:.4f} in {seconds:.2f} s")
    fp32_s, bf16_s = statistics.mean(times[False]), statistics.mean(times[True])
    print(f"mean time: fp32 {fp32_s:.2f} s, bf16 {bf16_s:.2f} s ({fp32_s / bf16_s:.2f}x)")
    for name in names:
        exact, fast = values[(name, False)], values[(name, True)]
        print(f"{name:<8} perplexity fp32 {exact:.4f}, bf16 {fast:.4f} ({(fast - exact) / exact:+.3%})")
    if trained is not None:
        for bf16 in (False, True):
            drop = 1 - values[("trained", bf16)] / values[("base", bf16)]
            print(f"drop base -> trained in {'bf16' if bf16 else 'fp32'}: {drop:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
