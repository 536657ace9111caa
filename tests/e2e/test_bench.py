"""benchmarks/bench_cpt.py: the two arms differ only in their backend, each mode is selected as
claimed, and ``--test-mode`` runs the whole driver on the CPU."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks" / "bench_cpt.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_cpt", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_arms_share_every_setting_but_the_backend():
    bench = load_bench()
    args = bench.parse_args([])
    plain, unsloth = (dataclasses.asdict(bench.arm_profile(args, arm)) for arm in ("plain", "unsloth"))
    differ = {key for key in plain if plain[key] != unsloth[key]}
    assert differ == {"backend"}
    assert plain["embedding_learning_rate"] == 5e-06 and plain["lora_r"] == 128  # the walkthrough's, both arms


def test_optim_flag_replaces_the_optimizer_of_both_arms_only():
    bench = load_bench()
    args = bench.parse_args(["--optim", "paged_adamw_8bit", "--lora-dtype", "bfloat16"])
    plain, unsloth = bench.arm_profile(args, "plain"), bench.arm_profile(args, "unsloth")
    assert plain.optim == unsloth.optim == "paged_adamw_8bit"
    assert dataclasses.replace(plain, backend="unsloth") == unsloth
    flags = bench.child_flags(args)
    assert flags[flags.index("--optim") + 1] == "paged_adamw_8bit" and flags[flags.index("--lora-dtype") + 1] == "bfloat16"
    assert bench.arm_profile(bench.parse_args([]), "plain").optim == "adamw_8bit"  # the recipe's, untouched


def test_gradient_checkpointing_flag_replaces_it_for_both_arms_only():
    bench = load_bench()
    args = bench.parse_args(["--gradient-checkpointing", "true"])
    plain, unsloth = bench.arm_profile(args, "plain"), bench.arm_profile(args, "unsloth")
    assert plain.use_gradient_checkpointing is unsloth.use_gradient_checkpointing is True
    assert dataclasses.replace(plain, backend="unsloth") == unsloth
    flags = bench.child_flags(args)
    assert flags[flags.index("--gradient-checkpointing") + 1] == "true"  # the arms' processes get it too
    assert bench.arm_profile(bench.parse_args(["--gradient-checkpointing", "false"]), "plain").use_gradient_checkpointing is False
    assert bench.arm_profile(bench.parse_args([]), "unsloth").use_gradient_checkpointing == "auto"  # the profile's
    assert "--gradient-checkpointing" not in bench.child_flags(bench.parse_args([]))


def test_mode_settings():
    settings = load_bench().mode_settings
    assert settings("unsloth", "packing", "off") == {"packing": True}
    assert settings("unsloth", "padding_free", "off") == {"padding_free": True}
    assert settings("unsloth", "padded", "off") == {"padding_free": False}
    assert settings("unsloth", "chunk", "auto") == {}
    assert settings("plain", "padding_free", "off") == {}  # the plain arm swaps its collator instead


@pytest.mark.parametrize(("argv", "message"), [
    (["--modes", "padded,zigzag"], "unknown mode"),
    (["--micro-batches", "3"], "divide --global-batch 16"),
    (["--documents", "0"], "at least 1"),
    (["--lora-dtype", "int8"], "invalid choice"),
    (["--gradient-checkpointing", "yes"], "invalid choice"),
])
def test_bad_flags_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        load_bench().parse_args(argv)
    assert message in capsys.readouterr().err


def test_epoch_rows_one_story_per_row_or_chunks(tokenizer, isolated_root):
    (isolated_root / "data").symlink_to(REPO_ROOT / "data", target_is_directory=True)
    bench = load_bench()
    profile = bench.TEST_PROFILE
    padded, stats = bench.epoch_rows(profile, tokenizer, 300, "padded")
    chunks, chunk_stats = bench.epoch_rows(profile, tokenizer, 300, "chunk")
    assert stats["documents"] == len(padded) == 300 and stats["cycled"] is True  # 188 shipped stories, cycled
    assert all(len(row) <= profile.max_seq_length for row in padded["input_ids"])
    assert all(len(row) == profile.max_seq_length for row in chunks["input_ids"]) and chunk_stats["tokens"] == stats["tokens"]


def test_test_mode_runs_every_cpu_mode(tmp_path):
    (tmp_path / "data").symlink_to(REPO_ROOT / "data", target_is_directory=True)  # tmp_path is CPT_ROOT
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CPT_CACHE_DIR": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH), "--test-mode", "--workdir", str(tmp_path / "work"),
                           "--out-dir", str(tmp_path / "out"), "--trace-step", "2",
                           "--cuda-alloc-conf", "expandable_segments:True"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    by_mode = {r["mode"]: r for r in records}
    assert set(by_mode) == {"padded", "padding_free", "chunk"}
    for record in records:
        assert record["arm"] == "plain" and "error" not in record, record
        assert record["steps_run"] == 3 and record["extrapolated"] is True and record["tokens_per_s"] > 0
        assert math.isfinite(record["final_loss"]) and record["embedding_learning_rate"] == 5e-05
        assert record["epoch_runtime_est_s"] > record["train_runtime_s"]
        assert record["cuda_alloc_conf"] == "expandable_segments:True"  # handed to the arm's process
    padded, flat, chunk = by_mode["padded"], by_mode["padding_free"], by_mode["chunk"]
    assert padded["processed_tokens_trained"] > padded["real_tokens_trained"]  # pads are computed, not counted
    for no_padding in (flat, chunk):
        assert no_padding["processed_tokens_trained"] == no_padding["real_tokens_trained"] > 0
    assert chunk["real_tokens_trained"] == 3 * 4 * 256  # 3 steps of 4 full blocks
    assert chunk["train_rows"] < padded["train_rows"] == 64  # 64 stories -> fewer full 256-token blocks
    assert "| plain | chunk | 2 x 2 |" in (tmp_path / "out" / "table.md").read_text()
    for record in records:  # --trace-step 2: one profiled step per job, its summary and trace on disk
        trace = record["step_trace"]
        assert trace["step"] == 2 and trace["wall_s"] > 0 and trace["top_by"] == "self cpu time" and trace["top"]
        assert trace["overhead_s"] >= 0  # writing the trace, left out of the step timings
        folder = tmp_path / "out" / f"trace-plain-{record['mode']}-mb2"
        assert (folder / "trace.json").stat().st_size > 0 and json.loads((folder / "step_trace.json").read_text())["top"]


def test_varlen_modes_patch_the_mode_they_name():
    bench = load_bench()
    settings = bench.mode_settings
    assert settings("unsloth", "packing_varlen", "off") == settings("unsloth", "packing", "off") == {"packing": True}
    assert settings("unsloth", "padding_free_varlen", "off") == {"padding_free": True}
    assert settings("plain", "packing_varlen", "off") == {}
    assert set(bench.VARLEN_MODES) <= set(bench.MODES)
    assert bench.parse_args(["--modes", "packing,packing_varlen"]).modes == ["packing", "packing_varlen"]
    assert bench.parse_args(["--test-mode"]).modes == ["padded", "padding_free", "chunk"]  # CPU, plain arm only


@pytest.mark.parametrize("mode", ["packing_varlen", "padding_free_varlen"])
def test_plain_arm_skips_varlen_modes_with_a_reason(mode):
    bench = load_bench()
    args = bench.parse_args([])
    record = bench.run_job(args, bench.arm_profile(args, "plain"), None, None, mode, 2)
    assert record == {"skipped": f"{mode} swaps the kernel behind unsloth's attention; the plain twin has no "
                                 "such route (its padding_free runs transformers' own attention)"}


def fake_dispatch():
    import types

    module = types.ModuleType("fake_attention_dispatch")
    module._TORCH_VARLEN_ATTN, module.HAS_FLASH_ATTENTION = None, False
    return module


def stand_in_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1)):  # torch 2.11's signature; never called here
    raise AssertionError("not called")


def test_varlen_job_restores_unsloth_route_after_it_and_after_an_error(monkeypatch):
    import torch

    monkeypatch.delenv("CPT_TORCH_VARLEN", raising=False)
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)  # the CPU build has none
    bench = load_bench()
    args = bench.parse_args([])
    unsloth, plain = bench.arm_profile(args, "unsloth"), bench.arm_profile(args, "plain")
    dispatch = fake_dispatch()
    kwargs = {"dispatch": dispatch, "varlen_attn": stand_in_varlen, "cuda_available": True,
              "flash_attn_installed": False, "native_gqa": True}
    with bench.attention_route(unsloth, "packing_varlen", **kwargs) as route:
        assert route["torch_varlen"].startswith("enabled:")
        assert dispatch._TORCH_VARLEN_ATTN.cpt_gqa_wrapper
        assert bench.route_after(dispatch) == {"attention_route": "torch varlen_attn via the GQA wrapper (0 eager "
                                                                  "calls so far)", "varlen_calls": 0}
    assert dispatch._TORCH_VARLEN_ATTN is None  # the arm's next job runs unsloth's own route
    with pytest.raises(RuntimeError, match="out of memory"):
        with bench.attention_route(unsloth, "padding_free_varlen", **kwargs):
            raise RuntimeError("CUDA out of memory")
    assert dispatch._TORCH_VARLEN_ATTN is None
    with bench.attention_route(unsloth, "packing", dispatch=dispatch) as route:
        assert route == {"attention_route": "SDPA per segment (one call per document)"}
        assert dispatch._TORCH_VARLEN_ATTN is None
    with bench.attention_route(plain, "packing_varlen", **kwargs) as route:
        assert route == {} and dispatch._TORCH_VARLEN_ATTN is None


def test_varlen_job_says_when_the_swap_did_not_happen(monkeypatch):
    monkeypatch.setenv("CPT_TORCH_VARLEN", "0")
    bench = load_bench()
    args = bench.parse_args([])
    dispatch = fake_dispatch()
    with bench.attention_route(bench.arm_profile(args, "unsloth"), "packing_varlen", dispatch=dispatch) as route:
        assert route == {"torch_varlen": "not enabled: CPT_TORCH_VARLEN=0"} and dispatch._TORCH_VARLEN_ATTN is None
    table = bench.table([{"arm": "unsloth", "mode": "packing_varlen", "per_device_batch": 2, "grad_accum": 8,
                          "warning": "unsloth's own attention route ran: not enabled: CPT_TORCH_VARLEN=0"}])
    assert "| unsloth | packing_varlen | 2 x 8 |" in table and "own attention route ran" in table


def test_cross_document_attention_test_mode(tmp_path):
    """benchmarks/cross_document_attention.py on the CPU: two runs per seed from one start, scored alike."""
    (tmp_path / "data").symlink_to(REPO_ROOT / "data", target_is_directory=True)  # tmp_path is CPT_ROOT
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CPT_ROOT": str(tmp_path), "CPT_CACHE_DIR": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    script = REPO_ROOT / "benchmarks" / "cross_document_attention.py"
    proc = subprocess.run([sys.executable, str(script), "--test-mode", "--out-dir", str(tmp_path / "out")],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    record = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[0])
    assert record["workload"] == "cross_document_attention" and record["steps"] == 2 and record["test_mode"]
    runs = record["runs"]
    assert set(runs) == {"across documents", "isolated documents"}
    assert runs["across documents"]["first_loss"] == pytest.approx(runs["isolated documents"]["first_loss"], rel=0.05)
    for key in ("perplexity_across_documents", "perplexity_isolated_documents", "untrained_perplexity"):
        assert math.isfinite(record[key]) and record[key] > 1
    assert record["relative_cost_of_attending_across"] == pytest.approx(
        record["perplexity_across_documents"] / record["perplexity_isolated_documents"] - 1, abs=1e-4)
    assert "attending across documents changes held-out perplexity" in proc.stdout


def test_cross_document_attention_refuses_bad_seeds(capsys):
    spec = importlib.util.spec_from_file_location("cross_doc", REPO_ROOT / "benchmarks" / "cross_document_attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit):
        module.parse_args(["--seeds", "one,two"])
    assert "whole numbers" in capsys.readouterr().err
