"""The quality gate's driver on the CPU (``bench_cpt.py --quality --test-mode``): two batchings of the
CPU recipe on the real SmolLM2, trained through scripts/train_cpt.py, held-out perplexity in a table
next to the reference batching, and one RESULT line per run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quality_gate_test_mode_trains_both_batchings_and_tables_them(tmp_path):
    out = tmp_path / "quality"
    env = {k: v for k, v in os.environ.items() if k != "CPT_ROOT"}  # the runs read the shipped sample
    env["CPT_CACHE_DIR"] = str(tmp_path / "cache")  # the converted model, and nothing else, outside the repo
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_cpt.py"), "--quality", "--test-mode",
                           "--out-dir", str(out)], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert [r["batching"] for r in results] == ["padded-2x2", "packed-2x1"]
    for r in results:
        assert r["workload"] == "quality" and r["steps"] == 2 and r["eval_stories"] == 8
        assert r["eval_perplexity"] > 1 and r["embeddings_check"] == "passed"
        assert r["packing"] == r["batching"].startswith("packed")
        assert (r["per_device_batch"], r["grad_accum"]) == ((2, 2) if r["batching"] == "padded-2x2" else (2, 1))
    table = (out / "table.md").read_text()
    assert "| padded-2x2 | 2 |" in table and "| packed-2x1 | 2 |" in table and "vs padded-2x2" in table
    summary = json.loads((out / "summary.json").read_text())
    assert {row["batching"] for row in summary} == {"padded-2x2", "packed-2x1"}
