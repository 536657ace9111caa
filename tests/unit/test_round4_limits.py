"""Issue 40, "No silently wrong result, round 4": scripts/train_cpt.py checks its limits before work
starts. Every numeric argument's range is checked at parse time, a micro-batch that cannot fit the
memory is refused before any text is tokenized, ``--repeat-data`` is cut to what the steps use and
``--grad-accum`` above the rows available is refused. Each case test fails on ebb1ba7 (``own`` marks
the cases found while fixing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, load_train_script

from helpers.profiles import CPU_SMOLLM2

SCRIPT = REPO_ROOT / "scripts" / "train_cpt.py"


def _refused(flags: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        load_train_script().parse_args(["--tiny", *flags])
    assert stop.value.code == 2
    return capsys.readouterr().err


def _run(tmp_path, *flags: str, texts: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run train_cpt.py --tiny in a process of its own, on an isolated project root."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    if not (root / "data").exists():
        (root / "data").symlink_to(REPO_ROOT / "data", target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CPT_", "ACCELERATE"))}
    env.update(CPT_ROOT=str(root), HF_DATASETS_CACHE=str(root / "hf_datasets"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    if texts:
        folder = tmp_path / "texts"
        folder.mkdir(exist_ok=True)
        for name, text in texts.items():
            (folder / name).write_text(text)
        env["CPT_TEXT_DIR"] = str(folder)
    return subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--output-dir", str(tmp_path / "run"), *flags],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)


def _smollm2_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3)


# --- case 3: limits checked too late, or never -------------------------------------------------------


def test_case03_repeat_data_of_a_hundred_million_is_refused_at_parse_time(capsys):
    """--repeat-data 100000000 grew to 6.3 GB with no output (every copy of the rows concatenated)."""
    err = _refused(["--repeat-data", "100000000"], capsys)
    assert "--repeat-data 100000000: at most 100,000 (a run uses only the rows its steps take" in err


def test_case03_repeat_data_is_cut_to_the_rows_the_steps_use_and_recorded(tmp_path):
    """A repeat larger than the steps use is cut to what they use, and the RESULT records both."""
    script = load_train_script()
    policy = {"per_device_batch": 2, "grad_accum": 2, "global_batch": 4}
    assert script.useful_repeat(1000, 14, CPU_SMOLLM2.replace(max_steps=12), policy, 1) == 4  # 48 rows of 14
    assert script.useful_repeat(3, 14, CPU_SMOLLM2.replace(max_steps=12), policy, 1) == 3
    run = _run(tmp_path, "--max-steps", "1", "--repeat-data", "5000", "--eval-stories", "0", "--no-save",
               "--result-json", str(tmp_path / "r.json"))
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "NOTE     : --repeat-data 5000 would give" in run.stdout and "repeating 1 time(s)" in run.stdout
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["repeat_data"] == 1 and result["repeat_data_asked"] == 5000


@pytest.mark.filterwarnings("ignore:max_seq_length=8192 is beyond the context")
def test_case03_a_micro_batch_that_cannot_fit_the_memory_is_refused_before_tokenizing(tmp_path, monkeypatch,
                                                                                      torch_one_thread):
    """--max-seq-length 8192 on the CPU grew to 15 GB with only a context warning (2 x 8192 was killed by
    the kernel at 24 GB on the 2-core machine); now refused, with the numbers, before any text is read."""
    from helpers import data

    (tmp_path / "data").symlink_to(REPO_ROOT / "data", target_is_directory=True)  # the smoke model's tokenizer
    script = load_train_script()
    monkeypatch.setattr(script, "available_memory", lambda profile, procs: (int(2e9), "this CPU's memory"))

    def never(*args, **kwargs):
        raise AssertionError("the text was read although the micro-batch cannot fit")

    monkeypatch.setattr(data, "load_raw_dataset", never)
    with pytest.raises(SystemExit, match=r"^train_cpt.py: one micro-batch of 2 x 8192 tokens \(16,384\) needs about "
                                         r"\d+\.\d GB to train \(logits .* GB.*\), but this CPU's memory has 2\.0 GB "
                                         r"available\. Lower --max-seq-length to \d+; nothing was tokenized or trained"):
        script.main(["--tiny", "--max-seq-length", "8192", "--output-dir", str(tmp_path / "run")])


def test_case03_the_estimate_refuses_2x8192_on_a_24_gb_machine_and_keeps_the_default():
    """The estimate behind that refusal, on SmolLM2's shape: the CPU default (2 x 256) is far from any
    limit, 2 x 8192 (measured: killed at 24 GB) is refused, and the suggestion is one that fit (4096)."""
    from helpers.errors import memory_refusal, training_memory_estimate

    def estimate(batch, length):
        return training_memory_estimate(_smollm2_config(), micro_batch=batch, seq_len=length, activation_bytes=2,
                                        trainable=60_000_000, block_mask=True, attention_scores=True)

    assert estimate(2, 256)["total"] < 2e9
    assert memory_refusal(estimate(2, 256), int(24e9), "this CPU's memory", micro_batch=2, seq_len=256) is None
    message = memory_refusal(estimate(2, 8192), int(24e9), "this CPU's memory", micro_batch=2, seq_len=8192)
    assert message.startswith("one micro-batch of 2 x 8192 tokens (16,384) needs about 46.1 GB to train")
    assert "Lower --max-seq-length to 4096" in message
    assert estimate(1, 4096)["total"] < 10.0 * 2**30  # measured 10.0 GiB: the estimate errs low


def test_case03_grad_accum_above_the_rows_is_refused(tmp_path):
    """--grad-accum 1000 on 14 rows recorded global_batch 2000 while each step used 14 rows."""
    words = "once upon a time there was a cat and a dog they played in the sun every day ".split()
    texts = {f"d{i}.txt": " ".join(words[(i + j) % len(words)] for j in range(150)) for i in range(3)}
    run = _run(tmp_path, "--grad-accum", "1000", texts=texts)
    assert run.returncode == 1, (run.stdout + run.stderr)[-3000:]
    assert ("train_cpt.py: --grad-accum 1000: one optimizer step would take 2 row(s) x 1000 accumulation x "
            "1 process(es) = 2000 rows, but the training data gives") in run.stderr
    assert "Use --grad-accum" in run.stderr and "Traceback" not in run.stderr
    assert not list((tmp_path / "run").glob("checkpoints/checkpoint-*"))


def test_case03_a_negative_seed_is_refused_naming_the_flag(capsys):
    """--seed -1 ended in numpy's 'ValueError: Seed must be between 0 and 2**32 - 1', not naming --seed."""
    assert "--seed -1: use a seed from 0 to 4294967295" in _refused(["--seed", "-1"], capsys)
    assert "--seed 4294967296: at most 4,294,967,295" in _refused(["--seed", str(2**32)], capsys)


