"""configs/*.yaml: the accelerate configs of docs/multi-gpu.md parse, say what they claim, and the FSDP
one starts scripts/train_cpt.py on the CPU (two gloo processes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from test_train_script import REPO_ROOT, SCRIPT, load_script, run_env  # noqa: F401  (run_env is a fixture)

CONFIGS = REPO_ROOT / "configs"
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]


def config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


@pytest.mark.parametrize(("name", "kind", "processes"), [
    ("ddp.yaml", "MULTI_GPU", 2), ("fsdp_qlora.yaml", "FSDP", 2),
    ("deepspeed_zero2.yaml", "DEEPSPEED", 2), ("deepspeed_zero3.yaml", "DEEPSPEED", 4),
])
def test_configs_say_what_the_docs_say(name, kind, processes):
    settings = config(name)
    assert settings["distributed_type"] == kind and settings["num_processes"] == processes
    assert settings["num_machines"] == 1 and settings["use_cpu"] is False
    assert f"configs/{name}" in (REPO_ROOT / "docs" / "multi-gpu.md").read_text()


def test_fsdp_config_has_the_qlora_settings():
    fsdp = config("fsdp_qlora.yaml")["fsdp_config"]
    assert fsdp["fsdp_use_orig_params"] is False and fsdp["fsdp_cpu_ram_efficient_loading"] is True
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP" and fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert "bnb_4bit_quant_storage=torch.bfloat16" in (CONFIGS / "fsdp_qlora.yaml").read_text()
    zero3 = config("deepspeed_zero3.yaml")["deepspeed_config"]
    assert zero3["zero_stage"] == 3 and zero3["zero3_init_flag"] is True


def test_fsdp_launch_of_a_4bit_profile_is_refused_with_a_reason(monkeypatch):
    from helpers.profiles import GPU_MISTRAL7B

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(SystemExit, match="bnb_4bit_quant_storage.*configs/ddp.yaml"):
        load_script().start_processes(GPU_MISTRAL7B)


def test_fsdp_config_starts_the_script_on_the_cpu(run_env):  # noqa: F811
    """accelerate reads the FSDP config and starts two gloo processes that train in sync. On the CPU
    accelerate 1.15 applies FSDP only on accelerators, so the run is data parallel (strategy
    MULTI_CPU, and the script says so); sync_module_states needs a GPU, hence its override."""
    root, env = run_env
    out = root / "fsdp"
    cmd = [*ACCELERATE, "--config_file", str(CONFIGS / "fsdp_qlora.yaml"), "--fsdp_sync_module_states", "false",
           "--fsdp_cpu_ram_efficient_loading", "false", str(SCRIPT), "--tiny", "--check-sync", "--eval-stories", "0",
           "--no-save", "--save-steps", "2", "--output-dir", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads((out / "result.json").read_text())
    assert result["gpus"] == 2 and result["strategy"] == "MULTI_CPU" and result["sync_check"] == "passed"
    assert result["global_batch"] == 4 and result["steps"] == 2
    assert "accelerate shards only on GPUs" in proc.stdout
