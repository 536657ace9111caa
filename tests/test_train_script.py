"""scripts/train_cpt.py: the batch policy, model placement under a launcher, and real runs on the CPU.

The runs use ``--tiny`` (the random smoke Llama built from a config, fp32, plain transformers + PEFT,
2 optimizer steps of 2 x 2 rows of 64 tokens), once in one process and once as two processes under
``torchrun`` with the gloo backend: the DDP logic, the sync check and the RESULT line, without a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "train_cpt.py"


def load_script():
    """Import scripts/train_cpt.py as a module (it imports only helpers.profiles at the top)."""
    spec = importlib.util.spec_from_file_location("train_cpt", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("per_device", "accum", "world", "expected_accum", "kept"),
    [(2, 8, 1, 8, True), (2, 8, 2, 4, True), (2, 8, 8, 1, True), (2, 2, 2, 1, True), (2, 3, 2, 2, False),
     (2, 1, 4, 1, False)],
)
def test_batch_policy_keeps_the_global_batch_when_it_can(per_device, accum, world, expected_accum, kept):
    policy = load_script().batch_policy(per_device, accum, world)
    assert policy["grad_accum"] == expected_accum
    assert policy["kept"] is kept
    assert policy["global_batch"] == per_device * expected_accum * world
    assert policy["reference_global_batch"] == per_device * accum
    if kept:
        assert policy["global_batch"] == per_device * accum


def test_plain_branch_loads_on_the_local_rank_under_a_launcher(torch_one_thread, monkeypatch):
    """helpers.modeling asks for device_map={"": 0}; under DDP rank 1 must get its own GPU."""
    from transformers import AutoModelForCausalLM

    script = load_script()
    seen = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: seen.append(k.get("device_map")))
    cuda_plain = script.TINY_PROFILE.replace(device="cuda", backend="transformers")
    with script.load_on_local_device(cuda_plain, local_rank=1, distributed=True):
        AutoModelForCausalLM.from_pretrained("x", device_map={"": 0})
    AutoModelForCausalLM.from_pretrained("x", device_map={"": 0})  # restored afterwards
    with script.load_on_local_device(cuda_plain, local_rank=1, distributed=False):  # one process: untouched
        AutoModelForCausalLM.from_pretrained("x", device_map={"": 0})
    with script.load_on_local_device(cuda_plain.replace(backend="unsloth"), local_rank=1, distributed=True):
        AutoModelForCausalLM.from_pretrained("x", device_map={"": 0})  # unsloth pins the rank itself
    assert seen == [{"": 1}, {"": 0}, {"": 0}, {"": 0}]


@pytest.fixture(scope="module")
def run_env(tmp_path_factory):
    """An isolated project root (the shipped data linked in) and caches, shared by the runs below."""
    root = tmp_path_factory.mktemp("train_script_root")
    (root / "data").symlink_to(REPO_ROOT / "data", target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k not in ("CPT_PROFILE", "CPT_TEXT_DIR")}
    env.update(CPT_ROOT=str(root), CPT_CACHE_DIR=str(root / "cache"), HF_DATASETS_CACHE=str(root / "hf_datasets"),
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    return root, env


def run_script(launcher: list[str], root: Path, env: dict, name: str, *extra: str) -> tuple[dict, str]:
    out = root / name
    cmd = [*launcher, str(SCRIPT), "--tiny", "--check-sync", "--output-dir", str(out),
           "--result-json", str(out / "RESULT.json"), *extra]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, f"expected one RESULT line (rank 0 only):\n{proc.stdout[-3000:]}"
    result = json.loads(lines[0][len("RESULT "):])
    assert json.loads((out / "RESULT.json").read_text()) == result
    return result, log


@pytest.fixture(scope="module")
def one_process(run_env):
    return run_script([sys.executable], *run_env, "one")


def test_one_process_run_on_the_cpu(one_process):
    result, _ = one_process
    assert result["workload"] == "scale"
    assert result["gpus"] == 1 and result["profile"] == "tiny-cpu"
    assert result["steps"] == 2 and result["global_batch"] == 4 and result["grad_accum"] == 2
    assert math.isfinite(result["final_loss"]) and 0 < result["final_loss"] < 20
    assert result["tokens_per_s"] > 0
    assert result["steady_tokens"] == result["tokens_trained"] == 2 * 4 * 64  # 2 steps of 4 full 64-token rows
    assert result["sync_check"] == "passed"
    for key in ("train_runtime_s", "date", "versions", "device"):
        assert result[key]
    assert "eval_error" not in result and math.isfinite(result["eval_perplexity"])


def test_two_processes_under_torchrun_match_one(one_process, run_env):
    """Two gloo processes, gradient accumulation halved: the same global batch, the same rows in each
    step, so the same losses and weights as one process; rank 0 alone prints RESULT."""
    pytest.importorskip("torch.distributed.run")
    one, _ = one_process
    root, env = run_env
    two, log = run_script([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                          root, env, "two", "--baseline-result", str(root / "one" / "RESULT.json"))
    assert two["gpus"] == 2 and two["grad_accum"] == 1 and two["global_batch"] == one["global_batch"] == 4
    assert two["global_batch_kept"] is True
    assert two["sync_check"] == "passed" and all(s["ranks"] == 2 for s in two["sync"])
    assert two["tokens_trained"] == one["tokens_trained"]  # tokens of both ranks counted
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-4)
    assert two["sync"][0]["sha256"] == one["sync"][0]["sha256"]  # the same start (step 1 runs at lr 0)
    assert two["sync"][1]["sha256"] != two["sync"][0]["sha256"]  # step 2 moved the weights, identically on both ranks
    assert log.count("profile  :") == 1  # rank 0 alone speaks
    assert two["same_global_batch"] is True and two["loss_match"] is True and two["baseline_gpus"] == 1
    assert two["scaling_efficiency"] == pytest.approx(two["tokens_per_s"] / one["tokens_per_s"] / 2, abs=1e-3)


def test_compare_runs_flags_loss_drift_and_batch_changes():
    compare = load_script().compare_runs
    one = {"gpus": 1, "tokens_per_s": 100.0, "global_batch": 8, "final_loss": 10.0, "losses": [10.5, 10.0]}
    two = {**one, "gpus": 2, "tokens_per_s": 180.0, "losses": [10.5, 10.05], "final_loss": 10.05}
    summary = compare(one, two)
    assert summary["speedup"] == 1.8 and summary["scaling_efficiency"] == 0.9 and summary["target_met"] is True
    assert summary["loss_match"] is True and summary["final_loss_abs_diff"] == pytest.approx(0.05)
    assert compare(one, {**two, "losses": [10.5, 10.2]})["loss_match"] is False  # 2% off at step 2
    assert compare(one, {**two, "global_batch": 16})["loss_match"] is False  # not the same experiment
    assert compare(one, {**two, "tokens_per_s": 150.0})["target_met"] is False
