#!/usr/bin/env python3
"""Peak memory and time of reading one big text file of ``CPT_TEXT_DIR`` into training rows.

Issue 31, case 17: one 50 MB ``.txt`` file took 101 s and a peak of 7.6 GB RSS. This writes a
folder holding one file of the given size (the shipped TinyStories sample, repeated), then, for each
size in a fresh Python process, runs what notebooks 02 / 05 and ``scripts/train_cpt.py`` run on it
(``load_text_folder``, ``append_eos``, ``build_train_dataset`` with the SmolLM2 tokenizer shipped in
``data/``, packed rows of 2048 tokens) and prints one line per size: the text's size, the tokens
and rows, the seconds and the peak resident memory of that process (``ru_maxrss``)::

    python benchmarks/text_folder_memory.py                 # 50 and 200 MB
    python benchmarks/text_folder_memory.py --mb 5 50 200 --no-pack

No timed test runs this; the numbers it printed are in the README (Troubleshooting, case 17).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_ONE_RUN = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
folder, packing = Path(sys.argv[2]), sys.argv[3] == "1"
from transformers import AutoTokenizer
from helpers.data import append_eos, build_train_dataset, load_text_folder
from helpers.profiles import CPU_SMOLLM2
tokenizer = AutoTokenizer.from_pretrained(Path(sys.argv[1]) / "data" / "smollm2-tokenizer")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
documents = load_text_folder(folder)
rows, stats = build_train_dataset(append_eos(documents, tokenizer.eos_token), tokenizer,
                                  CPU_SMOLLM2.replace(max_seq_length=2048, packing=packing))
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("MEASURED " + json.dumps({"tokens": stats["tokens"], "rows": stats["rows"], "seconds": round(seconds, 1),
                                "peak_rss_mb": round(peak / 1024), "before_mb": round(base / 1024)}))
"""


def write_text(folder: Path, megabytes: float) -> int:
    """Write ``folder/big.txt`` of about ``megabytes`` MB of TinyStories text; return its size in bytes."""
    stories = [json.loads(line)["text"] for line in
               (ROOT / "data" / "tinystories-sample" / "train.jsonl").read_text(encoding="utf-8").splitlines() if line]
    chunk = "\n\n".join(stories) + "\n\n"
    target = int(megabytes * 1_000_000)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "big.txt", "w", encoding="utf-8") as f:
        written = 0
        while written < target:
            piece = chunk[: target - written]
            f.write(piece)
            written += len(piece.encode("utf-8"))
    return (folder / "big.txt").stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, nargs="+", default=[50, 200], help="file sizes in MB (default: 50 200)")
    parser.add_argument("--no-pack", action="store_true", help="one row per document instead of packed blocks")
    args = parser.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for megabytes in args.mb:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "text"
            size = write_text(folder, megabytes)
            env["HF_DATASETS_CACHE"] = str(Path(tmp) / "hf_datasets")
            env["CPT_ROOT"] = tmp
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", _ONE_RUN, str(ROOT), str(folder), "0" if args.no_pack else "1"],
                                  env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
                return 1
            found = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("MEASURED "))[9:])
            print(f"{size / 1e6:7.1f} MB of text: {found['tokens']:>11,} tokens -> {found['rows']:>7,} rows in "
                  f"{found['seconds']:6.1f} s; peak RSS {found['peak_rss_mb']:,} MB (libraries loaded: "
                  f"{found['before_mb']:,} MB; process {time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