@pytest.mark.parametrize(("flags", "message"), [
    (["--max-seq-length", str(2**21)], "--max-seq-length 2097152: at most 1,048,576"),
    (["--per-device-batch", "5000"], "--per-device-batch 5000: at most 4,096 (raise --grad-accum instead)"),
    (["--grad-accum", "1000000"], "--grad-accum 1000000: at most 100,000"),
    (["--eval-stories", "1000000"], "--eval-stories 1000000: at most 100,000"),
], ids=["max-seq-length", "per-device-batch", "grad-accum", "eval-stories"])
def test_own_every_numeric_argument_has_an_upper_bound(flags, message, capsys):
    """Own case: only lower bounds were checked, so sizes no machine could hold were taken on and failed
    (or filled the memory) much later."""
    assert message in _refused(flags, capsys)


def test_own_save_steps_past_max_steps_is_said_before_the_run():
    """Own case: --save-steps 50 --max-steps 10 wrote no checkpoint, so a run stopped at step 9 started
    over from step 0 without a word (scale_out.sh means it, for throughput runs: said, not refused)."""
    script = load_train_script()
    notes = script.settings_notes(script.parse_args(["--tiny", "--max-steps", "10", "--save-steps", "50"]))
    assert notes == ["--save-steps 50 with --max-steps 10: no checkpoint will be written, so a run stopped before "
                     "its end starts over from step 0 (use --save-steps 2 to be able to resume)."]
    assert script.settings_notes(script.parse_args(["--tiny", "--max-steps", "10", "--save-steps", "5"])) == []


def test_own_trace_step_past_max_steps_is_refused(capsys):
    """Own case: --trace-step 20 --max-steps 6 traced nothing, and the RESULT silently had no step trace."""
    err = _refused(["--max-steps", "6", "--trace-step", "20"], capsys)
    assert "--trace-step 20 with --max-steps 6: that step never comes" in err


def test_settings_that_fit_are_still_accepted():
    """Guard: the command lines of the tests and the docs still parse."""
    script = load_train_script()
    for flags in (["--max-steps", "6", "--save-steps", "2", "--eval-stories", "0"], ["--seed", "0"],
                  ["--max-steps", "24", "--save-steps", "100000"],  # scripts/scale_out.sh: no checkpoint, on purpose
                  ["--seed", str(2**32 - 1)], ["--repeat-data", "100000"], ["--trace-step", "4", "--max-steps", "8"]):
        script.parse_args(["--tiny", *flags])
    assert Path(SCRIPT).is_file()
