"""scripts/train_cpt.py on the CPU: refused settings, and real runs killed and resumed.

The runs use ``--tiny`` (the random smoke Llama built from a config, fp32, plain transformers + PEFT,
rows of 64 tokens): one uninterrupted 4-step run in one process is the reference; a run killed with
SIGKILL after its first checkpoint and started again must continue from that checkpoint with the
embedding learning-rate group intact and end on the same losses (within 1%), in one process and in
two gloo processes under ``torchrun``; four gloo processes must keep their weights in sync.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import load_train_script as load_script

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "train_cpt.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
STEPS, SAVE_EVERY = 6, 2  # checkpoints at steps 2, 4 and 6
RUN = ["--tiny", "--check-sync", "--max-steps", str(STEPS), "--save-steps", str(SAVE_EVERY), "--eval-stories", "0"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--max-seq-length", "4"], "--max-seq-length 4: rows need at least 8 tokens"),
    (["--max-steps", "0"], "--max-steps 0: must be at least 1"),
    (["--max-steps", "-3"], "--max-steps -3: must be at least 1"),
    (["--per-device-batch", "0"], "--per-device-batch 0: must be at least 1"),
    (["--grad-accum", "0"], "--grad-accum 0: must be at least 1"),
    (["--save-steps", "0"], "--save-steps 0: must be at least 1"),
    (["--eval-stories", "-1"], "use 0 to skip"),
    (["--trace-step", "-1"], "--trace-step -1: 0 (off) or an optimizer step"),
])
def test_settings_that_cannot_train_are_refused(flags, message, capsys):
    with pytest.raises(SystemExit) as stop:
        load_script().parse_args(["--tiny", *flags])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_command_line_replaces_profile_fields():
    script = load_script()
    profile, reason = script.choose_profile(script.parse_args(["--tiny", "--max-steps", "5", "--grad-accum", "4"]))
    assert profile.name == "tiny-cpu" and profile.max_steps == 5 and profile.gradient_accumulation_steps == 4
    assert "max_steps=5" in reason and "gradient_accumulation_steps=4" in reason


@pytest.fixture(scope="module")
def run_env(tmp_path_factory):
    """An isolated project root (the shipped data linked in) and caches, shared by the runs below."""
    root = tmp_path_factory.mktemp("train_script_root")
    (root / "data").symlink_to(REPO_ROOT / "data", target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k not in ("CPT_PROFILE", "CPT_TEXT_DIR") and "ACCELERATE" not in k}
    env.update(CPT_ROOT=str(root), CPT_CACHE_DIR=str(root / "cache"), HF_DATASETS_CACHE=str(root / "hf_datasets"),
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    return root, env


def command(launcher: list[str], out: Path, *extra: str) -> list[str]:
    return [*launcher, str(SCRIPT), *RUN, "--output-dir", str(out), *extra]


def run_script(launcher: list[str], root: Path, env: dict, name: str, *extra: str) -> tuple[dict, str]:
    """Run the script to the end; return its RESULT (printed once, by rank 0) and its log."""
    out = root / name
    proc = subprocess.run(command(launcher, out, "--result-json", str(out / "RESULT.json"), *extra),
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, f"expected one RESULT line (rank 0 only):\n{proc.stdout[-3000:]}"
    result = json.loads(lines[0][len("RESULT "):])
    assert json.loads((out / "RESULT.json").read_text()) == result
    return result, log


def kill_tree(pid: int) -> None:
    """SIGKILL a launched process and every process below it (torchrun starts its workers in sessions
    of their own, so killing its process group alone would leave them training), as a preemption would."""
    import psutil

    parent = psutil.Process(pid)
    family = [parent, *parent.children(recursive=True)]
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=30)


def kill_after_first_checkpoint(launcher: list[str], root: Path, env: dict, name: str) -> Path:
    """Start a run, SIGKILL all its processes as soon as checkpoint-2 is seen complete, and return
    the last complete checkpoint left behind (what a relaunch must resume from; on a loaded machine the
    run may have reached checkpoint-4 by the time the kill lands)."""
    from helpers.checkpoints import checkpoint_problem, last_complete_checkpoint

    out = root / name
    first = out / "checkpoints" / f"checkpoint-{SAVE_EVERY}"
    proc = subprocess.Popen(command(launcher, out), cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:  # complete: transformers' files, then the trainable set, file record and run.json
                if first.is_dir() and checkpoint_problem(first) is None:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        kill_tree(proc.pid)
        proc.wait()
    assert not (out / "result.json").exists()
    found = last_complete_checkpoint(out / "checkpoints")
    assert found is not None and SAVE_EVERY <= int(found.name.split("-")[1]) < STEPS
    return found


@pytest.fixture(scope="module")
def uninterrupted(run_env):
    return run_script([sys.executable], *run_env, "uninterrupted")


def assert_resumed_like_uninterrupted(resumed: dict, checkpoint: Path, reference: dict, log: str) -> None:
    assert resumed["resumed_from"] == checkpoint.name and "Resuming from" in log
    assert resumed["steps"] == STEPS and len(resumed["losses"]) == STEPS
    assert resumed["loss_match"] is True and resumed["same_global_batch"] is True  # every step within 1%
    assert resumed["final_loss"] == pytest.approx(reference["final_loss"], rel=0.01)
    # the embedding learning-rate group came back intact (the #3108 guard), and the embeddings trained
    assert resumed["param_groups"] == reference["param_groups"]
    embedding_group = [g for g in resumed["param_groups"] if "embed" in g["group"]]
    assert embedding_group and embedding_group[0]["lr"] == resumed["embedding_learning_rate"] == 5e-05
    assert set(resumed["embeddings_trained"]) == {"embed_tokens", "lm_head"}
    assert all(change > 0 for change in resumed["embeddings_trained"].values())
    assert resumed["sync_check"] == "passed"


def test_uninterrupted_run_on_the_cpu(uninterrupted):
    result, _ = uninterrupted
    assert result["workload"] == "scale" and result["gpus"] == 1 and result["profile"] == "tiny-cpu"
    assert result["steps"] == STEPS and result["global_batch"] == 4 and result["resumed_from"] is None
    assert all(math.isfinite(loss) and 0 < loss < 20 for loss in result["losses"])
    assert result["tokens_per_s"] > 0 and result["steady_state"] == f"optimizer steps 3..{STEPS}"
    assert result["steady_tokens"] == (STEPS - 2) * 4 * 64 and result["tokens_trained"] == STEPS * 4 * 64
    assert result["sync_check"] == "passed" and [s["when"] for s in result["sync"]] == [
        "after optimizer step 1", "after optimizer step 2", "after training"]
    for key in ("train_runtime_s", "date", "versions", "device"):
        assert result[key]


def test_killed_run_resumes_from_its_checkpoint(uninterrupted, run_env):
    """One process: SIGKILL after checkpoint-2, relaunch, same losses as the uninterrupted run."""
    reference, _ = uninterrupted
    root, env = run_env
    checkpoint = kill_after_first_checkpoint([sys.executable], root, env, "killed1")
    resumed, log = run_script([sys.executable], root, env, "killed1",
                              "--baseline-result", str(root / "uninterrupted" / "RESULT.json"))
    assert_resumed_like_uninterrupted(resumed, checkpoint, reference, log)
    assert (root / "killed1" / "adapter" / "adapter_config.json").is_file()


def test_two_gloo_processes_killed_and_resumed_match_one(uninterrupted, run_env):
    """Two processes (gradient accumulation halved, the same global batch): killed after a
    checkpoint, relaunched on two processes, they end where one uninterrupted process ends."""
    reference, _ = uninterrupted
    root, env = run_env
    two = [*TORCHRUN, "--nproc_per_node", "2"]
    checkpoint = kill_after_first_checkpoint(two, root, env, "killed2")
    resumed, log = run_script(two, root, env, "killed2",
                              "--baseline-result", str(root / "uninterrupted" / "RESULT.json"))
    assert resumed["gpus"] == 2 and resumed["grad_accum"] == 1 and resumed["global_batch_kept"] is True
    assert all(s["ranks"] == 2 for s in resumed["sync"])
    done = int(checkpoint.name.split("-")[1])
    assert resumed["tokens_trained"] == (STEPS - done) * 4 * 64  # this launch's steps, both ranks' tokens
    assert log.count("profile  :") == 1  # rank 0 alone speaks
    assert_resumed_like_uninterrupted(resumed, checkpoint, reference, log)


def test_four_gloo_processes_stay_in_sync(run_env):
    """Issue 19's CPU test: four processes, one row each per step, weights identical on every rank;
    with --trace-step every rank profiles the same step (issue 18's one-step profile)."""
    root, env = run_env
    result, _ = run_script([*TORCHRUN, "--nproc_per_node", "4"], root, env, "four", "--max-steps", "3",
                           "--per-device-batch", "1", "--grad-accum", "4", "--no-save", "--fresh",
                           "--trace-step", "3")
    traces = result["step_traces"]
    assert [t["step"] for t in traces] == [3, 3, 3, 3] and all(t["wall_s"] > 0 and t["top"] for t in traces)
    for rank in range(4):
        assert (root / "four" / "step-trace" / f"rank{rank}" / "trace.json").is_file()
    assert result["gpus"] == 4 and result["grad_accum"] == 1 and result["global_batch"] == 4
    assert result["sync_check"] == "passed" and [s["ranks"] for s in result["sync"]] == [4, 4, 4]
    assert result["sync"][1]["sha256"] != result["sync"][0]["sha256"]  # step 2 moved the weights, alike everywhere
    assert result["tokens_trained"] == 3 * 4 * 64  # the tokens of all four ranks


def test_killed_while_saving_the_adapter_saves_from_the_finished_checkpoint(uninterrupted, run_env):
    """Issue 31 case 14: killed during the final adapter save (so no adapter/ and no result.json, the
    save being atomic), the relaunch trained all steps again instead of saving from the last checkpoint."""
    import shutil

    reference, _ = uninterrupted
    root, env = run_env
    shutil.copytree(root / "uninterrupted" / "checkpoints", root / "killed_saving" / "checkpoints")
    result, log = run_script([sys.executable], root, env, "killed_saving",
                             "--baseline-result", str(root / "uninterrupted" / "RESULT.json"))
    assert f"checkpoint-{STEPS} ends this run (step {STEPS} of {STEPS})" in log
    # no step was timed, so there is nothing to compare (it used to end in a TypeError, result unwritten)
    assert result["baseline_comparison"].startswith("not made: no optimizer step was timed")
    assert result["loaded_from"].endswith(f"checkpoint-{STEPS}") and result["steps"] == STEPS
    assert result["losses"] == reference["losses"] and result["embeddings_check"] == "passed"
    assert (root / "killed_saving" / "adapter" / "adapter_config.json").is_file()
